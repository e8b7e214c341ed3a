"""Length- and modality-grouped sampling, as LLaVA's ``LengthGroupedSampler``.

The functions keep LLaVA's names and signatures and draw from torch's random generator in
LLaVA's order, so after the same ``torch.manual_seed`` they return LLaVA's index list.
The sampler yields the *global* order: accelerate shards it per rank, so nothing here
splits by rank (a sampler that did would drop data).

A megabatch is ``world_size * batch_size`` indices (LLaVA passes world_size x gradient
accumulation steps as ``world_size``); inside one, samples are sorted longest first and
dealt into ``world_size`` per-device batches of balanced total length.
"""

from __future__ import annotations

import torch
from torch.utils.data import Sampler


def split_to_even_chunks(indices: list[int], lengths: list[int], num_chunks: int) -> list[list[int]]:
    """Deal ``indices`` into ``num_chunks`` equal-size chunks, each next one to the lightest."""
    if len(indices) % num_chunks != 0:
        return [indices[i::num_chunks] for i in range(num_chunks)]
    per_chunk = len(indices) // num_chunks
    chunks: list[list[int]] = [[] for _ in range(num_chunks)]
    weight = [0.0] * num_chunks
    for index in indices:
        lightest = weight.index(min(weight))
        chunks[lightest].append(index)
        weight[lightest] += lengths[index]
        if len(chunks[lightest]) == per_chunk:
            weight[lightest] = float("inf")
    return chunks


def get_length_grouped_indices(lengths, batch_size: int, world_size: int, generator=None, merge: bool = True):
    """Random megabatches, each sorted by length and split into balanced per-device batches."""
    indices = torch.randperm(len(lengths), generator=generator)
    size = world_size * batch_size
    megabatches = [indices[i:i + size].tolist() for i in range(0, len(lengths), size)]
    megabatches = [sorted(mb, key=lambda i: lengths[i], reverse=True) for mb in megabatches]
    megabatches = [split_to_even_chunks(mb, lengths, world_size) for mb in megabatches]
    return [i for mb in megabatches for batch in mb for i in batch]


def get_modality_length_grouped_indices(lengths, batch_size: int, world_size: int, generator=None):
    """Image (length > 0) and text-only (length < 0) samples never share a megabatch, except
    the two partial leftovers, merged into one last megabatch."""
    assert all(length != 0 for length in lengths), "a length of 0 has no modality"
    if all(length > 0 for length in lengths) or all(length < 0 for length in lengths):
        return get_length_grouped_indices(lengths, batch_size, world_size, generator=generator)
    mm_indices, mm_lengths = zip(*[(i, n) for i, n in enumerate(lengths) if n > 0])
    lang_indices, lang_lengths = zip(*[(i, -n) for i, n in enumerate(lengths) if n < 0])
    # LLaVA draws these two permutations from the global generator, not from `generator`
    mm_order = [mm_indices[i] for i in get_length_grouped_indices(mm_lengths, batch_size, world_size, generator=None)]
    lang_order = [lang_indices[i] for i in get_length_grouped_indices(lang_lengths, batch_size, world_size, generator=None)]
    size = world_size * batch_size
    mm_megabatches = [mm_order[i:i + size] for i in range(0, len(mm_order), size)]
    lang_megabatches = [lang_order[i:i + size] for i in range(0, len(lang_order), size)]
    leftover = mm_megabatches[-1] + lang_megabatches[-1]
    megabatches = mm_megabatches[:-1] + lang_megabatches[:-1]
    order = torch.randperm(len(megabatches), generator=generator)
    megabatches = [megabatches[i] for i in order]
    if leftover:
        megabatches.append(sorted(leftover))
    return [i for mb in megabatches for i in mb]


class LengthGroupedSampler(Sampler):
    """Yields every index once per epoch, grouped by length (and modality when asked)."""

    def __init__(self, batch_size: int, world_size: int, lengths=None, generator=None, group_by_modality: bool = False):
        if lengths is None:
            raise ValueError("LengthGroupedSampler needs the per-sample lengths")
        self.batch_size, self.world_size = batch_size, world_size
        self.lengths, self.generator, self.group_by_modality = list(lengths), generator, group_by_modality

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self):
        fn = get_modality_length_grouped_indices if self.group_by_modality else get_length_grouped_indices
        return iter(fn(self.lengths, self.batch_size, self.world_size, generator=self.generator))
