"""One command, several processes: ``launcher.nproc_per_node=N`` composes the spec once (in
the Hydra job), writes it resolved to ``<run dir>/launch_spec.yaml`` and starts N workers
with torchrun; each worker (llava_hydra.commands.worker) reads that file and runs it. Nothing is
composed twice, so ``${now:}`` and every other interpolation mean the same on every rank.
Also what a job started by a cluster launcher adopts: SLURM ranks, and resuming after a requeue.

    python -m llava_hydra stage=finetune model=vicuna13b launcher.nproc_per_node=8
    python -m llava_hydra.commands.worker <run dir>/launch_spec.yaml      # what each worker runs
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("llava_hydra")
WORKER_SPEC_FILE = "launch_spec.yaml"


def adopt_slurm_ranks() -> None:
    """Under SLURM with several tasks (hydra/launcher=slurm), every task runs the job: export
    its rank, world size and master address the way torchrun would."""
    if "RANK" in os.environ or int(os.environ.get("SLURM_NTASKS", "1")) <= 1:
        return
    from submitit.helpers import TorchDistributedEnvironment

    TorchDistributedEnvironment().export()


def resume_request(configured):
    """``training.resume_from_checkpoint``, or ``auto`` in a SLURM job that was requeued."""
    if configured is None and int(os.environ.get("SLURM_RESTART_COUNT", "0")) > 0:
        return "auto"
    return configured


def spawn(cfg: DictConfig, output_dir: str) -> float | None:
    """Start ``cfg.launcher.nproc_per_node`` workers on this node and wait for them."""
    spec = OmegaConf.to_container(cfg, resolve=True)
    spec["training"]["output_dir"] = output_dir
    spec["launcher"]["nproc_per_node"] = 1  # the workers run, they do not launch again
    from llava_hydra.commands.tracking import GROUP_ENV, run_name, sweep_job

    env = dict(os.environ)
    group, _ = sweep_job()
    if group:  # a sweep's job: its workers run outside Hydra, so its tracker name and group go with them
        spec["training"]["run_name"] = run_name(cfg)
        env[GROUP_ENV] = group
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    spec_file = out / WORKER_SPEC_FILE
    OmegaConf.save(OmegaConf.create(spec), spec_file)
    from torch.distributed.elastic.utils.distributed import get_free_port

    n, port = cfg.launcher.nproc_per_node, cfg.launcher.master_port or get_free_port()
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={n}", f"--master_port={port}",
           "-m", "llava_hydra.commands.worker", str(spec_file)]
    log.info("launching %d workers: %s", n, " ".join(cmd))
    done = subprocess.run(cmd, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"{n} workers launched from {spec_file} failed with exit code {done.returncode}")
    metrics = out / "metrics.json"
    return json.loads(metrics.read_text()).get("eval_accuracy") if metrics.exists() else None
