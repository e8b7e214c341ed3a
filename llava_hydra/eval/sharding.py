"""The one generation loop: questions sharded over ranks, answered in batches, gathered.

Used by ``llava_hydra.eval.heldout`` (held-out exact match during and after training) and
``llava_hydra.eval.answers`` (benchmark answers files). Rank r of W answers items r, r + W,
r + 2W, ... in batches of ``batch_size``; every rank makes the same number of ``answer_batch``
calls (a short shard is padded with its last item, whose answer is dropped): under ZeRO-3 every
forward pass is a collective of all ranks. The answers are then gathered, so every rank returns
all of them in item order, as one process would.

Rank and world size are torch.distributed's (the process group a training run or the eval app
started: ``llava_hydra.config.distributed.start_process_group``); without a process group one process answers everything.
"""

from __future__ import annotations

from typing import Callable, Sequence, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def rank_and_world() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather(obj) -> list:
    """``obj`` of every rank, in rank order, on every rank."""
    rank, world = rank_and_world()
    if world == 1:
        return [obj]
    import torch.distributed as dist

    out = [None] * world
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if rank_and_world()[1] > 1:
        import torch.distributed as dist

        dist.barrier()


def answer_sharded(items: Sequence[T], answer_batch: Callable[[list[T]], list[R]], batch_size: int,
                   on_batch: Callable[[list[T], list[R]], None] | None = None,
                   desc: str | None = None) -> list[R]:
    """``answer_batch`` over this rank's share of ``items``; all answers, in ``items`` order, on
    every rank. ``on_batch(items, answers)`` sees each batch as it is answered (padding left out);
    ``desc`` shows a progress bar on rank 0."""
    from tqdm.auto import tqdm

    rank, world = rank_and_world()
    mine = list(range(rank, len(items), world))
    calls = -(-len(items) // world)  # every rank the same number of rows, so of generate calls
    padded = mine + [mine[-1] if mine else 0] * (calls - len(mine))
    answers: dict[int, R] = {}
    with tqdm(total=len(mine), disable=desc is None or rank != 0, desc=desc) as bar:
        for start in range(0, calls, batch_size):
            rows = padded[start:start + batch_size]
            out = answer_batch([items[i] for i in rows])
            kept = [(i, a) for k, (i, a) in enumerate(zip(rows, out)) if start + k < len(mine)]
            answers.update(kept)
            if on_batch is not None and kept:
                on_batch([items[i] for i, _ in kept], [a for _, a in kept])
            bar.update(len(kept))
    merged = {i: a for part in gather(answers) for i, a in part.items()}
    return [merged[i] for i in range(len(items))]
