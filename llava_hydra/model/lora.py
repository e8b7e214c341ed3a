"""LoRA / QLoRA on the language model only.

``apply_lora`` wraps an assembled Llava in a PEFT model:

- LoRA adapters on every linear layer of the LLM's decoder (``model.language_model``), found
  by module type and targeted by full module path, so CLIP's q/k/v projections, the projector
  and ``lm_head`` are never adapted;
- the other parts ``stage.trainable`` names (``mm_projector``, ``vision_tower``) train whole as
  PEFT ``modules_to_save``: the trainable copy lives inside the model, so the optimizer finds
  it under ``multi_modal_projector`` (its own ``mm_projector_lr``), and every checkpoint's
  ``adapter_model.safetensors`` holds it next to the adapter: any checkpoint can be resumed,
  loaded or merged (``python -m llava_hydra.merge``);
- with ``lora.bits`` 4 or 8 the LLM was loaded quantized (see ``model.assemble.quantization_config``);
  vision tower and projector never are.

Precision under QLoRA: the frozen parts that are not quantized (vision tower, embeddings,
``lm_head``, norms, a frozen projector) stay in the compute dtype they were loaded in; peft's
``prepare_model_for_kbit_training``, which upcasts all of them to fp32 (and the residual
stream with them: twice the activation memory), is not used. fp32 are only the weights that
are trained: the LoRA adapters (peft's ``autocast_adapter_dtype``; a bf16 adapter loses
updates smaller than its ulp) and, without DeepSpeed, the parts trained whole
(``model.precision.hold_trainable_in_fp32``). Norms need no fp32 weights: Llama's RMSNorm computes its
statistics in fp32 itself, and LayerNorm runs in fp32 under autocast.

The adapter's ``base_model_name_or_path`` is the base it was trained on, as plain peft reads it:
``model.pretrained_llava``, or for an assembled base the LLM (LLaVA's convention for its LoRA
checkpoints); the exact base (LLM + vision tower + projector) is rebuilt by the merge command
from the run spec written beside the adapter (``llava_hydra.config.run_spec``).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import torch

from llava_hydra.model.freezing import freeze_fixed_parts
from llava_hydra.model.llava import PARTS, find_llava_model
from llava_hydra.data.tiny import pretrained_path

log = logging.getLogger(__name__)



def whole_modules(parts: list[str]) -> list[str]:
    """PEFT ``modules_to_save`` names of the parts other than llm (trained whole): each module's
    own name (``multi_modal_projector``, ``vision_tower``), as peft matches and records them."""
    return [path.rsplit(".", 1)[-1] for part in parts if part != "llm" for path in PARTS[part].modules]


def _is_linear(module) -> bool:
    # bitsandbytes' Linear4bit / Linear8bitLt subclass nn.Linear
    return isinstance(module, torch.nn.Linear)


def lora_target_pattern(model) -> str:
    """A regex over full module names that matches exactly the LLM decoder's linear layers."""
    core = find_llava_model(model)
    prefix = next(name for name, module in model.named_modules() if module is core.language_model)
    leaves = sorted({name.rsplit(".", 1)[-1] for name, module in core.language_model.named_modules()
                     if _is_linear(module)})
    if not leaves:
        raise ValueError("the language model has no linear layers to put LoRA on")
    return rf"{re.escape(prefix)}\..*\.({'|'.join(map(re.escape, leaves))})"


def lora_base_name(cfg) -> str:
    """The adapter's ``base_model_name_or_path``: ``model.pretrained_llava`` or else ``model.llm``,
    as a hub id, or an absolute local path (a ``builtin://`` part: where it was built)."""
    name = pretrained_path(cfg.model.get("pretrained_llava") or cfg.model.llm, cfg.paths.cache_dir)
    return str(Path(name).resolve()) if Path(name).exists() else name


def apply_lora(model, lora, parts: list[str], gradient_checkpointing: bool = False, base_name: str | None = None):
    """The PEFT model for ``lora.*``: LoRA on the LLM, ``parts`` other than llm trained whole;
    ``base_name`` is recorded as the adapter's ``base_model_name_or_path``."""
    from peft import LoraConfig, get_peft_model

    if "llm" not in parts:
        raise ValueError(f"lora.enable=true puts LoRA adapters on the LLM, but stage.trainable={parts} does not "
                         f"train it: add llm to stage.trainable or set lora.enable=false")
    if lora.bias not in ("none", "all", "lora_only"):
        raise ValueError(f"lora.bias must be none, all or lora_only, got {lora.bias!r}")
    model.requires_grad_(False)
    if gradient_checkpointing:  # checkpointed layers whose inputs are frozen still pass gradients
        model.enable_input_require_grads()
    config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, bias=lora.bias,
                        target_modules=lora_target_pattern(model),
                        modules_to_save=whole_modules(parts) or None)
    model = get_peft_model(model, config, autocast_adapter_dtype=True)  # adapters in fp32
    model.peft_config["default"].base_model_name_or_path = base_name  # peft finds none on an assembled Llava
    freeze_fixed_parts(model)
    log.info("LoRA r=%d alpha=%d dropout=%s bias=%s on %d LLM linear layers%s; trained whole: %s",
             lora.r, lora.alpha, lora.dropout, lora.bias, len(lora_targets(model)),
             f" ({lora.bits}-bit base)" if lora.bits < 16 else "", [p for p in parts if p != "llm"])
    return model


def lora_targets(model) -> list[str]:
    """Full names of the modules that carry a LoRA adapter."""
    from peft.tuners.lora import LoraLayer

    return [name for name, module in model.named_modules() if isinstance(module, LoraLayer)]
