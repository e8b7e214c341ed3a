"""The directory a sweep (``python -m llava_hydra -m ...``) writes to: one per sweep, never
shared by two sweeps started at once.

``conf/config.yaml`` names it ``${llava_sweep_dir:<parent>}`` (parent:
``<output_root>/multirun/<model>/<stage>``); the resolver returns ``<parent>/<time>``, the time
to the second as before. Two sweeps started in the same second used to share that directory
(and each reported the other's jobs in its summary). Now:

- one process (a sweep run as such): the directory is claimed with an atomic ``mkdir``; a sweep
  that finds it taken takes ``<time>_2``, ``<time>_3``, ... (atomic on local filesystems and NFS);
- several processes of one launch (torchrun, srun, ``deepspeed``: ``WORLD_SIZE`` > 1, where every
  rank runs the sweep and all must write to the same directory): no claim, which would give each
  rank its own; the name gets a tag every rank of the launch computes alike and another launch
  does not (a hash of its rendezvous: ``TORCHELASTIC_RUN_ID``, ``MASTER_ADDR``/``MASTER_PORT``,
  ``SLURM_JOB_ID``/``SLURM_STEP_ID``): ``<time>_r<tag>``.

The choice is made once per process and parent (Hydra resolves the directory for the sweep and for
each of its jobs; OmegaConf's resolver cache, which Hydra copies into every job's config, and a
memo here keep the answer the same).
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

RESOLVER = "llava_sweep_dir"
LAUNCH_VARS = ("TORCHELASTIC_RUN_ID", "MASTER_ADDR", "MASTER_PORT", "SLURM_JOB_ID", "SLURM_STEP_ID")
_chosen: dict[str, str] = {}


def launch_tag() -> str | None:
    """A tag shared by the ranks of one multi-process launch (None in a single process)."""
    if int(os.environ.get("WORLD_SIZE", "1") or 1) <= 1:
        return None
    rendezvous = "|".join(os.environ.get(k, "") for k in LAUNCH_VARS)
    return hashlib.sha256(rendezvous.encode()).hexdigest()[:6]


def claim(parent: str | Path, stamp: str) -> Path:
    """``parent/stamp``, or the first free ``parent/stamp_k``, created by this call (atomic mkdir)."""
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    for k in range(1, 10_000):
        path = parent / (stamp if k == 1 else f"{stamp}_{k}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise RuntimeError(f"no free sweep directory under {parent} for {stamp}")


def sweep_dir(parent: str) -> str:
    """The sweep's directory under ``parent`` (see the module docstring); the same on every call."""
    if parent not in _chosen:
        stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
        tag = launch_tag()
        _chosen[parent] = str(Path(parent) / f"{stamp}_r{tag}") if tag else str(claim(parent, stamp))
    return _chosen[parent]


def register_resolver() -> None:
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver(RESOLVER):
        OmegaConf.register_new_resolver(RESOLVER, sweep_dir, use_cache=True)
