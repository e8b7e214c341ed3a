"""The streamed training dataset: webdataset shards (data.shards) read through fsspec, split across
ranks and DataLoader workers (data.stream_plan), shuffled in a buffer, encoded as the JSON path
encodes them, and handed out as collated micro-batches.

``ShardStream`` is an IterableDataset that yields *groups of collated micro-batches* (one group,
g micro-batches, per DataLoader item; the trainer's loader flattens them: train.stream_loader);
``len()`` is the rank's micro-batch count per epoch, the same on every rank. A sample is the JSON
path's sample of the same record: the record from ``<key>.json`` goes through the same
``LazySupervisedDataset.build`` (template, tokens, labels, truncation, image token runs) with its
images' bytes from the shard in place of the folder's files (``ShardImages``), so input_ids,
labels and pixel values are equal (tests/test_shards.py).

Exact resume: ``resume_at(k)`` starts the epoch after the rank's first k micro-batches. Each worker
computes which of its samples those consumed (its buffer's order is known before reading:
stream_plan.buffer_order) and reads only the others: shards holding no unconsumed sample of the
worker are not opened again.

Bad samples: a record refused by the checks raises (naming the shard, the sample's index in the
source file and its id) under ``data.on_bad_sample=raise``; under ``skip`` a good sample drawn
uniformly from the worker's shuffle buffer stands in (data.stream_stand_in; logged once, counted
by reason in ``report()``). ``data.shards`` conversion already
refused records with missing images or failed checks.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass, field
from types import SimpleNamespace

import numpy as np
import torch

from llava_hydra.data.images import ImageError, ImageSource
from llava_hydra.data.labels import NothingToTrain
from llava_hydra.data.records import BadSampleError
from llava_hydra.data.shards import join, read_index, read_shard
from llava_hydra.data.stream_stand_in import drawn, window
from llava_hydra.data.stream_plan import buffer_order, consumed_groups, locate, rank_plan, shard_order

log = logging.getLogger(__name__)


class ShardImage(io.BytesIO):
    """An image's bytes from a shard, where the image path expects a file (is_file, stat, str)."""

    def __init__(self, data: bytes, where: str):
        super().__init__(data)
        self.where = where

    def is_file(self) -> bool:
        return True

    def stat(self):
        return SimpleNamespace(st_size=len(self.getbuffer()))

    def __str__(self) -> str:
        return self.where


@dataclass(frozen=True)
class ShardImages(ImageSource):
    """The current sample's images by the names its record gives them (bytes from its shard)."""

    blobs: dict = field(default_factory=dict, hash=False, compare=False)
    shard: str = ""

    def path(self, name: str):
        if name not in self.blobs:
            raise ImageError(f"image {name!r} is not in {self.shard}", "missing_image")
        return ShardImage(self.blobs[name], f"{self.shard}:{name}")


class ShardStream(torch.utils.data.IterableDataset):
    def __init__(self, url: str, encoder, collate, batch_size: int, rank: int = 0, world: int = 1, seed: int = 0,
                 shuffle_buffer: int = 1000, group: int = 1, group_by_length: bool = False,
                 storage_options: dict | None = None, workers: int | None = None):
        self.url, self.storage_options = str(url), dict(storage_options or {})
        self.dataloader_workers = workers  # the DataLoader's num_workers: they split each rank's part (None: unsaid)
        self.index, self.data_digest = read_index(self.url, self.storage_options)
        self.data_path = self.url
        self.counts = np.array([s["samples"] for s in self.index["shards"]], dtype=np.int64)
        self.n = int(self.counts.sum())
        self.encoder, self.collate = encoder, collate
        self.encoder.images = ShardImages(self.encoder.images.folder, True, self.encoder.images.max_pixels,
                                          self.encoder.images.aspect, self.encoder.images.edge, {})
        self.seed, self.buffer, self.group_by_length = seed, shuffle_buffer, group_by_length
        self.plan = rank_plan(self.n, world, rank, batch_size, group if group_by_length else 1)
        self.epoch, self.start_step = 0, 0
        self.opened: list[str] = []  # shards this process opened (tests: what a resume re-reads)

    def __len__(self) -> int:
        return self.plan.steps

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def resume_at(self, micro_batches: int) -> None:
        """Start this epoch after the rank's first ``micro_batches`` (a whole number of groups)."""
        if micro_batches % self.plan.group:
            raise ValueError(f"resume at micro-batch {micro_batches}: not a whole step of {self.plan.group}")
        self.start_step = micro_batches

    def key(self) -> dict:
        """What decides every rank's samples per step; a resumed run must have the same."""
        return {"samples": self.n, "world": self.plan.world, "batch": self.plan.batch, "group": self.plan.group,
                "seed": self.seed, "shuffle_buffer": self.buffer, "index_sha256": self.data_digest,
                "workers": None if self.dataloader_workers is None else max(1, self.dataloader_workers)}

    # -- one worker ----------------------------------------------------------------------------

    def worker_part(self, w: int, workers: int):
        """(worker plan, its emission order of worker-local indices, groups already consumed)."""
        wp = self.plan.worker(w, workers)
        rng = np.random.default_rng([self.seed, self.epoch, self.plan.rank, w, 0xB0F])
        emit = buffer_order(wp.count, self.buffer, rng)
        done = consumed_groups(self.start_step // self.plan.group, wp.group_ids)
        return wp, emit, done

    def _read(self, wp, locals_in_order):
        """Yield (worker-local index, (shard url, key, record, blobs)) for these indices, in order,
        opening each shard once per run of consecutive indices in it."""
        order = shard_order(len(self.counts), self.seed, self.epoch)
        counts = self.counts[order]
        runs: list[tuple[int, dict]] = []  # (shard position, {offset: [locals]}): padding repeats one
        for loc in locals_in_order:
            k, off = locate(self.plan.seq_index(wp.start + int(loc)), counts)
            if not runs or runs[-1][0] != k:
                runs.append((k, {}))
            runs[-1][1].setdefault(off, []).append(int(loc))
        for k, wanted in runs:
            url = join(self.url, self.index["shards"][int(order[k])]["name"])
            self.opened.append(url)
            for off, key, record, blobs in read_shard(url, self.storage_options, wanted):
                for loc in wanted[off]:
                    yield loc, (url, key, record, blobs)

    def encode(self, item) -> dict:
        url, key, record, blobs = item
        enc = self.encoder
        enc.records, enc.data_path = {key: record}, url
        enc.images.blobs.clear()
        enc.images.blobs.update(blobs)
        object.__setattr__(enc.images, "shard", url)
        return {**enc.build(key), "index": key}  # the record's index in the source file (the collator drops it)

    def _sample(self, item, last_good, stand_ins=(), source: str = "the buffer"):
        """The item's sample; under skip, if it is bad, the first good one of ``stand_ins``
        (items, in draw order: data.stream_stand_in), else the previous good sample."""
        try:
            return self.encode(item)
        except (BadSampleError, NothingToTrain) as e:
            if self.encoder.on_bad_sample == "raise":
                if isinstance(e, NothingToTrain):
                    raise BadSampleError(f"{item[0]}: sample {item[1]}: nothing to train on: {e}") from None
                raise
            problem = e
        for other in stand_ins:
            try:
                sample = self.encode(other)
            except (BadSampleError, NothingToTrain) as e:
                self._skipped(other, e, "")
                continue
            self._skipped(item, problem, f"; stood in by sample {other[1]}, drawn from {source}")
            return sample
        if last_good is None:
            raise BadSampleError(f"{item[0]}: sample {item[1]}: {problem}; and no good sample read yet to stand in")
        self._skipped(item, problem, "; stood in by the previous good sample (none other in the buffer)")
        return last_good

    def _skipped(self, item, e, how: str) -> None:
        kind = "nothing_to_train" if isinstance(e, NothingToTrain) else "bad"
        self.encoder._skip(item[1], kind, f"{item[0]}: sample {item[1]}: {e}{how}", reason=getattr(e, "reason", kind))

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        w, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        if self.dataloader_workers is not None and max(1, self.dataloader_workers) != workers:
            raise RuntimeError(f"{self.url}: the stream was built for {self.dataloader_workers} DataLoader workers "
                               f"(its checkpoints' key says so) but is read by {workers}")
        # the DataLoader asks worker 0 first: after k groups, worker 0 plays the one whose group k is next
        w = (w + self.start_step // self.plan.group) % workers
        if self.plan.padding and w == 0 and self.start_step == 0:
            log.warning("epoch %d: rank %d repeats %d of its samples so that every rank makes %d micro-batches "
                        "(%d samples over %d ranks at batch %d)", self.epoch, self.plan.rank, self.plan.padding,
                        self.plan.steps, self.n, self.plan.world, self.plan.batch)
        wp, emit, done = self.worker_part(w, workers)
        skip = sum(sum(g) for g in wp.groups[:done])
        remaining = emit[skip:]
        reader = self._read(wp, np.sort(remaining))
        held, pos, last_good = {}, 0, None

        def fetch(p):  # a sample in the buffer (read on, within the buffer's reach, if not yet)
            while p not in held:
                loc, got = next(reader)
                held[loc] = got
            return held[p]

        def stand_ins(key, t):  # skip's stand-ins (data.stream_stand_in), worked out only for a bad sample
            for p in drawn(key, self.epoch, window(emit, t, self.buffer)):
                yield fetch(p)

        for sizes in wp.groups[done:]:
            samples = []
            for _ in range(sum(sizes)):
                want = int(remaining[pos])
                pos += 1
                while want not in held:
                    loc, item = next(reader)
                    held[loc] = item
                item = held.pop(want)
                last_good = self._sample(item, last_good, stand_ins(item[1], skip + pos - 1))
                samples.append(last_good)
            if self.group_by_length:  # inside the step: images first, longest first (LLaVA's modality split)
                samples.sort(key=lambda s: ("pixel_values" not in s, -len(s["input_ids"])))
            out, a = [], 0
            for size in sizes:
                out.append(self.collate(samples[a:a + size]))
                a += size
            yield out

    def report(self, all_ranks: bool = False) -> dict:
        summary = self.encoder.report(all_ranks)
        return {**summary, "samples": self.n}


def stream_dataset(cfg, tokenizer, image_processor, num_image_tokens, image_token_id, args, collate):
    """The ShardStream of ``data.stream`` under the spec's data.* and the run's ranks and batch."""
    from llava_hydra.data.dataset import LazySupervisedDataset

    s = cfg.data.stream
    if cfg.training.packing:
        raise ValueError("training.packing with data.stream: packed rows come from "
                         "llava_hydra.sampling.packed_stream.packed_stream_dataset (the runner calls it); "
                         "(data.stream.group_by_length sorts each step's micro-batches by length instead)")
    encoder = LazySupervisedDataset(
        s.shards, tokenizer, image_processor, template=cfg.data.template, image_folder=None,
        image_aspect_ratio=cfg.data.image_aspect_ratio, model_max_length=cfg.model.model_max_length,
        image_token_id=image_token_id, num_image_tokens=num_image_tokens, on_bad_sample=cfg.data.on_bad_sample,
        cache_dir=cfg.paths.cache_dir, max_image_pixels=cfg.data.max_image_pixels, records={})
    from omegaconf import OmegaConf

    seed = args.data_seed if args.data_seed is not None else args.seed
    return ShardStream(s.shards, encoder, collate, args.per_device_train_batch_size, args.process_index,
                       args.world_size, seed, s.shuffle_buffer, args.gradient_accumulation_steps,
                       s.group_by_length or cfg.training.group_by_modality_length,
                       OmegaConf.to_container(s.storage_options, resolve=True), args.dataloader_num_workers)
