"""Load what a run produced (or any HF-native LLaVA folder) for inference: (model, processor, aspect).

- a LoRA run directory or one of its ``checkpoint-N``: the base is rebuilt from the run's spec
  (as ``python -m llava_hydra.merge`` does), the adapter applied with peft and merged in memory;
  the processor carries the run's training template as its chat template (OneVision without
  torchvision: the image-and-text ``LlavaOnevisionProcessor`` a saved folder loads as);
- a stage 2 run directory, a merged model, any HF-native LLaVA folder: its family's class
  (``LlavaForConditionalGeneration``, ``LlavaNextForConditionalGeneration``, by the saved config)
  + ``AutoProcessor.from_pretrained``.

``aspect`` is how images are made square before the image processor: the run's
``data.image_aspect_ratio`` when the folder holds a spec (``llava_hydra_spec.yaml`` or
Hydra's ``.hydra/config.yaml``), else ``pad`` (LLaVA-1.5's evaluation).
"""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)


def _spec_aspect(path: Path) -> str | None:
    """data.image_aspect_ratio of the run that wrote ``path``: its spec, else Hydra's record of it."""
    from omegaconf import OmegaConf

    from llava_hydra.config.run_spec import find_spec

    try:
        candidates = [find_spec(path)]
    except FileNotFoundError:
        candidates = [path / ".hydra" / "config.yaml", path.parent / ".hydra" / "config.yaml"]
    for candidate in candidates:
        if candidate.exists():
            return OmegaConf.load(candidate).get("data", {}).get("image_aspect_ratio")
    return None


def adapted_base(adapter_dir: str | Path, dtype: str | None = None):
    """(PeftModel, tokenizer, image_processor, spec): the base rebuilt at 16 bits from the run's spec,
    its frozen projector loaded, the adapter (and the parts trained whole) from ``adapter_dir``."""
    from omegaconf import OmegaConf
    from peft import PeftModel

    from llava_hydra.model.assemble import build_base, set_special_token_ids
    from llava_hydra.model.precision import DTYPES, pick_attention, pick_dtype
    from llava_hydra.model.projector import load_projector
    from llava_hydra.config.run_spec import find_spec

    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / "adapter_config.json").exists():
        raise FileNotFoundError(f"{adapter_dir}: no adapter_config.json (not a LoRA run directory or checkpoint)")
    spec_file = find_spec(adapter_dir)
    cfg = OmegaConf.load(spec_file)
    cfg.lora.bits = 16  # the base at full precision
    torch_dtype = DTYPES[dtype] if dtype else pick_dtype(cfg.model.dtype, cfg.training.bf16, cfg.training.fp16)
    base, tokenizer, image_processor = build_base(cfg, torch_dtype, pick_attention(cfg.model.attn_implementation))
    if cfg.stage.pretrain_mm_mlp_adapter and "mm_projector" not in cfg.stage.trainable:
        load_projector(base, cfg.stage.pretrain_mm_mlp_adapter, cfg.model.name)  # frozen: not in the adapter
    log.info("base rebuilt from %s; loading the adapter from %s", spec_file, adapter_dir)
    model = PeftModel.from_pretrained(base, str(adapter_dir))
    set_special_token_ids(model, tokenizer)
    return model, tokenizer, image_processor, cfg


def load_for_inference(path: str | Path, dtype: str | None = None, device: str | None = None):
    """(model in eval mode, processor, aspect) for a run directory, checkpoint or model folder."""
    import torch
    from transformers import AutoConfig, AutoProcessor

    from llava_hydra.model.families import family_of_config, model_class
    from llava_hydra.model.precision import DTYPES
    from llava_hydra.model.processor import make_processor

    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such directory (give a run directory, checkpoint or model folder)")
    if (path / "adapter_config.json").exists():
        model, tokenizer, image_processor, cfg = adapted_base(path, dtype)
        processor = make_processor(tokenizer, image_processor, model, cfg.data.template, cfg.data.image_aspect_ratio)
        if family_of_config(model.config) == "llava_onevision":  # without torchvision: the saving object
            from llava_hydra.model.onevision_processor import serving

            processor = serving(processor)  # -> the processor a saved folder loads as (inference_processor)
        model = model.merge_and_unload()
    elif (path / "config.json").exists():
        kwargs = {"dtype": DTYPES[dtype]} if dtype else {}
        family = family_of_config(AutoConfig.from_pretrained(str(path)))  # LLaVA-1.5, LLaVA-NeXT, OneVision
        model = model_class(family).from_pretrained(str(path), **kwargs)
        if family == "llava_onevision":  # its AutoProcessor needs torchvision (model/onevision_processor.py)
            from llava_hydra.model.onevision_processor import inference_processor

            processor = inference_processor(path)
        else:
            processor = AutoProcessor.from_pretrained(str(path))
    else:
        raise FileNotFoundError(f"{path}: neither a model (config.json) nor a LoRA adapter (adapter_config.json); "
                                f"a stage 1 run saves only the projector: chat with its stage 2 run")
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model = model.to(device).eval()
    processor.tokenizer.padding_side = "left"  # batched generation
    default = getattr(model.config, "vision_aspect_ratio", None) or ("anyres" if family_of_config(model.config) == "llava_next"
                                                                       else "pad")  # a folder without its run's spec
    return model, processor, _spec_aspect(path) or default
