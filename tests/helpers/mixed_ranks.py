"""Run the embedded default (one process, or one rank under torchrun) with the given overrides
and write what the data-parallel tests check to $MIXED_OUT:

- ``start.safetensors`` + ``config.json`` (rank 0): the whole model as training starts (gathered
  from ZeRO-3 partitions: a collective on every rank), for a one-process reference in plain
  transformers;
- ``batch.pt`` (rank 0): the first optimizer step's global batch as one process would collate
  it (the first ``world * per_device`` samples: with ``SEQUENTIAL=1`` the train sampler is a
  sequential one, so rank r's micro-batch is the r-th block of ``per_device`` samples);
- ``rank<R>.json``: the run's log history, the distributed type accelerate ran under, the class
  of the wrapped model, and a digest of every trainable parameter (not under ZeRO-3; FSDP2's gathered).

With ``RAISE_AT_STEP=N`` (and ``RAISE_ON_RANK``, default 1) that rank raises at step N.
"""

import hashlib
import json
import logging
import os
import sys
import time

import torch
from hydra import compose, initialize_config_module
from safetensors.torch import save_file

from llava_hydra.commands.runner import run
from llava_hydra.config.schema import register_configs
from llava_hydra.train.trainer import LLaVATrainer

OUT = os.environ["MIXED_OUT"]
RANK = int(os.environ.get("RANK", "0"))
raise_at, raise_on = int(os.environ.get("RAISE_AT_STEP", "0")), int(os.environ.get("RAISE_ON_RANK", "1"))

if os.environ.get("SEQUENTIAL") == "1":
    def sequential(self, train_dataset=None):
        return torch.utils.data.SequentialSampler(train_dataset if train_dataset is not None else self.train_dataset)

    LLaVATrainer._get_train_sampler = sequential

original_train, original_step = LLaVATrainer.train, LLaVATrainer.training_step


def full_state(model) -> dict[str, torch.Tensor]:
    params = [p for p in model.parameters() if hasattr(p, "ds_id")]
    if params:
        import deepspeed

        with deepspeed.zero.GatheredParameters(params):
            return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}


def train(self, *args, **kwargs):
    model = self.model
    state = full_state(model)
    if RANK == 0:
        save_file(state, os.path.join(OUT, "start.safetensors"))
        model.config.to_json_file(os.path.join(OUT, "config.json"))
        n = self.args.world_size * self.args.per_device_train_batch_size
        torch.save(self.data_collator([self.train_dataset[i] for i in range(n)]), os.path.join(OUT, "batch.pt"))
    out = original_train(self, *args, **kwargs)
    digest = None
    if not any(hasattr(p, "ds_id") for p in model.parameters()):
        from torch.distributed.tensor import DTensor  # FSDP2's shards: gathered whole (every rank)

        digest = {name: hashlib.sha256((p.full_tensor() if isinstance(p, DTensor) else p).detach().double()
                                       .numpy().tobytes()).hexdigest()
                  for name, p in self.accelerator.unwrap_model(self.model).named_parameters() if p.requires_grad}
    from accelerate.state import PartialState

    with open(os.path.join(OUT, f"rank{RANK}.json"), "w") as f:
        json.dump({"log_history": self.state.log_history, "digest": digest,
                   "distributed_type": str(PartialState().distributed_type),
                   "wrapped": type(self.model_wrapped).__name__}, f)
    return out


def training_step(self, *args, **kwargs):
    if raise_at and RANK == raise_on and self.state.global_step == raise_at:
        with open(os.path.join(OUT, "raised_at"), "w") as f:
            f.write(repr(time.time()))
        raise RuntimeError(f"rank {RANK} raised at step {raise_at} on purpose")
    return original_step(self, *args, **kwargs)


LLaVATrainer.train, LLaVATrainer.training_step = train, training_step
logging.basicConfig(level=logging.INFO if RANK == 0 else logging.WARNING)
register_configs()
with initialize_config_module("llava_hydra.conf", version_base="1.3"):
    spec = compose("config", overrides=sys.argv[1:])
from llava_hydra.config.distributed import end_process_group, failure_reported_to_launcher  # noqa: E402

try:
    with failure_reported_to_launcher():  # as python -m llava_hydra and the workers report an error
        run(spec)
finally:
    end_process_group()
