"""A tiny LLaVA saved as the runner saves a stage 2 model (weights + processor with its chat
template), or as a LoRA run (adapter + spec), from the local parts of local_parts.py."""

from __future__ import annotations

from pathlib import Path

import torch
from local_parts import spec_overrides


def saved_model(compose_spec, parts, out: Path, lora: bool = False) -> Path:
    """Weights of the projector (and LoRA B) perturbed so generation is not degenerate."""
    from llava_hydra.config.run_spec import write_spec
    from llava_hydra.model import build_model, make_processor

    cfg = compose_spec(*spec_overrides(parts, out / "cache"), "stage=finetune", "stage.pretrain_mm_mlp_adapter=null",
                       *(["lora=lora", "lora.r=4", "lora.alpha=8"] if lora else []))
    torch.manual_seed(1)
    model, tok, ip = build_model(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name or "multi_modal_projector" in name:
                p.add_(torch.randn_like(p) * 0.5)
    model.save_pretrained(out)
    if lora:
        write_spec(cfg, out)
    else:
        make_processor(tok, ip, model, cfg.data.template, cfg.data.image_aspect_ratio).save_pretrained(out)
    return out
