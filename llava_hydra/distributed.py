"""Where this process stands among the run's processes, read from the launcher's environment
(torchrun, deepspeed, SLURM through ``launch.adopt_slurm_ranks``) without starting anything:
no torch import, so the entry point and config code can ask too."""

from __future__ import annotations

import os


def rank() -> int:
    """This process's global rank (``RANK``; 0 when not launched)."""
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    """How many processes run the job (``WORLD_SIZE``; 1 when not launched)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    return rank() == 0


def under_launcher() -> bool:
    """Started by torchrun / deepspeed (as one of its workers), not by the user's command."""
    return "LOCAL_RANK" in os.environ or "RANK" in os.environ
