"""The training sampler: the order in which one epoch visits the dataset.

Owns ``LengthGroupedSampler`` and LLaVA's index functions (``split_to_even_chunks``,
``get_length_grouped_indices``, ``get_modality_length_grouped_indices``). Lengths are
LLaVA's ``modality_lengths``: positive for samples with an image, negative for text-only.

A *step* is one megabatch of ``world_size * batch_size`` consecutive indices (``world_size``
is ranks x gradient accumulation steps, as LLaVA passes it), so one megabatch is one optimizer
step. Three modes, each yielding every index exactly once per epoch:

- ``random_steps`` (default): every step is a uniformly random draw, without replacement, of
  one modality, as LLaVA's: each modality's random permutation is cut into megabatches, whose
  order is shuffled across modalities. Only *inside* a step are samples reordered: longest
  first, cut into consecutive per-device batches, so each batch holds neighbouring lengths
  (little padding) and the ranks of one micro-step get neighbouring batches. What a step
  averages is what LLaVA's step averages.
- ``llava``: LLaVA's algorithm. A random permutation is cut into megabatches; each is sorted
  longest first and dealt greedily into ``world_size`` per-device batches of similar total
  length. With modality grouping, image and text-only samples are done separately, their full
  megabatches shuffled together and the two partial ones merged (in index order) into one last
  megabatch. The module-level functions are this algorithm drawing from torch's random
  generator in LLaVA's order, so after the same ``torch.manual_seed`` they return LLaVA's index
  list to the element.
- ``sorted_steps`` (opt-in; CHANGES THE OBJECTIVE): per modality the whole dataset is sorted by
  length (random ties; within pools of ``pool`` megabatches if set) and cut into steps, dealt
  greedily into balanced per-device batches. Almost no padding and balanced ranks, but a step
  holds samples of one length, so a token of a short-sample step weighs far more than one of a
  long-sample step: not LLaVA's objective.

The sampler yields the *global* order: accelerate's ``BatchSamplerShard`` hands consecutive
batches of ``batch_size`` to the ranks in turn, so nothing here splits by rank (a sampler that
did would drop data). The order is a pure function of the lengths, the sizes, ``seed + epoch``
and the mode, so every rank computes the same one and a resumed epoch replays it;
``set_epoch`` (called by the Trainer / accelerate each epoch) reshuffles.
"""

from __future__ import annotations

import torch
from torch.utils.data import Sampler

from llava_hydra.config.schema import CHOICES
from llava_hydra.config.validate import check_choice

MODES = CHOICES["training.length_grouping"]  # random_steps, llava, sorted_steps; validate refuses others


def _as_lengths(lengths) -> torch.Tensor:
    """Lengths as int64, or float64 if any is fractional (sums then match Python's exactly)."""
    t = torch.as_tensor(lengths)
    return torch.as_tensor(lengths, dtype=torch.float64) if t.is_floating_point() else t.to(torch.int64)


# -- LLaVA's algorithm, vectorised over megabatches ----------------------------------------------

def _greedy_chunks(lens: torch.Tensor, num_chunks: int) -> torch.Tensor:
    """LLaVA's greedy deal, for each row of ``lens`` (R x M, M divisible by ``num_chunks``):
    position j goes to the currently lightest chunk (first one on ties) that is not yet full.
    Returns the chunk of every position (R x M); the loop runs over positions, not rows."""
    rows, size = lens.shape
    per_chunk = size // num_chunks
    full = float("inf") if lens.is_floating_point() else torch.iinfo(torch.int64).max
    load = torch.zeros(rows, num_chunks, dtype=lens.dtype)
    count = torch.zeros(rows, num_chunks, dtype=torch.int64)
    chunk = torch.empty(rows, size, dtype=torch.int64)
    r = torch.arange(rows)
    for j in range(size):
        c = load.argmin(dim=1)  # first minimum, as list.index(min(...))
        chunk[:, j] = c
        load[r, c] += lens[:, j]
        count[r, c] += 1
        load[r, c] = torch.where(count[r, c] == per_chunk, full, load[r, c])
    return chunk


def _sort_and_split(megabatches: torch.Tensor, lens: torch.Tensor, num_chunks: int) -> torch.Tensor:
    """Rows of indices: each sorted longest first (stable, as Python's ``sorted(reverse=True)``)
    then laid out chunk after chunk, as ``split_to_even_chunks`` returns them."""
    if megabatches.numel() == 0:
        return megabatches.reshape(-1)
    order = torch.sort(lens[megabatches], dim=1, descending=True, stable=True).indices
    mb = megabatches.gather(1, order)
    if mb.shape[1] % num_chunks != 0:  # LLaVA's fallback: strided, no balancing
        return torch.cat([mb[:, i::num_chunks] for i in range(num_chunks)], dim=1).reshape(-1)
    chunk = _greedy_chunks(lens[mb], num_chunks)
    return mb.gather(1, torch.sort(chunk, dim=1, stable=True).indices).reshape(-1)


def _llava_grouped(lens: torch.Tensor, batch_size: int, world_size: int, generator) -> torch.Tensor:
    indices = torch.randperm(len(lens), generator=generator)
    size = world_size * batch_size
    cut = len(indices) // size * size
    head = _sort_and_split(indices[:cut].view(-1, size), lens, world_size)
    tail = _sort_and_split(indices[cut:].view(1, -1), lens, world_size)
    return torch.cat([head, tail])


def _llava_modality_grouped(lens, batch_size, world_size, inner_generator, outer_generator) -> torch.Tensor:
    if (lens == 0).any():
        raise ValueError("a length of 0 has no modality (images are > 0, text-only < 0)")
    if (lens > 0).all() or (lens < 0).all():
        return _llava_grouped(lens, batch_size, world_size, outer_generator)
    size = world_size * batch_size
    kept, last = [], []
    for idx, group_lens in ((torch.nonzero(lens > 0).view(-1), lens[lens > 0]),
                            (torch.nonzero(lens < 0).view(-1), -lens[lens < 0])):
        order = idx[_llava_grouped(group_lens, batch_size, world_size, inner_generator)]
        cut = (len(order) - 1) // size * size  # the last megabatch (full or not) is set aside
        kept.append(order[:cut].view(-1, size))
        last.append(order[cut:])
    megabatches = torch.cat(kept)
    megabatches = megabatches[torch.randperm(len(megabatches), generator=outer_generator)]
    return torch.cat([megabatches.reshape(-1), torch.sort(torch.cat(last)).values])


def split_to_even_chunks(indices, lengths, num_chunks: int) -> list[list[int]]:
    """LLaVA's split: each index in turn to the lightest unfilled chunk; strided if the
    count does not divide."""
    indices = list(indices)
    if len(indices) % num_chunks != 0:
        return [indices[i::num_chunks] for i in range(num_chunks)]
    if not indices:
        return [[] for _ in range(num_chunks)]
    idx = torch.as_tensor(indices, dtype=torch.int64)
    lens = _as_lengths(lengths)[idx].view(1, -1)
    chunk = _greedy_chunks(lens, num_chunks)[0]
    return [idx[chunk == c].tolist() for c in range(num_chunks)]


def get_length_grouped_indices(lengths, batch_size: int, world_size: int, generator=None, merge: bool = True):
    """LLaVA's length grouping: random megabatches, each sorted and split into balanced
    per-device batches. ``merge`` is accepted and ignored, as in LLaVA."""
    return _llava_grouped(_as_lengths(lengths), batch_size, world_size, generator).tolist()


def get_modality_length_grouped_indices(lengths, batch_size: int, world_size: int, generator=None):
    """LLaVA's modality grouping. As in LLaVA, the two per-modality permutations come from
    torch's global generator and only the megabatch shuffle from ``generator``."""
    return _llava_modality_grouped(_as_lengths(lengths), batch_size, world_size, None, generator).tolist()


# -- random_steps and sorted_steps ------------------------------------------------------------------

def _modality_groups(lens: torch.Tensor, group_by_modality: bool) -> list[torch.Tensor]:
    if not group_by_modality:
        return [torch.arange(len(lens))]
    if (lens == 0).any():
        raise ValueError("a length of 0 has no modality (images are > 0, text-only < 0)")
    return [torch.nonzero(lens > 0).view(-1), torch.nonzero(lens < 0).view(-1)]


def _shuffle_steps(full: list[torch.Tensor], rest: list[torch.Tensor], batch_size: int, generator) -> torch.Tensor:
    """Full megabatches of all groups in random order, then each group's leftover whole batches,
    then the remainders together (at most one mixed batch)."""
    megabatches = torch.cat(full)
    megabatches = megabatches[torch.randperm(len(megabatches), generator=generator)]
    whole = [r[:len(r) // batch_size * batch_size] for r in rest]
    remainders = [r[len(r) // batch_size * batch_size:] for r in rest]
    return torch.cat([megabatches.reshape(-1), *whole, *remainders])


def _longest_first(rows: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
    """Each row of indices sorted by ``|length|``, longest first (stable)."""
    if rows.numel() == 0:
        return rows
    return rows.gather(1, torch.sort(lens[rows].abs(), dim=1, descending=True, stable=True).indices)


def _random_steps(lens: torch.Tensor, batch_size: int, world_size: int, generator,
                  group_by_modality: bool) -> torch.Tensor:
    size = world_size * batch_size
    full, rest = [], []
    for idx in _modality_groups(lens, group_by_modality):
        idx = idx[torch.randperm(len(idx), generator=generator)]  # the draw: a random permutation
        cut = len(idx) // size * size
        full.append(_longest_first(idx[:cut].view(-1, size), lens))  # sorted inside the step only
        rest.append(_longest_first(idx[cut:].view(1, -1), lens).view(-1))
    return _shuffle_steps(full, rest, batch_size, generator)


def _sorted_steps(lens: torch.Tensor, batch_size: int, world_size: int, generator,
              group_by_modality: bool, pool: int | None) -> torch.Tensor:
    size = world_size * batch_size
    full, rest = [], []
    for idx in _modality_groups(lens, group_by_modality):
        idx = idx[torch.randperm(len(idx), generator=generator)]  # random ties, random pools
        order = torch.sort(lens[idx].abs(), descending=True, stable=True).indices
        if pool is not None:  # pool k: positions k*pool*size.. of the permutation, longest first
            pool_of = (torch.arange(len(idx)) // (pool * size))[order]
            order = order[torch.sort(pool_of, stable=True).indices]
        idx = idx[order]
        cut = len(idx) // size * size
        full.append(_sort_and_split(idx[:cut].view(-1, size), lens.abs(), world_size).view(-1, size))
        rest.append(idx[cut:])
    return _shuffle_steps(full, rest, batch_size, generator)


class LengthGroupedSampler(Sampler[int]):
    """Every index once per epoch, grouped by length (and modality when asked).

    ``mode`` is one of ``MODES`` (see the module docstring). The order of an epoch comes from a generator
    seeded with ``seed + epoch`` (llava mode then equals LLaVA's functions after
    ``torch.manual_seed(seed + epoch)``). A ``generator`` passed in replaces that: every
    epoch draws on from it, as in LLaVA, and the caller keeps it identical on all ranks.
    It is stored privately so that accelerate does not swap in one of its own.
    ``pool``: sorted_steps mode sorts within pools of this many megabatches (None: all at once).
    """

    def __init__(self, batch_size: int, world_size: int, lengths=None, generator=None,
                 group_by_modality: bool = False, mode: str = "random_steps", seed: int = 0,
                 pool: int | None = None):
        if lengths is None:
            raise ValueError("LengthGroupedSampler needs the per-sample lengths")
        check_choice("training.length_grouping", mode)
        if batch_size < 1 or world_size < 1:
            raise ValueError(f"batch_size {batch_size} and world_size {world_size} must be >= 1")
        self.batch_size, self.world_size, self.mode = batch_size, world_size, mode
        self.lengths = _as_lengths(lengths)
        self.group_by_modality, self.seed, self.pool = group_by_modality, seed, pool
        self._generator = generator
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def order(self) -> torch.Tensor:
        """This epoch's global index order."""
        g = self._generator
        if g is None:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
        lens, bs, ws = self.lengths, self.batch_size, self.world_size
        if self.mode == "random_steps":
            return _random_steps(lens, bs, ws, g, self.group_by_modality)
        if self.mode == "sorted_steps":
            return _sorted_steps(lens, bs, ws, g, self.group_by_modality, self.pool)
        if self.group_by_modality:
            return _llava_modality_grouped(lens, bs, ws, g, g)
        return _llava_grouped(lens, bs, ws, g)

    def __iter__(self):
        return iter(self.order().tolist())
