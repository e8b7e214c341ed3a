"""Which samples share a packed row in a streamed epoch (``training.packing`` with
``data.stream.shards``): pure arithmetic on the samples' lengths, no I/O.

The lengths come from the shards' ``records.jsonl`` (the LLaVA records, text only, written
beside the tars by ``data.shards``) through the same cached length pass as the JSON path, so
the whole epoch's rows are known before a byte of a tar is read. Given them, an epoch is:

1. the epoch's sequence (``stream_plan``: shards in a seeded order); rank r takes a contiguous
   share of it (N // R samples, one more for the first N % R ranks), its DataLoader worker w a
   contiguous share of that;
2. the worker's shuffle buffer (``stream_plan.buffer_order``, K samples) gives its *draw*: the
   order samples leave the buffer. That draw takes the place of the map-style path's random
   permutation: each modality's draw is cut into consecutive runs, one per step of
   ``gradient_accumulation_steps x batch`` rows, each run as long as the step's token budget
   allows and packed best-fit decreasing into that step's rows (``packing_rows._pack_runs``:
   the same rule, fill and row count rule as map-style packing; image and text-only samples
   never share a row, a sample is never split);
3. a step goes out as soon as its last sample has left the buffer (steps ordered by that
   moment): a worker holds its buffer plus the runs under way, never its whole share;
4. every rank makes the same number of micro-batches every epoch of the run (DDP needs equal
   steps; the Trainer counts them once): ``S`` is the most any rank needs in any epoch of the
   run, a whole number of steps per worker; a worker with fewer tokens spreads its samples over
   more, thinner rows (never drops or repeats one). Its micro-batches hold ``batch`` rows,
   the last ones fewer (full ones first). Too few samples for ``S`` micro-batches is an error.

A worker's groups (one optimizer step's micro-batches each) leave through the DataLoader's
round robin over the workers (an exhausted worker is passed over): ``merged_workers`` says which
worker hands out each group, so a resumed run knows every worker's consumed groups and thus its
consumed samples (the rows of those groups) from the micro-batch count alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from llava_hydra.data.stream_plan import buffer_order, rank_span, shard_order
from llava_hydra.sampling.packing_rows import FILL, _pack_runs, _sizes, pack_rows


def epoch_sequence(counts, seed: int, epoch: int) -> np.ndarray:
    """Sample ids (shard i's samples numbered after shards 0..i-1's) in the epoch's order."""
    counts = np.asarray(counts, dtype=np.int64)
    first = np.concatenate([[0], np.cumsum(counts)[:-1]])
    order = shard_order(len(counts), seed, epoch)
    return np.concatenate([np.arange(first[s], first[s] + counts[s]) for s in order])


def buffer_rng(seed: int, epoch: int, rank: int, worker: int) -> np.random.Generator:
    return np.random.default_rng([seed, epoch, rank, worker, 0xB0F])  # stream.ShardStream's, unpacked


@dataclass(frozen=True)
class WorkerRows:
    """One worker's packed epoch: its samples in read order, the order they leave the buffer, and
    its groups (each a list of micro-batches, each a list of rows of sample ids)."""

    seq_start: int  # epoch-sequence position of its first sample
    ids: list  # its sample ids in read (sequence) order
    emit: list  # positions into ``ids`` in the order the buffer emits them
    groups: list


@dataclass
class PackedStreamPlan:
    lengths: list  # signed modality length of every sample id (negative: text-only)
    counts: list  # samples per shard, in the index's order
    world: int
    batch: int  # rows per micro-batch
    group: int  # micro-batches per optimizer step (gradient accumulation)
    workers: int
    buffer: int
    capacity: int
    seed: int = 0
    fill: float = FILL
    epochs: int = 1  # the run's epochs: the micro-batch count fits all of them

    def __post_init__(self):
        self.workers = max(1, self.workers)
        self.per_step = self.batch * self.group
        self.n = int(np.sum(self.counts))
        if len(self.lengths) != self.n:
            raise ValueError(f"{len(self.lengths)} lengths for {self.n} samples")
        self.sizes = _sizes(self.lengths, self.capacity)[1].tolist()
        self._natural: dict[int, list] = {}
        self._needed: dict[tuple, list] = {}
        need = max(max(self.natural(e)) for e in range(max(1, self.epochs)))
        self.steps = need * self.group  # micro-batches of every rank, every epoch

    # -- counts --------------------------------------------------------------------------------

    def worker_ids(self, epoch: int, rank: int, w: int) -> tuple[int, np.ndarray]:
        seq = epoch_sequence(self.counts, self.seed, epoch)
        start, count = rank_span(self.n, self.world, rank)
        if count == 0:
            raise ValueError(f"{self.n} samples cannot feed {self.world} ranks (rank {rank} would have none)")
        ws, wc = rank_span(count, self.workers, w)
        return start + ws, seq[start + ws:start + ws + wc]

    def rows_needed(self, epoch: int, rank: int, w: int) -> list[int]:
        """Rows per modality (image first) of a worker's samples by map-style packing's count rule
        (``pack_rows``: tokens / (fill x capacity), at least best-fit decreasing's, at most one a sample)."""
        if (epoch, rank, w) not in self._needed:
            ids = self.worker_ids(epoch, rank, w)[1]
            self._needed[epoch, rank, w] = [] if len(ids) == 0 else pack_rows(
                [self.lengths[i] for i in ids.tolist()], self.capacity, self.seed, self.fill)[1]
        return self._needed[epoch, rank, w]

    def natural(self, epoch: int) -> list[int]:
        """Optimizer steps (groups) each rank needs in ``epoch``: per worker, its rows in whole steps."""
        if epoch not in self._natural:
            self._natural[epoch] = [sum(math.ceil(sum(self.rows_needed(epoch, rank, w)) / self.per_step)
                                        for w in range(self.workers)) for rank in range(self.world)]
        return self._natural[epoch]

    def worker_steps(self, epoch: int, rank: int) -> list[int]:
        """Groups per worker of ``rank``: its own need, the rank's shortfall to ``steps`` dealt one
        at a time to the worker with the most samples per group (a group needs one sample a row
        at least: a micro-batch of one row)."""
        parts = [self.worker_ids(epoch, rank, w)[1] for w in range(self.workers)]
        own = [math.ceil(sum(self.rows_needed(epoch, rank, w)) / self.per_step) for w in range(self.workers)]
        total = self.steps // self.group
        if sum(own) > total:
            raise ValueError(f"packed stream: rank {rank} needs {sum(own)} steps in epoch {epoch}, the run planned "
                             f"{total} (epochs beyond the planned {self.epochs}?)")
        for _ in range(total - sum(own)):
            w = max(range(self.workers), key=lambda w: (len(parts[w]) / max(own[w], 1e-9), -w))
            own[w] += 1
        for w, part in enumerate(parts):
            if len(part) < own[w] * self.group:
                raise ValueError(f"packed stream: rank {rank} worker {w} has {len(part)} samples for {own[w] * self.group} "
                                 f"micro-batches (every rank makes {self.steps}); use fewer ranks, DataLoader workers "
                                 f"or gradient accumulation steps, or more data")
        return own

    # -- one worker ------------------------------------------------------------------------------

    def worker(self, epoch: int, rank: int, w: int) -> WorkerRows:
        seq_start, ids = self.worker_ids(epoch, rank, w)
        groups = self.worker_steps(epoch, rank)[w]
        emit = buffer_order(len(ids), self.buffer, buffer_rng(self.seed, epoch, rank, w))
        if len(ids) == 0:
            return WorkerRows(seq_start, [], [], [])
        ids_l = ids.tolist()
        micro = groups * self.group
        counts = list(self.rows_needed(epoch, rank, w))
        rows_total = max(sum(counts), micro)
        mods = [m for m in (1, -1) if any((self.lengths[i] > 0) == (m > 0) for i in ids_l)]
        n_mod = [sum(1 for i in ids_l if (self.lengths[i] > 0) == (m > 0)) for m in mods]
        extra = rows_total - sum(counts)
        for j in range(len(counts)):  # thinner rows where the rank has fewer tokens than steps
            add = min(extra, n_mod[j] - counts[j])
            counts[j] += add
            extra -= add
        when = {pos: t for t, pos in enumerate(emit.tolist())}  # position in ids -> time it leaves
        g = torch.Generator().manual_seed(int(np.random.default_rng([self.seed, epoch, rank, w, 0xAC]).integers(2**62)))
        steps = []  # (time its last sample leaves the buffer, rows)
        for m, count in zip(mods, counts, strict=True):
            drawn = [p for p in emit.tolist() if (self.lengths[ids_l[p]] > 0) == (m > 0)]
            ks = [self.per_step] * (count // self.per_step) + ([count % self.per_step] if count % self.per_step else [])
            for rows in _pack_runs(drawn, {p: self.sizes[ids_l[p]] for p in drawn}, self.capacity, ks, g):
                steps.append((max(when[p] for r in rows for p in r), len(steps), rows))
        rows = [r for _, _, step in sorted(steps) for r in step]
        sizes = row_sizes(len(rows), micro, self.batch)
        batches, a = [], 0
        for size in sizes:
            batches.append([[ids_l[p] for p in r] for r in rows[a:a + size]])
            a += size
        return WorkerRows(seq_start, ids_l, emit.tolist(),
                          [batches[j:j + self.group] for j in range(0, micro, self.group)])

    def rank(self, epoch: int, rank: int) -> list[WorkerRows]:
        return [self.worker(epoch, rank, w) for w in range(self.workers)]


def row_sizes(rows: int, micro: int, batch: int) -> list[int]:
    """Rows of each of ``micro`` micro-batches: full ones first, at least one row each."""
    if not micro <= rows <= micro * batch:
        raise ValueError(f"{rows} rows do not fill {micro} micro-batches of at most {batch}")
    spare, out = rows - micro, []
    for _ in range(micro):
        take = min(batch - 1, spare)
        out.append(1 + take)
        spare -= take
    return out


def merged_workers(group_counts: list[int]) -> list[int]:
    """Which worker hands out each of the rank's groups, in the DataLoader's order (round robin,
    an exhausted worker passed over)."""
    return [w for t in range(max(group_counts, default=0)) for w, c in enumerate(group_counts) if t < c]


def rank_rows(plan: PackedStreamPlan, epoch: int, rank: int) -> list[list[list[int]]]:
    """The rank's micro-batches of an epoch as rows of sample ids, in the order its DataLoader
    hands them out: what the packed stream yields, computed without reading."""
    parts = plan.rank(epoch, rank)
    taken = [0] * len(parts)
    out = []
    for w in merged_workers([len(p.groups) for p in parts]):
        out += parts[w].groups[taken[w]]
        taken[w] += 1
    return out
