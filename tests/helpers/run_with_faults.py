"""run_and_die.py (the embedded default, one process or one rank under torchrun) with a fault
injected, chosen by environment variables:

- SIGNAL_AT_STEP=N (+ SIGNAL=SIGTERM, SIGNAL_RANK=r): the process sends itself the signal while it
  computes step N+1 (only rank r, when set), as a preemption arriving mid-step would;
- NAN_AT_STEP=N: the loss of step N is NaN (so are its gradients);
- FULL_DISK=1: writing optimizer.pt fails as torch's zip writer fails on a full disk
  ("unexpected pos"), and the disk reports no free space.
"""

import os
import runpy
import signal
import sys
from pathlib import Path

import torch

from llava_hydra.train.trainer import LLaVATrainer

signal_at = int(os.environ.get("SIGNAL_AT_STEP", "0"))
nan_at = int(os.environ.get("NAN_AT_STEP", "0"))
rank = int(os.environ.get("RANK", "0"))

if signal_at and os.environ.get("SIGNAL_RANK", str(rank)) == str(rank):
    original_step = LLaVATrainer.training_step
    sent = []

    def training_step(self, *args, **kwargs):
        if self.state.global_step == signal_at and not sent:
            sent.append(True)
            os.kill(os.getpid(), getattr(signal, os.environ.get("SIGNAL", "SIGTERM")))
        return original_step(self, *args, **kwargs)

    LLaVATrainer.training_step = training_step

if nan_at:
    original_loss = LLaVATrainer.compute_loss

    def compute_loss(self, *args, **kwargs):
        out = original_loss(self, *args, **kwargs)
        if self.state.global_step + 1 != nan_at:
            return out
        if isinstance(out, tuple):
            return (out[0] * float("nan"), *out[1:])
        return out * float("nan")

    LLaVATrainer.compute_loss = compute_loss

if os.environ.get("FULL_DISK"):
    import shutil

    real_save, real_usage = torch.save, shutil.disk_usage

    def save(obj, f, *args, **kwargs):
        if str(f).endswith("optimizer.pt"):
            Path(f).write_bytes(b"PK\x03\x04" + b"\0" * 60)  # the part written before the disk filled
            raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 4160 vs 4048")
        return real_save(obj, f, *args, **kwargs)

    torch.save = save
    shutil.disk_usage = lambda p: shutil._ntuple_diskusage(real_usage(p).total, real_usage(p).total, 0)

sys.argv = [str(Path(__file__).parent / "run_and_die.py"), *sys.argv[1:]]
runpy.run_path(sys.argv[0], run_name="__main__")
