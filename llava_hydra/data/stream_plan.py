"""Who reads what in a streamed epoch: pure arithmetic on sample counts, no I/O.

An epoch of N samples in shards, R ranks, W DataLoader workers per rank, micro-batch B:

1. The shards are put in a random order (seed, epoch); the epoch's sequence is their samples in
   that order. Rank r takes a contiguous piece of it, N // R samples plus one for the first N % R
   ranks: every sample is read by exactly one rank.
2. Every rank makes the same number of micro-batches, S = ceil(ceil(N / R) / B) (DDP needs equal
   steps). A rank with fewer samples fills its S batches with fewer samples each (full batches
   first, then smaller ones), so nothing is dropped. Only when a rank has fewer samples than S
   (B = 1 with N % R != 0, or a tiny N) does it repeat its own first samples to fill its last
   batches; ``padding`` says how many, and the stream logs it each epoch: DistributedSampler's
   rule, never a silent drop.
3. The rank's micro-batches go in groups of g (g = 1; g = gradient_accumulation_steps with length
   grouping, so one optimizer step's micro-batches come from one worker and may be sorted among
   themselves). Group j goes to worker j % W, and the DataLoader's round robin hands them back in
   order. Worker w reads a contiguous piece of its rank's samples, as many as its groups hold.
4. A worker's samples pass a shuffle buffer of K: its emission order is a function of (seed,
   epoch, rank, worker) and the sample positions alone, so it is computed before a byte is
   read, and a resumed run knows which samples were consumed (skipped without reading) and
   which were in the buffer (read again).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


def shard_order(n_shards: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch, 0x5A4D]).permutation(n_shards)


def rank_span(n: int, world: int, rank: int) -> tuple[int, int]:
    """(start, count) of rank's piece of an n-sample epoch sequence."""
    base, extra = divmod(n, world)
    return rank * base + min(rank, extra), base + (rank < extra)


def steps_per_rank(n: int, world: int, batch: int) -> int:
    return math.ceil(math.ceil(n / world) / batch)


def batch_sizes(count: int, steps: int, batch: int) -> list[int]:
    """Sizes of ``steps`` micro-batches holding ``count`` samples (count <= steps * batch): full
    ones first, then what is left, at least one sample each (count < steps: padded by the caller)."""
    count = max(count, steps)
    if count > steps * batch:
        raise ValueError(f"{count} samples do not fit {steps} batches of {batch}")
    spare = count - steps  # beyond one per batch
    out = []
    for _ in range(steps):
        take = min(batch - 1, spare)
        out.append(1 + take)
        spare -= take
    return out


def buffer_order(m: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """The order a shuffle buffer of k emits m items read in order 0..m-1: it fills with the first
    k, then each item read replaces a uniformly drawn one, which is emitted; the rest come out in
    a random order at the end. Every item is emitted once; each is read before it is emitted and
    at most k are held."""
    if k <= 1 or m <= 1:
        return np.arange(m)
    k = min(k, m)
    held = list(range(k))
    picks = rng.integers(0, k, size=m - k)
    out = np.empty(m, dtype=np.int64)
    for t, nxt in enumerate(range(k, m)):
        j = picks[t]
        out[t] = held[j]
        held[j] = nxt
    out[m - k:] = rng.permutation(np.asarray(held, dtype=np.int64))
    return out


@dataclass(frozen=True)
class WorkerPlan:
    """One worker's part of one epoch: rank-local sample range, its groups' micro-batch sizes."""

    start: int  # first rank-local sample index it reads
    count: int  # samples it reads (repeats of padding included)
    groups: list  # list of lists of micro-batch sizes, in the order it yields them
    group_ids: list  # each group's position j among the rank's groups


@dataclass(frozen=True)
class RankPlan:
    n: int
    world: int
    rank: int
    batch: int
    group: int
    start: int  # first epoch-sequence index of this rank
    count: int  # its real samples
    steps: int  # micro-batches
    sizes: list

    @property
    def padding(self) -> int:
        return max(0, self.steps - self.count)

    def worker(self, w: int, workers: int) -> WorkerPlan:
        groups = [self.sizes[j:j + self.group] for j in range(0, self.steps, self.group)]
        before = sum(sum(g) for j, g in enumerate(groups) if j % workers < w)
        mine = [(j, g) for j, g in enumerate(groups) if j % workers == w]
        return WorkerPlan(before, sum(sum(g) for _, g in mine), [g for _, g in mine], [j for j, _ in mine])

    def seq_index(self, local: int) -> int:
        """Epoch-sequence index of rank-local sample ``local`` (padding repeats the rank's first)."""
        return self.start + (local if local < self.count else (local - self.count) % self.count)


def rank_plan(n: int, world: int, rank: int, batch: int, group: int = 1) -> RankPlan:
    if n < 1:
        raise ValueError("a stream of no samples")
    start, count = rank_span(n, world, rank)
    if count == 0:
        raise ValueError(f"{n} samples cannot feed {world} ranks (rank {rank} would have none)")
    steps = steps_per_rank(n, world, batch)
    return RankPlan(n, world, rank, batch, max(1, group), start, count, steps, batch_sizes(count, steps, batch))


def consumed_groups(groups_done: int, worker_group_ids: list) -> int:
    """How many of a worker's groups are among the rank's first ``groups_done``."""
    return sum(1 for j in worker_group_ids if j < groups_done)


def locate(seq: int, counts_in_order: np.ndarray) -> tuple[int, int]:
    """(position in the epoch's shard order, offset in that shard) of epoch-sequence index seq."""
    ends = np.cumsum(counts_in_order)
    k = int(np.searchsorted(ends, seq, side="right"))
    return k, int(seq - (ends[k - 1] if k else 0))


def rank_batches(counts, seed: int, epoch: int, plan: RankPlan, workers: int, buffer: int, sort_key=None) -> list:
    """The rank's micro-batches of an epoch as sample ids (shard i's samples numbered after shards
    0..i-1's), in the order its DataLoader hands them out: what ShardStream yields, computed
    without reading (bench_sampler measures it). ``sort_key(id)``: sorted within each group."""
    counts = np.asarray(counts, dtype=np.int64)
    order = shard_order(len(counts), seed, epoch)
    first = np.concatenate([[0], np.cumsum(counts)[:-1]])  # id of each shard's first sample
    parts = []
    for w in range(workers):
        wp = plan.worker(w, workers)
        emit = buffer_order(wp.count, buffer, np.random.default_rng([seed, epoch, plan.rank, w, 0xB0F]))
        ids = []
        for loc in emit.tolist():
            k, off = locate(plan.seq_index(wp.start + loc), counts[order])
            ids.append(int(first[order[k]] + off))
        out, a = [], 0
        for sizes in wp.groups:
            group = ids[a:a + sum(sizes)]
            a += sum(sizes)
            if sort_key is not None:
                group.sort(key=sort_key)
            batches, b = [], 0
            for size in sizes:
                batches.append(group[b:b + size])
                b += size
            out.append(batches)
        parts.append(out)
    merged = []  # the DataLoader's round robin is over groups (one item each), flattened after
    for t in range(max(map(len, parts))):
        merged += [batch for p in parts if t < len(p) for batch in p[t]]
    return merged
