"""FSDP2 (``torch.distributed.fsdp.fully_shard``) as the Trainer's engine, through transformers'
``fsdp`` / ``fsdp_config`` and accelerate's FSDP2 plugin, on GPUs and on CPU (gloo).

- ``fsdp_arguments``: the spec's ``fsdp`` node (``llava_hydra.config.fsdp``) as TrainingArguments
  kwargs: every decoder and vision-encoder layer its own unit (``TRANSFORMER_BASED_WRAP``; the
  class names are read from the model, LlavaForConditionalGeneration names none), full state dicts
  (HF-native saves), reshard after forward unless ``grad_op``, hybrid shard as a 2-D mesh.
- ``Fsdp2Engine`` (a Trainer mixin):
  * On CPU accelerate never turns FSDP on: its state makes ``MULTI_CPU`` and the Trainer wraps the
    model in DDP with the FSDP plugin silently dropped (accelerate 1.16 ``AcceleratorState`` sets
    ``DistributedType.FSDP`` only for GPU-like types). ``create_accelerator_and_postprocess`` puts the
    plugin into the state after accelerate made it, so ``prepare`` runs accelerate's own
    ``fsdp2_prepare_model``: the same code path as on GPUs, on gloo.
  * Mixed precision: params computed in bf16/fp16, master weights fp32 (accelerate upcasts the
    trainable ones), gradients reduced in ``fsdp.reduce_dtype`` (accelerate's default would reduce bf16).
  * Checkpoints: the model as the Trainer saves it (``model.safetensors``, or the projector alone in
    stage 1, or the adapter) plus accelerate's full optimizer state; no second copy of the model
    (``pytorch_model_fsdp.bin`` would hold the frozen LLM in stage 1). Resuming loads the weights
    into the model before it is sharded, as one process would, then the optimizer into the shards.
- ``full_tensors``: a state dict of sharded (DTensor) values gathered whole, on every rank.
"""

from __future__ import annotations

import logging
import os

import torch

log = logging.getLogger(__name__)

SHARDINGS = ("full", "grad_op", "hybrid")  # config.fsdp.CHOICES["fsdp.sharding"]
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}  # config.fsdp.CHOICES["fsdp.reduce_dtype"]


def fsdp_arguments(fsdp: dict) -> dict:
    """TrainingArguments kwargs for the spec's ``fsdp`` node (a plain dict)."""
    config = {
        "version": 2,
        "reshard_after_forward": fsdp["sharding"] != "grad_op",
        "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
        "state_dict_type": "FULL_STATE_DICT",
        "activation_checkpointing": bool(fsdp["activation_checkpointing"]),
        "cpu_offload": bool(fsdp["cpu_offload"]),
        # read by Fsdp2Engine (transformers keeps keys it does not know in args.fsdp_config)
        "reduce_dtype": fsdp["reduce_dtype"],
        "sharding": fsdp["sharding"],
        "shard_group_size": fsdp.get("shard_group_size"),
    }
    return {"fsdp": True, "fsdp_config": config}


def hybrid_mesh_sizes(world: int, group: int | None, local_world: int) -> tuple[int, int]:
    """(replicas, ranks per shard group) of hybrid sharding; an error naming the sizes that do not divide."""
    group = group or local_world
    if group < 1 or world % group:
        raise ValueError(f"fsdp.sharding=hybrid: {world} ranks do not split into shard groups of "
                         f"{group} (fsdp.shard_group_size, default: the ranks of one node); set a divisor of {world}")
    return world // group, group


def refusal(fsdp_config: dict, gpu: bool, world_size: int) -> str | None:
    """Why these FSDP2 settings cannot run on this machine, or None."""
    if fsdp_config.get("cpu_offload") and not gpu:
        return ("fsdp.cpu_offload=true needs a GPU: FSDP2 offloads to pinned host memory, which torch cannot "
                "allocate without one (\"Cannot access accelerator device when none is available\"); on CPU the "
                "parameters are in host memory already: set fsdp.cpu_offload=false")
    if world_size < 2:
        return ("fsdp needs several processes (torchrun --nproc_per_node N, or launcher.nproc_per_node=N); "
                "one process shards nothing: set fsdp=none")
    return None


def hybrid_mesh(accelerator, shard_group_size: int | None) -> None:
    """A (replicas x shard group) device mesh in accelerate's state, which ``fsdp2_prepare_model``
    hands to ``fully_shard`` (a 2-D mesh: HSDP). Set after accelerate made its state, as its own
    ``ParallelismConfig`` path refuses a CPU state."""
    from accelerate.parallelism_config import ParallelismConfig

    world = accelerator.num_processes
    replicas, group = hybrid_mesh_sizes(world, shard_group_size, int(os.environ.get("LOCAL_WORLD_SIZE", world)))
    if group < 2:
        raise ValueError(f"fsdp.sharding=hybrid with shard groups of {group} rank shards nothing: that is DDP "
                         f"(fsdp=none deepspeed=none); set fsdp.shard_group_size >= 2")
    config = ParallelismConfig(dp_replicate_size=replicas, dp_shard_size=group)
    accelerator.state.parallelism_config = config
    accelerator.state.device_mesh = config.get_device_mesh(accelerator.device.type)
    config._validate_accelerator(accelerator)


def layer_classes(model) -> list[str]:
    """The repeated layers of the LLM and the vision tower that the model holds (each module's
    ``_no_split_modules``, e.g. LlamaDecoderLayer and CLIPEncoderLayer): each becomes an FSDP unit."""
    present = {type(m).__name__ for m in model.modules()}
    names = []
    for m in model.modules():
        for name in getattr(m, "_no_split_modules", None) or []:
            if name in present and name not in names:
                names.append(name)
    return sorted(names)


def full_tensors(state: dict) -> dict:
    """``state`` with every DTensor gathered whole (a collective: every rank calls it)."""
    from torch.distributed.tensor import DTensor

    return {k: v.full_tensor().detach().cpu().contiguous() if isinstance(v, DTensor) else v
            for k, v in state.items()}


class Fsdp2Engine:
    """Trainer mixin (before ``Trainer`` in the bases) making ``args.fsdp`` run FSDP2 on GPUs and CPUs."""

    def create_accelerator_and_postprocess(self) -> None:
        if not self.args.fsdp:
            return super().create_accelerator_and_postprocess()
        cfg = self.args.fsdp_config
        problem = refusal(cfg, torch.cuda.is_available(), self.args.world_size)
        if problem:
            raise ValueError(problem)
        super().create_accelerator_and_postprocess()
        from accelerate.utils import FullyShardedDataParallelPlugin

        state = self.accelerator.state
        if getattr(state, "fsdp_plugin", None) is None:  # CPU: accelerate made MULTI_CPU (DDP) of it
            adopt_fsdp_state(state, FullyShardedDataParallelPlugin(**self.args.fsdp_plugin_args))
            self.is_fsdp_enabled = True
        plugin = state.fsdp_plugin
        if cfg.get("sharding") == "hybrid":
            hybrid_mesh(self.accelerator, cfg.get("shard_group_size"))
        plugin.transformer_cls_names_to_wrap = layer_classes(self.model)
        keep_save_key_names(self.model)
        if plugin.activation_checkpointing:  # a layer's recompute would append its keys to the KV cache
            no_kv_cache(self.model)  # again (attention over 2x the keys), as gradient_checkpointing_enable avoids
        if self.accelerator.mixed_precision in ("bf16", "fp16"):
            from torch.distributed.fsdp import MixedPrecisionPolicy

            compute = torch.bfloat16 if self.accelerator.mixed_precision == "bf16" else torch.float16
            plugin.mixed_precision_policy = MixedPrecisionPolicy(
                param_dtype=compute, reduce_dtype=DTYPES[cfg.get("reduce_dtype", "float32")])
        mesh = state.device_mesh
        log.info("FSDP2: %s shard over mesh %s, units %s, activation checkpointing %s, mixed precision %s",
                 cfg.get("sharding"), tuple(mesh.shape) if mesh is not None else (self.args.world_size,),
                 plugin.transformer_cls_names_to_wrap, plugin.activation_checkpointing, plugin.mixed_precision_policy)

    def _prepare_for_training(self, max_steps, train_dataloader, resume_from_checkpoint):
        """Under FSDP: the checkpoint's weights go into the whole model (the path one process and
        DDP take), then it is sharded, then the optimizer state is loaded into the shards."""
        if not (resume_from_checkpoint and self.is_fsdp_enabled):
            return super()._prepare_for_training(max_steps, train_dataloader, resume_from_checkpoint)
        self._load_from_checkpoint(resume_from_checkpoint)
        model, train_dataloader = super()._prepare_for_training(max_steps, train_dataloader, None)
        self._load_optimizer_and_scheduler(resume_from_checkpoint)
        self._load_scaler(resume_from_checkpoint)
        return model, train_dataloader

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        """Under FSDP: the optimizer state gathered whole (accelerate's ``optimizer.bin``) and the
        scheduler; the weights are the checkpoint's model files, not written a second time."""
        if not self.is_fsdp_enabled:
            return super()._save_optimizer_and_scheduler(output_dir)
        from accelerate.utils import save_fsdp_optimizer
        from transformers.trainer import SCHEDULER_NAME

        save_fsdp_optimizer(self.accelerator.state.fsdp_plugin, self.accelerator, self.optimizer, self.model,
                            output_dir)
        if self.args.should_save:
            torch.save(self.lr_scheduler.state_dict(), os.path.join(output_dir, SCHEDULER_NAME))


def keep_save_key_names(model) -> None:
    """``save_pretrained`` names the saved weights by the conversion mapping it looks up by the
    model's class; ``fully_shard`` swaps the class (FSDPLlavaForConditionalGeneration), which finds
    only part of it: the file would hold keys such as ``model.language_model.model.embed_tokens``
    instead of the ``language_model.model.embed_tokens`` one process writes (transformers reads both,
    other loaders only the latter). Pin each model's mapping while its class is still its own."""
    from transformers import PreTrainedModel
    from transformers.conversion_mapping import get_model_conversion_mapping
    from transformers.core_model_loading import PrefixChange

    for m in model.modules():
        if isinstance(m, PreTrainedModel) and getattr(m, "_weight_conversions", None) is None:
            found = [x for x in get_model_conversion_mapping(m, add_legacy=False) if not isinstance(x, PrefixChange)]
            m._weight_conversions = found or None  # as revert_weight_conversion does for a model made from a config


def no_kv_cache(model) -> None:
    """Training forwards build no KV cache (every config the model holds: the LLM's text config too)."""
    for m in model.modules():
        config = getattr(m, "config", None)
        for c in (config, getattr(config, "text_config", None)):
            if c is not None and hasattr(c, "use_cache"):
                c.use_cache = False


def adopt_fsdp_state(state, plugin) -> None:
    """Make accelerate's (shared) state FSDP with ``plugin``, as it does itself on GPUs."""
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType

    PartialState._shared_state["distributed_type"] = DistributedType.FSDP
    AcceleratorState._shared_state["distributed_type"] = DistributedType.FSDP
    state.fsdp_plugin = plugin
    os.environ["ACCELERATE_USE_FSDP"] = "true"
