"""``training.packing=true`` with ``data.stream.shards``: the shard stream's samples packed into
rows inside each worker's shuffle buffer (which samples share a row: sampling.stream_packing).

``PackedShardStream`` is a ``data.stream.ShardStream`` whose DataLoader items are groups of
collated *packed* micro-batches: each row is ``packing.pack_samples`` of its samples (ids and
labels concatenated, positions restarting per sample, each sample's first label ignored, images
in order) and a micro-batch is ``packing.PackedCollator`` of its rows, exactly as map-style
packing makes them. ``len()`` is the rank's micro-batch count, the same on every rank and in
every epoch of the run.

Position: a checkpoint still records the micro-batches trained in the epoch. The rows of the
whole epoch are a function of (seed, epoch, ranks, workers, buffer, lengths) fixed before reading,
so k micro-batches name the groups each worker handed out (the DataLoader's round robin), hence
the samples they held; the buffer's contents and runs under way at that moment are simply the
samples of the groups not yet handed out, read again on resume. The key (``key()``) adds what
decides the rows: DataLoader workers, capacity, fill and the lengths' digest.

A bad sample met while reading (``data.on_bad_sample=skip``) is replaced by a good sample of its
own group (the optimizer step's draw on this worker), drawn uniformly by ``stand_in.draw`` of
(its index, epoch, attempt): the group is read whole or not at all, so a resumed run draws as
the uninterrupted one did.
"""

from __future__ import annotations

import hashlib
import logging
from types import SimpleNamespace

import numpy as np
import torch

from llava_hydra.data.shards import read_records
from llava_hydra.data.stream import ShardStream
from llava_hydra.data.stream_stand_in import drawn
from llava_hydra.sampling.packing import PackedCollator, pack_samples
from llava_hydra.sampling.packing_rows import FILL
from llava_hydra.sampling.stream_packing import PackedStreamPlan, merged_workers

log = logging.getLogger(__name__)


class PackedShardStream(ShardStream):
    """Packed rows of a shard stream (the module docstring); ``row["index"]``: its samples' keys."""

    def __init__(self, url, encoder, collate, lengths, batch_size: int, rank: int = 0, world: int = 1, seed: int = 0,
                 shuffle_buffer: int = 1000, group: int = 1, workers: int = 0, capacity: int = 2048,
                 fill: float = FILL, epochs: int = 1, storage_options: dict | None = None):
        super().__init__(url, encoder, collate, batch_size, rank, world, seed, shuffle_buffer, group, False,
                         storage_options, workers)
        self.packed = PackedStreamPlan(list(lengths), self.counts.tolist(), world, batch_size, max(1, group),
                                       max(1, workers), shuffle_buffer, capacity, seed, fill, epochs)
        self.lengths_digest = hashlib.sha256(np.asarray(lengths, dtype=np.int64).tobytes()).hexdigest()

    def __len__(self) -> int:
        return self.packed.steps

    def resume_at(self, micro_batches: int) -> None:
        if micro_batches % self.packed.group:
            raise ValueError(f"resume at micro-batch {micro_batches}: not a whole step of {self.packed.group}")
        self.start_step = micro_batches

    def key(self) -> dict:
        p = self.packed
        return {**super().key(), "packing": {"capacity": p.capacity,
                                             "fill": p.fill, "lengths_sha256": self.lengths_digest}}

    @staticmethod
    def row(samples: list[dict]) -> dict:
        """``pack_samples`` of a row's samples, with their keys (the records' indices in the source file)."""
        return {**pack_samples(samples), "index": torch.tensor([s["index"] for s in samples])}

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        slot, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        if workers != self.packed.workers:
            raise ValueError(f"packed stream planned for {self.packed.workers} DataLoader workers, run with {workers}")
        rank, epoch = self.plan.rank, self.epoch
        merged = merged_workers(self.packed.worker_steps(epoch, rank))
        done = self.start_step // self.packed.group
        # a new DataLoader asks worker slot 0 first: slot s plays worker (s + the next group's worker) % W
        w = (slot + (merged[done] if done < len(merged) else 0)) % workers
        mine = self.packed.worker(epoch, rank, w)
        groups = mine.groups[merged[:done].count(w):]
        where = {i: p for p, i in enumerate(mine.ids)}  # sample id -> position in the worker's share
        wanted = sorted({where[i] for g in groups for batch in g for row in batch for i in row})
        reader = self._read(SimpleNamespace(start=mine.seq_start - self.plan.start), np.asarray(wanted, dtype=np.int64))
        held, last_good = {}, None

        def stand_ins(i, ids):  # skip's stand-ins: the group's other samples (worked out only for a bad one)
            yield from drawn(held[where[i]][1], epoch, [held[where[j]] for j in dict.fromkeys(ids) if j != i])

        for group in groups:
            ids = [i for batch in group for row in batch for i in row]
            for i in ids:
                while where[i] not in held:
                    loc, item = next(reader)
                    held[loc] = item
            built = {}
            for i in ids:
                if i not in built:
                    built[i] = last_good = self._sample(held[where[i]], last_good, stand_ins(i, ids), "its group")
            yield [self.collate([self.row([built[i] for i in row]) for row in batch]) for batch in group]
            for i in ids:
                held.pop(where[i], None)


def packed_stream_dataset(cfg, tokenizer, image_processor, num_image_tokens, image_token_id, args,
                          attn_implementation: str = "sdpa"):
    """(PackedShardStream, its collator) of ``data.stream`` under the spec and the run's ranks."""
    from omegaconf import OmegaConf

    from llava_hydra.data.dataset import LazySupervisedDataset
    from llava_hydra.data.shards import SIZES, join, read_image_sizes, read_index
    from llava_hydra.data.store_sizes import given_sizes

    s = cfg.data.stream
    options = OmegaConf.to_container(s.storage_options, resolve=True)
    index, _ = read_index(s.shards, options)
    name, records = read_records(s.shards, options, index)

    def dataset(recs):
        return LazySupervisedDataset(
            join(s.shards, name), tokenizer, image_processor, template=cfg.data.template, image_folder=None,
            image_aspect_ratio=cfg.data.image_aspect_ratio, model_max_length=cfg.model.model_max_length,
            image_token_id=image_token_id, num_image_tokens=num_image_tokens, on_bad_sample=cfg.data.on_bad_sample,
            cache_dir=cfg.paths.cache_dir, max_image_pixels=cfg.data.max_image_pixels, records=recs)

    lengths_of = dataset(records)  # the JSON path's cached length pass, over the shards' records.jsonl
    lengths_of.data_digest = index["records"]["sha256"]
    if lengths_of.anyres:  # image runs by size: the sizes kept at conversion (no image file is opened)
        lengths_of.sizes_given = given_sizes(read_image_sizes(s.shards, options, index), join(s.shards, SIZES))
    with args.main_process_first(local=False, desc="length pass"):
        lengths = lengths_of.modality_lengths
    seed = args.data_seed if args.data_seed is not None else args.seed
    group = args.gradient_accumulation_steps
    epochs = planned_epochs(args, lambda e: PackedStreamPlan(lengths, [x["samples"] for x in index["shards"]],
                                                             args.world_size, args.per_device_train_batch_size,
                                                             group, max(1, args.dataloader_num_workers),
                                                             s.shuffle_buffer, cfg.model.model_max_length, seed,
                                                             cfg.training.packing_fill, e).steps)
    collator = PackedCollator(tokenizer.pad_token_id, attn_implementation)
    stream = PackedShardStream(s.shards, dataset({}), collator, lengths, args.per_device_train_batch_size,
                               args.process_index, args.world_size, seed, s.shuffle_buffer, group,
                               args.dataloader_num_workers, cfg.model.model_max_length, cfg.training.packing_fill,
                               epochs, options)
    return stream, collator


def planned_epochs(args, steps_for) -> int:
    """The epochs the run will make (its micro-batch count must fit every one of them)."""
    import math

    if args.max_steps is None or args.max_steps <= 0:
        return max(1, math.ceil(args.num_train_epochs))
    first = steps_for(1)  # epoch 0 alone
    per_epoch = max(1, first // args.gradient_accumulation_steps)
    return max(1, math.ceil(args.max_steps / per_epoch))
