"""Sequence packing (``training.packing=true``): several samples per sequence, each attending
only to itself.

Samples (image tokens included) are bin-packed into sequences of at most ``model_max_length``
tokens. A packed row carries ``position_ids`` that restart at 0 for every sample and *no*
``attention_mask``: transformers' masking utilities then find the sample boundaries from the
restarting positions (``masking_utils.find_packed_sequence_indices``) and build a
block-diagonal causal mask for sdpa/eager -- but only without a cache object, so the batch
carries ``use_cache=False`` -- and flash-attention 2 turns the same positions into varlen
``cu_seqlens`` -- but only for a batch of one row, so for it the collator concatenates the
batch's rows into one. ``PackedCollator(explicit_mask=True)`` builds that block-diagonal mask
itself as a 4D additive mask instead (the exact masked fallback; transformers passes a 4D mask
through untouched).

Labels stay per sample: the first token of every sample is ``IGNORE_INDEX``, so the last
token of one sample never learns to predict the first of the next (the model shifts labels
by one internally). Image features are scattered into ``<image>`` positions in order, so the
images of a packed batch are stacked row by row, sample by sample. AnyRes (LLaVA-NeXT /
OneVision): a sample's length counts each image's own run (its size's, data/image_tokens.py);
a row carries every crop of every image in order as ``pixel_values`` (crops, C, h, w) and
``image_sizes`` (one per image), from which the model splits the crops per image, so its
features fill exactly the row's image-token runs.

Rows (``llava_hydra.sampling.packing_rows``): every step is a random draw of samples of one modality
(a contiguous run of a random permutation, as long as the step's token budget allows) packed
best-fit decreasing into that step's rows, which are dealt to the ranks by real tokens. The
number of rows is the same every epoch (as the Trainer's step count needs); which samples share
a step and a row changes every epoch.

Who decides the rows in training: ``PackedSampler``, not the dataset. Each epoch it packs
afresh (``packed_epoch`` with ``seed + epoch``) and yields every row as the *tuple of its
sample indices*; ``PackedDataset`` packs whatever tuple it is handed. So the rows are re-drawn
wherever the sampler's epoch is set -- by the Trainer through accelerate, which forwards
``set_epoch`` to the sampler under any number of processes (to a dataset only when the sampler
has none) -- identically on every rank and in every dataloader worker, persistent or not.

Loss: with the model's ``num_items_in_batch`` (passed by the Trainer over all gradient
accumulation micro-batches), the loss is the sum over real answer tokens divided by their
number, whatever the grouping of samples into rows: packed and unpacked training take the
same step.
"""

from __future__ import annotations

import torch

from llava_hydra.data.dataset import batch_images
from llava_hydra.data.video import batch_videos, stack_videos
from llava_hydra.data.labels import IGNORE_INDEX
from llava_hydra.sampling.packing_rows import (FILL, bin_lengths, pack_lengths, pack_rows, packed_epoch, padding_stats,
                                      step_counts)

__all__ = ["IGNORE_INDEX", "PackedCollator", "PackedDataset", "PackedSampler", "bin_lengths", "block_causal_mask",
           "pack_lengths", "pack_rows", "pack_samples", "packed_epoch", "packed_training", "padding_stats",
           "prepare_model_for_packing"]


# -- dataset and collator -------------------------------------------------------------------------

def pack_samples(samples: list[dict]) -> dict:
    """One packed row from tokenized samples (the dataset's items): ids and labels concatenated,
    positions restarting per sample, each sample's first label ignored, images in order."""
    ids = torch.cat([s["input_ids"] for s in samples])
    labels = torch.cat([s["labels"] for s in samples]).clone()
    lengths = [len(s["input_ids"]) for s in samples]
    starts = torch.tensor([0] + lengths[:-1]).cumsum(0)
    labels[starts] = IGNORE_INDEX
    position_ids = torch.cat([torch.arange(n) for n in lengths])
    row = {"input_ids": ids, "labels": labels, "position_ids": position_ids,
           "sample_lengths": torch.tensor(lengths)}
    if "source" in samples[0]:  # a mixture's samples: their sources, for per-source loss (data.mixture_dataset)
        row["sources"] = torch.tensor([s["source"] for s in samples])
    row.update(batch_images(samples))  # every image in order; AnyRes: all crops, and image_sizes per image
    row.update(batch_videos(samples))  # OneVision: every video in order (one frame count: stack_videos)
    return row


class PackedDataset(torch.utils.data.Dataset):
    """Packed rows of a tokenized dataset. ``dataset[(i, j, ...)]`` packs samples i, j, ... into
    one row (``pack_samples``): what ``PackedSampler`` hands out. ``dataset[k]`` is row ``k`` of
    the epoch-free packing (``pack_rows``: best-fit decreasing over each whole modality; for
    inspection and for samplers other than ``PackedSampler``, which may use a few more rows:
    ``counts_for``). ``dataset`` needs ``modality_lengths`` (as ``LazySupervisedDataset``).
    ``len`` and ``modality_lengths`` (tokens per row, negative for a text-only row) are fixed.
    ``fill``: the target share of real tokens in a row (``llava_hydra.sampling.packing_rows``)."""

    def __init__(self, dataset, capacity: int, seed: int = 0, group_by_modality: bool = True, fill: float = FILL):
        self.dataset, self.capacity, self.seed, self.fill = dataset, capacity, seed, fill
        self.group_by_modality = group_by_modality
        self.sample_lengths = list(dataset.modality_lengths)
        self.bins, self.counts = pack_rows(self.sample_lengths, capacity, seed, fill, group_by_modality)
        self._bin_lengths = bin_lengths(self.sample_lengths, self.bins, capacity)
        self._step_counts: dict[int, list[int]] = {}

    def counts_for(self, per_step: int) -> list[int]:
        """Rows per modality of every epoch in steps of ``per_step`` rows (``step_counts``: at
        least ``len(self)``'s, more where packing a step reaches less than ``fill``)."""
        if per_step not in self._step_counts:
            self._step_counts[per_step] = step_counts(self.sample_lengths, self.capacity, per_step, self.seed,
                                                      self.counts, self.group_by_modality)
        return self._step_counts[per_step]

    def __len__(self) -> int:
        return len(self.bins)

    @property
    def modality_lengths(self) -> list[int]:
        """Tokens per bin, negative for a text-only bin."""
        return self._bin_lengths

    def __getitem__(self, key) -> dict:
        samples = self.bins[key] if isinstance(key, int) else key
        return pack_samples([self.dataset[j] for j in samples])

    def sampler(self, batch_size: int, world_size: int) -> "PackedSampler":
        return PackedSampler(self, batch_size, world_size)


class PackedSampler(torch.utils.data.Sampler):
    """The rows of one epoch (``packed_epoch``: every step a random draw of samples packed into
    its rows), as tuples of sample indices, in the global step order (accelerate shards it per
    rank). ``batch_size`` counts rows per device; ``world_size`` is ranks x gradient accumulation
    steps. Epoch ``e`` draws with ``seed + e``: a pure function of the epoch, so every rank and
    worker agrees. The number of rows is the same every epoch (``PackedDataset.counts_for``)."""

    def __init__(self, dataset: PackedDataset, batch_size: int, world_size: int):
        self.dataset, self.batch_size, self.world_size = dataset, batch_size, world_size
        self.counts = dataset.counts_for(batch_size * world_size)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return sum(self.counts)

    def rows(self) -> list[tuple[int, ...]]:
        d = self.dataset
        bins, order = packed_epoch(d.sample_lengths, d.capacity, self.batch_size, self.world_size,
                                   d.seed + self.epoch, d.group_by_modality, d.fill, self.counts)
        return [tuple(bins[i]) for i in order.tolist()]

    def __iter__(self):
        return iter(self.rows())


def block_causal_mask(sample_lengths: list[list[int]], length: int, dtype=torch.float32) -> torch.Tensor:
    """[B, 1, L, L] additive mask: 0 where a query may attend (same sample, not later), dtype
    min elsewhere. ``sample_lengths[b]`` are row b's samples in order; the rest of the row
    (padding) is one more block."""
    seq = torch.zeros(len(sample_lengths), length, dtype=torch.long)
    for b, lens in enumerate(sample_lengths):
        ids = torch.repeat_interleave(torch.arange(len(lens)), torch.as_tensor(lens, dtype=torch.long))
        seq[b, :len(ids)] = ids
        seq[b, len(ids):] = len(lens)
    same = seq[:, :, None] == seq[:, None, :]
    causal = torch.ones(length, length, dtype=torch.bool).tril()
    allowed = same & causal
    mask = torch.zeros(allowed.shape, dtype=dtype)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask[:, None]


class PackedCollator:
    """Stacks packed rows (``PackedDataset`` items) into a batch, for ``attn_implementation``.

    - sdpa / eager / flex (default): rows right-padded to the longest (``pad_to_multiple_of``
      rounds up); the padding is one more block (positions from 0, labels ignored) that no real
      token attends to. No ``attention_mask`` and ``use_cache=False``: transformers' masking
      utilities build the block-diagonal causal mask from the restarting ``position_ids`` (they
      skip that detection when a cache object exists, and the model creates one by default).
    - flash_attention_2/3: all rows are concatenated into one ``[1, total]`` row, no padding at
      all: flash-attention's varlen path reads the sample boundaries from ``position_ids`` only
      for a batch of one row.
    - ``explicit_mask=True``: the block-diagonal mask itself, as a 4D additive
      ``attention_mask`` of ``mask_dtype`` (the model's compute dtype), which transformers passes
      through untouched (the exact masked fallback; not for flash-attention)."""

    def __init__(self, pad_token_id: int, attn_implementation: str = "sdpa", pad_to_multiple_of: int | None = None,
                 explicit_mask: bool = False, mask_dtype=torch.float32):
        self.pad_token_id, self.pad_to_multiple_of = pad_token_id, pad_to_multiple_of
        self.flatten = "flash" in (attn_implementation or "")
        if self.flatten and explicit_mask:
            raise ValueError("packing: flash-attention takes no 4D mask; use explicit_mask=False")
        self.explicit_mask, self.mask_dtype = explicit_mask, mask_dtype

    def __call__(self, rows: list[dict]) -> dict:
        if self.flatten:
            rows = [{"input_ids": torch.cat([r["input_ids"] for r in rows]),
                     "labels": torch.cat([r["labels"] for r in rows]),
                     "position_ids": torch.cat([r["position_ids"] for r in rows]),
                     "sample_lengths": torch.cat([r["sample_lengths"] for r in rows]), **_images(rows)}]
        longest = max(len(r["input_ids"]) for r in rows)
        if self.pad_to_multiple_of and not self.flatten:
            longest = -(-longest // self.pad_to_multiple_of) * self.pad_to_multiple_of
        ids = torch.full((len(rows), longest), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(rows), longest), IGNORE_INDEX, dtype=torch.long)
        positions = torch.arange(longest).repeat(len(rows), 1)
        for b, r in enumerate(rows):
            n = len(r["input_ids"])
            ids[b, :n], labels[b, :n], positions[b, :n] = r["input_ids"], r["labels"], r["position_ids"]
            positions[b, n:] = torch.arange(longest - n)
        batch = {"input_ids": ids, "labels": labels, "position_ids": positions, "use_cache": False}
        if self.explicit_mask:
            batch["attention_mask"] = block_causal_mask([r["sample_lengths"].tolist() for r in rows], longest,
                                                        self.mask_dtype)
        return {**batch, **_images(rows)}


def _images(rows: list[dict]) -> dict:
    """The rows' ``pixel_values`` concatenated in order (AnyRes: every image's crops) and, where the
    rows carry them, their ``image_sizes`` (one per image, in the same order): the model splits the
    crops per image by the sizes and fills the image-token runs in order."""
    out = {}
    for key in ("pixel_values", "image_sizes"):
        parts = [r[key] for r in rows if key in r]
        if parts:
            out[key] = torch.cat(parts)
    videos = stack_videos([r["pixel_values_videos"] for r in rows if "pixel_values_videos" in r], "a packed batch")
    if videos is not None:
        out["pixel_values_videos"] = videos
    return out


def prepare_model_for_packing(model) -> None:
    """Turn the KV cache off in training: with a cache object transformers skips the packed-row
    detection (samples would attend across boundaries). The Trainer drops the batch's
    ``use_cache`` (not a named forward argument) when ``remove_unused_columns`` is on, so the
    config must say it. Found through PEFT/DeepSpeed wrappers."""
    for module in model.modules():
        config = getattr(module, "config", None)
        if config is not None and hasattr(config, "use_cache"):
            config.use_cache = False
        text = getattr(config, "text_config", None)
        if text is not None and hasattr(text, "use_cache"):
            text.use_cache = False


def packed_training(dataset, pad_token_id: int, model_max_length: int, attn_implementation: str = "sdpa",
                    seed: int = 0, fill: float = FILL):
    """What the runner swaps in for ``training.packing=true``: (PackedDataset, PackedCollator)."""
    return (PackedDataset(dataset, model_max_length, seed=seed, fill=fill),
            PackedCollator(pad_token_id, attn_implementation))
