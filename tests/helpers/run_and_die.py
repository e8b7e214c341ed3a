"""Run the embedded default with the given overrides (one process, or one rank under torchrun);
with KILL_AT_STEP=N set, SIGKILL this process right after optimizer step N (as a crash or a
preempted job would)."""

import logging
import os
import signal
import sys

from hydra import compose, initialize_config_module

from llava_hydra.config.schema import register_configs
from llava_hydra.commands.runner import run
from llava_hydra.train.trainer import LLaVATrainer

kill_at = int(os.environ.get("KILL_AT_STEP", "0"))
if kill_at:
    original = LLaVATrainer.training_step

    def training_step(self, *args, **kwargs):
        if self.state.global_step == kill_at:  # step N is done (and saved, if it was a save step)
            os.kill(os.getpid(), signal.SIGKILL)
        return original(self, *args, **kwargs)

    LLaVATrainer.training_step = training_step

logging.basicConfig(level=logging.INFO)
register_configs()
with initialize_config_module("llava_hydra.conf", version_base="1.3"):
    spec = compose("config", overrides=sys.argv[1:])
run(spec)
import torch.distributed as dist  # noqa: E402

if dist.is_initialized():  # left to interpreter exit, gloo's teardown sometimes aborts a finished rank
    dist.barrier()
    dist.destroy_process_group()
