"""Numbers and kernels: the compute dtype (``model.dtype``), the attention implementation
(``model.attn_implementation``), fp32 master weights for what trains when no engine keeps
them, and the per-part dtype report a run logs."""

from __future__ import annotations

import logging

import torch

from llava_hydra.model.llava import part_of

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def pick_dtype(name: str, bf16: bool, fp16: bool) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if bf16 else torch.float16 if fp16 else torch.float32
    if name not in DTYPES:
        raise ValueError(f"model.dtype must be auto or one of {sorted(DTYPES)}, got {name!r}")
    return DTYPES[name]


def pick_attention(name: str) -> str:
    """``auto``: flash_attention_2 when flash-attn is installed and a GPU is present, else sdpa."""
    if name != "auto":
        return name
    try:
        import flash_attn  # noqa: F401

        has_flash = True
    except ImportError:
        has_flash = False
    choice = "flash_attention_2" if has_flash and torch.cuda.is_available() else "sdpa"
    why = "flash-attn installed and a GPU present" if choice != "sdpa" else (
        "flash-attn not installed" if not has_flash else "no GPU")
    log.info("attention: %s (%s)", choice, why)
    return choice


def fp32_masters(cfg, dtype: torch.dtype) -> bool:
    """Whether the trainable parameters must be held in fp32 here: the Trainer computes in
    bf16/fp16 through autocast (``training.bf16`` / ``fp16``), and no engine keeps fp32 master
    weights (DeepSpeed does: its bf16/fp16 modes hold fp32 copies of a half-precision model)."""
    return (cfg.training.bf16 or cfg.training.fp16) and cfg.deepspeed is None and dtype != torch.float32


def hold_trainable_in_fp32(model) -> None:
    """Trainable parameters to fp32 (updates smaller than a bf16 ulp are kept); frozen parts
    stay in the compute dtype they were loaded in."""
    for p in model.parameters():
        if p.requires_grad and p.is_floating_point() and p.dtype != torch.float32:
            p.data = p.data.float()


def part_dtypes(model) -> dict[str, set[str]]:
    """Part -> {"<dtype> trained" | "<dtype> frozen"} over its parameters (a 4-bit LLM body's
    packed weights show as uint8)."""
    out: dict[str, set[str]] = {}
    for name, p in model.named_parameters():
        dtype = str(p.dtype).removeprefix("torch.")
        out.setdefault(part_of(name), set()).add(f"{dtype} {'trained' if p.requires_grad else 'frozen'}")
    return out
