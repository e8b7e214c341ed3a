"""A tiny LLaVA saved as the runner saves a stage 2 model (weights + processor with its chat
template), or as a LoRA run (adapter + spec), from the local parts of local_parts.py."""

from __future__ import annotations

from pathlib import Path

import torch
from local_parts import spec_overrides


def saved_model(compose_spec, parts, out: Path, lora: bool = False, overrides: tuple[str, ...] = ()) -> Path:
    """Weights of the projector (and LoRA B) perturbed so generation is not degenerate. ``overrides``
    are added to the spec (one naming model.vision_tower replaces the parts' CLIP)."""
    from llava_hydra.config.run_spec import write_spec
    from llava_hydra.model import build_model, make_processor

    keys = {o.split("=", 1)[0] for o in overrides}
    base = [o for o in spec_overrides(parts, out / "cache") if o.split("=", 1)[0] not in keys]
    cfg = compose_spec(*base, "stage=finetune", "stage.pretrain_mm_mlp_adapter=null",
                       *(["lora=lora", "lora.r=4", "lora.alpha=8"] if lora else []), *overrides)
    torch.manual_seed(1)
    model, tok, ip = build_model(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name or "multi_modal_projector" in name:
                p.add_(torch.randn_like(p) * 0.5)
    model.save_pretrained(out)
    if lora:
        write_spec(cfg, out)
    else:  # a stage 2 run directory holds Hydra's record of its spec (the eval app reads the aspect there)
        from omegaconf import OmegaConf

        (out / ".hydra").mkdir(exist_ok=True)
        OmegaConf.save(cfg, out / ".hydra" / "config.yaml")
        make_processor(tok, ip, model, cfg.data.template, cfg.data.image_aspect_ratio).save_pretrained(out)
    return out
