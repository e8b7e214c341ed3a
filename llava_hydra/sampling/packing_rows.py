"""Which samples share a packed row, and the order rows are visited in (``training.packing``).

Owns the bin packing (``pack_lengths``: best-fit decreasing over a whole modality), the fixed
number of rows of an epoch (``pack_rows``) and one epoch of packed *steps* (``packed_epoch``),
what ``PackedSampler`` yields. Lengths are the dataset's ``modality_lengths``: positive for
samples with an image, negative for text-only; a length above the capacity counts as the
capacity (the dataset truncates at ``model_max_length``). Image and text-only samples never
share a row.

A step is ``world_size * batch_size`` rows (``world_size``: ranks x gradient accumulation
steps). An epoch of one modality:

1. the draw: a random permutation of its samples (``seed + epoch``), as LLaVA's;
2. the permutation is cut into consecutive runs, one per step: a run is as long as the step's
   share of the remaining tokens (remaining tokens x rows of the step / remaining rows, times
   ``AHEAD`` so that steps that can take more do, and the schedule stays ahead), then cut back
   from its end (a binary search) until best-fit decreasing packs it into the step's rows.
   A step's samples are thus a contiguous run of a random permutation -- a random draw of the
   modality, as an unpacked step's -- whose size is set by a token budget; what does not fit is
   not set aside by length but simply starts the next step's run;
3. if the last step's run does not fit its rows, the runs of the last 2, 4, ... steps are packed
   together into their rows (rows then shuffled among those steps); at worst the whole modality,
   which fits by construction of ``pack_rows``;
4. every step's rows are sorted by real tokens and dealt greedily to the ranks (LLaVA's deal);
   full steps of both modalities are shuffled together, the partial ones go last.

The number of rows per modality is fixed, so the Trainer's step count holds every epoch:
``pack_rows`` counts tokens / (``fill`` x capacity), at least what best-fit decreasing needs for
the whole modality, at most one row per sample; ``step_counts`` (what ``PackedSampler`` uses)
adds rows where a trial epoch, every step taking as long a run as it packs, needs more (1%
slack): ``fill`` above what packing a step reaches (few rows a step, long samples) then costs
efficiency, not a pile-up of samples at the end of the epoch.
"""

from __future__ import annotations

import bisect
import heapq
import math

import torch

from llava_hydra.config.validate import check_range

FILL = 0.86  # default target fill of a row (real tokens / capacity)
AHEAD = 1.25  # a run's token budget over its share of what is left: steps that can take more do


def _best_fit_decreasing(order: list[int], sizes, capacity: int, max_bins: int | None = None):
    """Pack ``order`` (indices, longest first) into bins of ``capacity``: each item goes to the
    fullest bin it still fits in (the most recently filled one on ties), else a new bin.
    ``None`` as soon as more than ``max_bins`` bins would be needed."""
    bins: list[list[int]] = []
    by_room: dict[int, list[int]] = {}  # free room -> bins with that much room (a stack)
    rooms: list[int] = []  # sorted free-room values that have bins
    for i in order:
        size = sizes[i]
        k = bisect.bisect_left(rooms, size)
        if k < len(rooms):
            room = rooms[k]
            stack = by_room[room]
            b = stack.pop()
            if not stack:
                del by_room[room]
                rooms.pop(k)
            bins[b].append(i)
            room -= size
        else:
            if max_bins is not None and len(bins) == max_bins:
                return None
            b = len(bins)
            bins.append([i])
            room = capacity - size
        if room > 0:
            if room not in by_room:
                by_room[room] = []
                bisect.insort(rooms, room)
            by_room[room].append(b)
    return bins


def _groups(lens: torch.Tensor, group_by_modality: bool) -> list[torch.Tensor]:
    if not group_by_modality:
        return [torch.arange(len(lens))]
    if (lens == 0).any():
        raise ValueError("a length of 0 has no modality (images are > 0, text-only < 0)")
    return [g for g in (torch.nonzero(lens > 0).view(-1), torch.nonzero(lens < 0).view(-1)) if len(g)]


def _sizes(lengths, capacity: int) -> tuple[torch.Tensor, torch.Tensor]:
    if capacity < 1:
        raise ValueError(f"packing capacity must be >= 1, got {capacity}")
    lens = torch.as_tensor(lengths, dtype=torch.int64)
    return lens, lens.abs().clamp(max=capacity)


def pack_lengths(lengths, capacity: int, seed: int = 0, group_by_modality: bool = True) -> list[list[int]]:
    """Bins of sample indices by best-fit decreasing over each whole modality, each bin's total
    ``|length|`` at most ``capacity``; image bins first. Deterministic for a given ``seed``; a
    different seed changes which of the equal-length samples share a bin, not the bins' sizes."""
    lens, sizes_t = _sizes(lengths, capacity)
    perm = torch.randperm(len(lens), generator=torch.Generator().manual_seed(seed))
    rank = torch.empty_like(perm)
    rank[perm] = torch.arange(len(perm))  # a sample's place in the random permutation
    sizes = sizes_t.tolist()
    bins: list[list[int]] = []
    for idx in _groups(lens, group_by_modality):
        idx = idx[torch.sort(rank[idx]).indices]  # random order within the modality ...
        idx = idx[torch.sort(sizes_t[idx], descending=True, stable=True).indices]  # ... longest first
        bins += _best_fit_decreasing(idx.tolist(), sizes, capacity)
    return bins


def bin_lengths(sample_lengths, bins, capacity: int) -> list[int]:
    """Real tokens per bin, signed as the bin's modality (negative: text-only)."""
    return [(1 if sample_lengths[b[0]] > 0 else -1) * sum(min(abs(sample_lengths[i]), capacity) for i in b)
            for b in bins]


def padding_stats(bin_lengths, batch_size: int) -> dict:
    """Pad tokens when consecutive bins form batches of ``batch_size`` rows, each padded to its
    longest row."""
    t = torch.as_tensor(bin_lengths, dtype=torch.int64).abs()
    full = len(t) // batch_size * batch_size
    rows = t[:full].view(-1, batch_size)
    padded = rows.max(dim=1).values.sum().item() * batch_size
    real = rows.sum().item()
    return {"pad_waste": 1 - real / padded if padded else 0.0, "real_tokens": real, "padded_tokens": padded}


def _split_to(bins: list[list[int]], k: int) -> list[list[int]]:
    """Exactly ``k`` bins: while fewer, the bin with most samples gives its last (shortest) one a
    bin of its own. Needs at least ``k`` samples."""
    if len(bins) >= k:
        return bins
    heap = [(-len(b), j) for j, b in enumerate(bins) if len(b) > 1]
    heapq.heapify(heap)
    while len(bins) < k:
        _, j = heapq.heappop(heap)
        bins.append([bins[j].pop()])
        if len(bins[j]) > 1:
            heapq.heappush(heap, (-len(bins[j]), j))
    return bins


def _fit(items: list[int], sizes, capacity: int, k: int):
    """``items`` in ``k`` bins (best-fit decreasing, then split to exactly ``k``), or None."""
    order = sorted(items, key=lambda i: -sizes[i])  # stable: equal lengths keep the draw's order
    bins = _best_fit_decreasing(order, sizes, capacity, max_bins=k)
    return None if bins is None else _split_to(bins, k)


def pack_rows(lengths, capacity: int, seed: int = 0, fill: float = FILL,
              group_by_modality: bool = True) -> tuple[list[list[int]], list[int]]:
    """The rows of every epoch, counted: per modality (image first; one group without modality
    grouping) ``ceil(tokens / (fill x capacity))`` rows, at least best-fit decreasing's count for
    the whole modality, at most one per sample. Returns those rows as best-fit decreasing over
    the whole modality makes them (``pack_lengths``, split up to the count: the epoch-free rows,
    for inspection) and the counts."""
    check_range("training.packing_fill", fill)
    lens, sizes_t = _sizes(lengths, capacity)
    bins, counts = [], []
    for idx in _groups(lens, group_by_modality):
        sub = pack_lengths(lens[idx].tolist(), capacity, seed, group_by_modality=False)
        count = min(len(idx), max(len(sub), math.ceil(sizes_t[idx].sum().item() / (fill * capacity))))
        bins += [[int(idx[i]) for i in b] for b in _split_to(sub, count)]
        counts.append(count)
    return bins, counts


def _longest_run(drawn: list[int], start: int, end: int, sizes, capacity: int, k: int) -> int:
    """End of (about) the longest run ``drawn[start:e]``, ``e <= end``, that best-fit decreasing
    packs into ``k`` rows: ``end`` if it fits, else a binary search (``k`` samples always fit)."""
    lo = min(start + k, end)

    def fits(e):
        order = sorted(drawn[start:e], key=lambda i: -sizes[i])
        return _best_fit_decreasing(order, sizes, capacity, max_bins=k) is not None

    if fits(end):
        return end
    hi = end
    while hi - lo > 1:  # fits(lo), not fits(hi)
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


def step_counts(lengths, capacity: int, per_step: int, seed: int, counts: list[int],
                group_by_modality: bool = True, slack: float = 0.01) -> list[int]:
    """Rows per modality for steps of ``per_step`` rows: at least ``counts`` (``pack_rows``'), and
    ``slack`` more than a trial epoch (the draw of ``seed``) needs when every step takes as long a
    run of the draw as packs into its rows -- so that the epochs' token budgets are reachable and
    runs are rarely cut back (``fill`` may be above what packing a step reaches: fewer rows a
    step, longer samples)."""
    lens, sizes_t = _sizes(lengths, capacity)
    sizes = sizes_t.tolist()
    g = torch.Generator().manual_seed(seed)
    out = []
    for idx, count in zip(_groups(lens, group_by_modality), counts, strict=True):
        drawn = idx[torch.randperm(len(idx), generator=g)].tolist()
        cum = [0]
        for i in drawn:
            cum.append(cum[-1] + sizes[i])
        start, needed = 0, 0
        while start < len(drawn):
            most = max(min(start + per_step, len(drawn)),
                       bisect.bisect_right(cum, cum[start] + per_step * capacity) - 1)
            end = _longest_run(drawn, start, most, sizes, capacity, per_step)
            if end == len(drawn):
                needed += len(_best_fit_decreasing(sorted(drawn[start:], key=lambda i: -sizes[i]), sizes, capacity))
            else:
                needed += per_step
            start = end
        out.append(min(len(idx), max(count, math.ceil(needed * (1 + slack)))))
    return out


def _pack_runs(idx: list[int], sizes, capacity: int, ks: list[int], generator) -> list[list[list[int]]]:
    """One modality's drawn samples ``idx`` (in draw order) cut into consecutive runs, run g packed
    into exactly ``ks[g]`` rows (module docstring, steps 2-3)."""
    n, rows_left = len(idx), sum(ks)
    cum = [0]
    for i in idx:
        cum.append(cum[-1] + sizes[i])
    steps: list[list[list[int]]] = []
    starts: list[int] = []
    start = 0
    for k in ks:
        rows_after = rows_left - k
        if rows_after == 0:
            end = n
        else:
            share = (cum[n] - cum[start]) * k / rows_left * AHEAD  # a little ahead of the schedule
            target = cum[start] + min(share, k * capacity)
            end = min(max(bisect.bisect_right(cum, target) - 1, start + k), n - rows_after)
        if rows_after:  # cut the run back from its end until it fits
            end = _longest_run(idx, start, end, sizes, capacity, k)
        rows = _fit(idx[start:end], sizes, capacity, k)
        starts.append(start)
        if rows is None:  # the last run does not fit: pack the last 2, 4, ... runs together
            back = 2
            while rows is None:
                if back > 2 * len(ks):
                    raise ValueError(f"packing: {n} samples do not fit in {sum(ks)} rows of {capacity}")
                first = max(0, len(ks) - back)
                together = sum(ks[first:])
                rows = _fit(idx[starts[first]:], sizes, capacity, together)
                back *= 2
            rows = [rows[j] for j in torch.randperm(len(rows), generator=generator).tolist()]
            del steps[first:]
            for k_ in ks[first:]:
                steps.append(rows[:k_])
                rows = rows[k_:]
            return steps
        steps.append(rows)
        start, rows_left = end, rows_after
    return steps


def packed_epoch(sample_lengths, capacity: int, batch_size: int, world_size: int, seed: int,
                 group_by_modality: bool = True, fill: float = FILL,
                 counts: list[int] | None = None) -> tuple[list[list[int]], torch.Tensor]:
    """One epoch: the rows (lists of sample indices) and the global order to visit them in (the
    module docstring). ``counts``: ``pack_rows``' counts, if already known (they cost a
    best-fit-decreasing pass over the data)."""
    from llava_hydra.sampling.sampler import _longest_first, _shuffle_steps, _sort_and_split

    lens, sizes_t = _sizes(sample_lengths, capacity)
    if counts is None:
        counts = pack_rows(sample_lengths, capacity, seed, fill, group_by_modality)[1]
    sizes = sizes_t.tolist()
    g = torch.Generator().manual_seed(seed)
    per_step = batch_size * world_size
    bins: list[list[int]] = []
    full, rest = [], []
    for idx, count in zip(_groups(lens, group_by_modality), counts, strict=True):
        drawn = idx[torch.randperm(len(idx), generator=g)].tolist()
        ks = [per_step] * (count // per_step) + ([count % per_step] if count % per_step else [])
        first = len(bins)
        for rows in _pack_runs(drawn, sizes, capacity, ks, g):
            bins += rows
        ids = torch.arange(first, len(bins))
        cut = count // per_step * per_step
        full.append(ids[:cut].view(-1, per_step))
        rest.append(ids[cut:])
    row_lens = torch.tensor([sum(sizes[i] for i in b) for b in bins], dtype=torch.int64)
    full = [_sort_and_split(f, row_lens, world_size).view(-1, per_step) for f in full]
    rest = [_longest_first(r.view(1, -1), row_lens).view(-1) for r in rest]
    return bins, _shuffle_steps(full, rest, batch_size, g)
