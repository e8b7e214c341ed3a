"""Where this process stands among the run's processes, read from the launcher's environment
(torchrun, deepspeed, SLURM through ``launch.adopt_slurm_ranks``) without starting anything:
no torch import, so the entry point and config code can ask too; and the one way a process
joins the run's process group (``start_process_group``: training and the eval app) and leaves it
(``end_process_group``: every entry point that joined); and how a rank's exception reaches
torchrun's closing report (``failure_reported_to_launcher``)."""

from __future__ import annotations

import contextlib
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


def start_process_group(cpu: bool = False, deepspeed: bool = False) -> str | None:
    """Under a launcher (WORLD_SIZE > 1): join the process group by making accelerate's state, which
    transformers' Trainer and accelerate then use as made. Without a GPU (or with ``cpu``) that is
    accelerate's CPU mode: gloo, every rank on the CPU, and ``MULTI_CPU``, the state under which the
    Trainer wraps the model in DDP (accelerate started any other way on a CPU says ``NO`` for a group
    it started itself: every rank then trained its own copy on its share of the data). Otherwise
    NCCL with each rank on its own GPU. With ``deepspeed`` DeepSpeed's communication starts the
    group, on gloo without a GPU (under torchrun accelerate must know before the Trainer does:
    ``ACCELERATE_USE_DEEPSPEED``; its CPU mode would skip that, and DeepSpeed's engine does the
    data parallelism). Returns the rank's device name; a single process starts nothing (None)."""
    if world_size() <= 1:
        return None
    import torch
    from accelerate import PartialState

    gloo = cpu or not torch.cuda.is_available()
    if deepspeed:
        os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"
        return str(PartialState(backend="gloo" if gloo else None).device)
    return str(PartialState(cpu=gloo, backend="gloo" if gloo else None).device)


def end_process_group() -> None:
    """Leave the process group before the interpreter exits: a gloo rank whose group is still
    alive then can abort ("terminate called without an active exception"), and torchrun reports
    a finished run as failed. What still holds the group's work (a DeepSpeed engine and the hooks
    it put on the model: reference cycles that outlive the run's function) is collected first,
    while the interpreter is whole, and again after the group is gone, rather than torn down with
    the interpreter, when freeing gloo's pending work cannot take the GIL and aborts."""
    import gc
    import sys

    import torch.distributed as dist

    # ZeRO-3 keeps the last model it ran forward in a module-level stack: the model, its hooks and
    # the engine they reach live until interpreter teardown unless it is emptied.
    stack = getattr(sys.modules.get("deepspeed.runtime.zero.parameter_offload"), "FWD_MODULE_STACK", None)
    if stack is not None:
        stack.clear()
    gc.collect()
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    gc.collect()


@contextlib.contextmanager
def failure_reported_to_launcher():
    """Under torchrun, an exception leaving the block is written to this worker's error file
    (``TORCHELASTIC_ERROR_FILE``) before it propagates, so the report torchrun prints last, when it
    has stopped the other ranks, names it as the root cause with its message and traceback (not
    "To enable traceback see ..."). What ``torch.distributed.elastic``'s ``@record`` does, for a
    block: entry points must not import torch before the spec is checked."""
    try:
        yield
    except Exception as e:
        other = first_failure(e)  # another rank failed first (on another node too): its error, named here
        if other and (str(e) in other or other.split(": ", 2)[-1] in str(e)):
            other = None  # the same error (every rank refusing one run directory): raised as it is
        if not other:
            _record(e)
            raise
        try:
            raise RuntimeError(f"{other}\n(this rank stopped because of it: {type(e).__name__})") from e
        except RuntimeError as named:
            _record(named)  # the report's traceback is the one being handled: this one, after e's
            raise


def _record(e: Exception) -> None:
    if os.environ.get("TORCHELASTIC_ERROR_FILE"):
        from torch.distributed.elastic.multiprocessing.errors import get_error_handler

        handler = get_error_handler()
        handler.initialize()
        handler.record_exception(e)


FAILURE_KEY = "llava_hydra/first_failure"


def first_failure(e: Exception) -> str | None:
    """Publish this rank's error in the process group's store (the launcher's, which every node
    reaches) unless a rank did first; return that earlier rank's error, or None. A rank whose
    collective broke because another node's process died raises that node's message, so every
    node's launch names the cause. Best effort: never masks ``e``."""
    try:
        from datetime import timedelta

        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return None
        store = dist.distributed_c10d._get_default_store()
        store.set_timeout(timedelta(seconds=5))
        node = os.environ.get("GROUP_RANK", "?")
        mine = f"rank {rank()} (node {node}) failed: {type(e).__name__}: {e}"
        first = store.compare_set(FAILURE_KEY, "", mine).decode(errors="replace")
        return None if first == mine else first
    except Exception:
        return None
