"""The run spec's ``fsdp`` node: PyTorch's FSDP2 (``torch.distributed.fsdp.fully_shard``) as the
sharding engine instead of DeepSpeed (``conf/fsdp/*.yaml``: ``fsdp=full|grad_op|hybrid``), its
choices and ranges, and the engine rules checked before anything heavy is imported
(``engine_problems``): one engine at a time, one activation checkpointing at a time.

What each setting becomes is ``llava_hydra.train.fsdp2``'s business (the Trainer's ``fsdp_config``
and accelerate's FSDP2 plugin); this module imports nothing heavy."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional


@dataclass
class FsdpConfig:
    # full: every parameter sharded, gathered for its layer's forward and again for its backward (ZeRO-3's
    # memory) | grad_op: gathered once per step, kept between forward and backward (ZeRO-2-like: more memory,
    # fewer gathers) | hybrid: full inside groups of shard_group_size ranks, replicated across the groups (HSDP)
    sharding: str = "full"
    shard_group_size: Optional[int] = None  # hybrid: ranks per shard group (null: the ranks of one node)
    # FSDP's own per-layer activation checkpointing (each decoder / encoder layer); instead of
    # training.gradient_checkpointing, never with it
    activation_checkpointing: bool = False
    # under training.bf16 (or fp16): layers compute in that dtype, master weights and the optimizer stay fp32,
    # and gradients are reduced across ranks in this dtype (float32: LLaVA's fp32 reduction)
    reduce_dtype: str = "float32"
    cpu_offload: bool = False  # sharded parameters, gradients and optimizer step in host memory (needs a GPU)


CHOICES: Dict[str, tuple] = {
    "fsdp.sharding": ("full", "grad_op", "hybrid"),  # train.fsdp2.SHARDINGS
    "fsdp.reduce_dtype": ("float32", "bfloat16"),
}
RANGES: Dict[str, str] = {"fsdp.shard_group_size": ">= 1"}


def engine_problems(cfg) -> list[str]:
    """One sharding engine per run; FSDP's activation checkpointing or the Trainer's, not both."""
    fsdp = cfg.get("fsdp")
    if fsdp is None:
        return []
    out = []
    if cfg.get("deepspeed") is not None:
        stage = (cfg.deepspeed.get("zero_optimization") or {}).get("stage")
        out.append(f"deepspeed (ZeRO-{stage}) and fsdp ({fsdp.sharding}) are both set: a run has one engine; "
                   f"add deepspeed=none to train under FSDP2, or fsdp=none to keep DeepSpeed")
    if fsdp.activation_checkpointing and cfg.training.gradient_checkpointing:
        out.append("fsdp.activation_checkpointing=true and training.gradient_checkpointing=true: checkpoint once; "
                   "set training.gradient_checkpointing=false (FSDP checkpoints each layer itself)")
    if fsdp.shard_group_size is not None and fsdp.sharding != "hybrid":
        out.append(f"fsdp.shard_group_size={fsdp.shard_group_size} is for fsdp.sharding=hybrid "
                   f"(fsdp.sharding={fsdp.sharding} shards across every rank)")
    if cfg.get("lora") is not None and cfg.lora.enable and cfg.lora.bits != 16:
        out.append(f"lora.bits={cfg.lora.bits} (QLoRA) under fsdp is not supported here: use deepspeed=zero2 "
                   f"(the qlora recipe's engine) or lora.bits=16")
    return out
