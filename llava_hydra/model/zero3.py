"""DeepSpeed ZeRO-3 while the model is put together: new modules created partitioned, the
skeleton built with ZeRO-3's init paused, partitioned tensors gathered for an edit, and sizes
read through the partitioning. Each is a no-op without ZeRO-3 (or without DeepSpeed)."""

from __future__ import annotations

import contextlib

import torch


def zero3_enabled() -> bool:
    from transformers.integrations import is_deepspeed_zero3_enabled

    return is_deepspeed_zero3_enabled()


def partitioned_init():
    """Create new modules already partitioned when ZeRO-3 is on (no full copy per rank)."""
    if not zero3_enabled():
        return contextlib.nullcontext()
    import deepspeed
    from transformers.integrations.deepspeed import deepspeed_config

    return deepspeed.zero.Init(config_dict_or_path=deepspeed_config())


@contextlib.contextmanager
def zero3_init_paused(keep_alive: list):
    """Build the empty Llava skeleton (its parts are replaced at once) without transformers'
    ZeRO-3 weight init, which cannot run on the meta device; the real LLM and vision tower are
    still loaded partitioned. transformers' switch is its global DeepSpeed config: unset here
    and set again afterwards from the same config (``HfDeepSpeedConfig`` sets itself), the new
    holder appended to ``keep_alive`` (the global is a weak reference: the caller keeps it as
    long as ZeRO-3 must stay on, i.e. with the model)."""
    if not zero3_enabled():
        yield
        return
    from transformers.integrations.deepspeed import HfDeepSpeedConfig, deepspeed_config, unset_hf_deepspeed_config

    config = deepspeed_config()
    unset_hf_deepspeed_config()
    try:
        yield
    finally:
        keep_alive.append(HfDeepSpeedConfig(config))


def gathered(params, modify: bool):
    """Full tensors of ZeRO-3-partitioned ``params`` inside the block; edits made on rank 0 are
    scattered back when ``modify``. A no-op for ordinary parameters."""
    params = [p for p in params if hasattr(p, "ds_id")]
    if not params:
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(params, modifier_rank=0 if modify else None)


def full_numel(p: torch.nn.Parameter) -> int:
    """Elements of a parameter, also under ZeRO-3 (whose partitioned parameters have numel() 0)."""
    return getattr(p, "ds_numel", p.numel())


def full_shape(p: torch.nn.Parameter) -> tuple[int, ...]:
    """Shape of a parameter, also under ZeRO-3 (partitioned parameters are empty locally)."""
    return tuple(getattr(p, "ds_shape", p.shape))
