"""Under torchrun: run the embedded default, then check on every rank that the projector
file rank 0 wrote equals the projector gathered from the (ZeRO-3 partitioned) model, and
write the verdict of each rank to <run_dir>/projector_check_rank<R>.json."""

import json
import logging
import os
import sys

import torch
from hydra import compose, initialize_config_module
from safetensors.torch import load_file

from llava_hydra.config.schema import register_configs
from llava_hydra.commands.runner import run
from llava_hydra.train.trainer import LLaVATrainer, gathered_projector_state

original = LLaVATrainer.save_model


def save_model(self, output_dir=None, _internal_call=False):
    original(self, output_dir, _internal_call)
    if _internal_call:  # a checkpoint; the final save is the one to check
        return
    gathered = gathered_projector_state(self.accelerator.unwrap_model(self.model))  # a collective
    self.accelerator.wait_for_everyone()
    saved = load_file(os.path.join(output_dir, "mm_projector.safetensors"))
    verdict = {"keys": sorted(saved), "equal": saved.keys() == gathered.keys()
               and all(torch.equal(saved[k], gathered[k]) for k in saved),
               "partitioned": any(hasattr(p, "ds_id") for p in self.model.parameters())}
    rank = int(os.environ.get("RANK", "0"))
    with open(os.path.join(output_dir, f"projector_check_rank{rank}.json"), "w") as f:
        json.dump(verdict, f)


LLaVATrainer.save_model = save_model
logging.basicConfig(level=logging.INFO)
register_configs()
with initialize_config_module("llava_hydra.conf", version_base="1.3"):
    spec = compose("config", overrides=sys.argv[1:])
run(spec)
