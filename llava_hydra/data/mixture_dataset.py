"""The dataset of a mixture: the selected records of every source as one map-style dataset,
each sample tagged with its source, and the collator that carries the tags to the trainer.

Each source is a ``LazySupervisedDataset`` of its own file and image folder, so it keeps its
own record store and cached length pass (keyed by its file's content, as for a single file:
a source shared by two mixtures, or with a single-file run, is stored and measured once).
``MixtureDataset`` concatenates the selections (``llava_hydra.data.mixture``) in source order:
index ``g`` is record ``selection[k][g - offset[k]]`` of source ``k``. Its ``modality_lengths``
are the sources' lengths of those records, so the grouped sampler (and packing) draw every step
at random from the whole mixture: no step is made of one source by construction. A sample is
the source's sample plus ``source`` (its source's position); ``SourceCollator`` turns those into
``source_ids`` (batch x tokens, -1 on padding), for per-token accounting (also of packed rows,
whose ``sources`` and ``sample_lengths`` say which tokens came from where).

Bad records follow the source's ``on_bad_sample`` as in a single file (a replacement comes from
the same source). The length pass and ``data.check`` cover each source's whole file.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from llava_hydra.data.mixture import (MixtureError, Source, data_seed, indices_digest, read_sources,
                                      selected_count, selections)

log = logging.getLogger(__name__)


class MixtureRecords:
    """The mixture's records by global index (read from each source's store); ``has_image`` per record."""

    def __init__(self, mixture: "MixtureDataset"):
        self.mixture = mixture

    def __len__(self) -> int:
        return len(self.mixture)

    def __getitem__(self, g: int) -> dict:
        k, i = self.mixture.locate(g)
        return self.mixture.datasets[k].records[i]

    @property
    def has_image(self) -> np.ndarray:
        from llava_hydra.data.store import has_image

        return np.concatenate([has_image(ds.records)[sel] for ds, sel in zip(self.mixture.datasets,
                                                                              self.mixture.selected)])


class MixtureDataset(torch.utils.data.Dataset):
    """The selected records of every source, in source order, each sample tagged ``source``."""

    def __init__(self, sources: list[Source], datasets: list, seed: int):
        self.sources, self.datasets, self.seed = list(sources), list(datasets), seed
        chosen = selections(self.sources, [len(ds) for ds in self.datasets], seed)
        self.selected = [np.asarray(c, dtype=np.int64) for c in chosen]
        self.offsets = np.cumsum([0] + [len(s) for s in self.selected]).astype(np.int64)
        self.names = [s.name for s in self.sources]
        self.data_path = f"mixture of {len(self.sources)} sources ({', '.join(self.names)})"
        self.model_max_length = self.datasets[0].model_max_length

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def set_epoch(self, epoch: int) -> None:
        """Each source draws its ``skip`` stand-ins for this epoch (data/stand_in.py)."""
        for ds in self.datasets:
            ds.set_epoch(epoch)

    def locate(self, g: int) -> tuple[int, int]:
        """(source, record index in its file) of mixture index g."""
        if not 0 <= g < len(self):
            raise IndexError(f"mixture index {g} out of range ({len(self)} samples)")
        k = int(np.searchsorted(self.offsets, g, side="right")) - 1
        return k, int(self.selected[k][g - self.offsets[k]])

    def __getitem__(self, g: int) -> dict:
        k, i = self.locate(g)
        return {**self.datasets[k][i], "source": k}

    @property
    def records(self) -> MixtureRecords:
        return MixtureRecords(self)

    def source_of(self) -> np.ndarray:
        """The source of every mixture index (int64)."""
        return np.repeat(np.arange(len(self.selected)), [len(s) for s in self.selected])

    def length_table(self) -> list:
        """Each source's cached length pass (computed on first use)."""
        return [ds.length_table() for ds in self.datasets]

    @property
    def modality_lengths(self) -> list[int]:
        out = []
        for ds, sel in zip(self.datasets, self.selected):
            lengths = np.asarray(ds.modality_lengths)
            out += lengths[sel].tolist()
        return out

    def selection_record(self) -> dict:
        """Per source: its file and content digest, records, strategy, repeat and what it selected
        (count and a digest of the indices): recorded in the run spec as ``data.selection``."""
        return _record(self.sources, [ds.data_digest for ds in self.datasets], [len(ds) for ds in self.datasets],
                       [sel.tolist() for sel in self.selected])

    def report(self, all_ranks: bool = False) -> dict:
        """The sources' skip reports (each a collective with ``all_ranks``, as a single file's),
        joined: counts summed, and each source's own under ``sources``."""
        parts = {name: ds.report(all_ranks=all_ranks) for name, ds in zip(self.names, self.datasets)}
        by_kind: dict[str, int] = {}
        by_reason: dict[str, int] = {}
        for part in parts.values():
            for key, into in (("by_kind", by_kind), ("by_reason", by_reason)):
                for k, v in part[key].items():
                    into[k] = into.get(k, 0) + v
        return {"samples": len(self), "skipped": sum(p["skipped"] for p in parts.values()), "by_kind": by_kind,
                "by_reason": by_reason, "examples": [e for p in parts.values() for e in p["examples"]][:5],
                "sources": parts}


def _source_map(item: dict) -> torch.Tensor:
    """The source of every token of one item: a sample (``source``) or a packed row (``sources``
    and ``sample_lengths``)."""
    if "sources" in item:
        return torch.repeat_interleave(item["sources"], item["sample_lengths"])
    return torch.full((len(item["input_ids"]),), int(item["source"]), dtype=torch.long)


class SourceCollator:
    """Wraps a collator (padded or packed): adds ``source_ids``, the source of every token of the
    batch (-1 on padding), shaped as ``input_ids``."""

    def __init__(self, collator):
        self.collator = collator

    def __call__(self, items: list[dict]) -> dict:
        maps = [_source_map(item) for item in items]
        batch = self.collator(items)
        rows, width = batch["input_ids"].shape
        if rows == 1 and len(items) > 1:  # flash-attention packing: the rows concatenated into one
            batch["source_ids"] = torch.cat(maps).unsqueeze(0)
            return batch
        ids = torch.full((rows, width), -1, dtype=torch.long)
        for r, m in enumerate(maps):
            ids[r, :len(m)] = m
        batch["source_ids"] = ids
        return batch


def mixture_dataset(cfg, tokenizer, image_processor, num_image_tokens: int, image_token_id: int | None = None,
                    on_bad_sample: str | None = None) -> MixtureDataset:
    """The mixture a spec describes, each source read as ``spec_dataset`` reads a single file."""
    from llava_hydra.data.spec import spec_dataset

    sources = read_sources(cfg.data)
    datasets = []
    for s in sources:
        datasets.append(spec_dataset(cfg, s.data_path, tokenizer, image_processor, num_image_tokens,
                                     image_token_id=image_token_id, on_bad_sample=on_bad_sample,
                                     image_folder=s.image_folder, video_folder=s.video_folder))
    mixture = MixtureDataset(sources, datasets, data_seed(cfg))
    for s, ds, sel in zip(sources, datasets, mixture.selected):
        repeat = f", x{s.repeat:g}: {len(sel)} samples" if s.repeat != 1 else ""
        log.info("data source %s: %d of %d records (%s%s) from %s", s.name,
                 selected_count(len(ds), s.sampling_strategy), len(ds), s.sampling_strategy, repeat, s.data_path)
    return mixture


def selection_of(cfg) -> dict:
    """The ``data.selection`` record of a spec's mixture from the record stores alone (no tokenizer):
    what the run spec records before anything heavy loads, and what a resume is checked against."""
    from llava_hydra.data.records import load_records
    from llava_hydra.data.store import open_records

    sources = read_sources(cfg.data)
    skip, cache = cfg.data.on_bad_sample == "skip", cfg.paths.cache_dir
    opened = [open_records(s.data_path, cache, skip) if cache else load_records(s.data_path, skip) for s in sources]
    totals = [len(records) for records, _ in opened]
    return _record(sources, [digest for _, digest in opened], totals, selections(sources, totals, data_seed(cfg)))


def _record(sources: list[Source], digests: list[str], totals: list[int], chosen: list[list[int]]) -> dict:
    return {s.name: {"data_path": str(s.data_path), "sha256": digest, "records": total,
                     "sampling_strategy": s.sampling_strategy, "repeat": s.repeat,
                     "selected": selected_count(total, s.sampling_strategy), "samples": len(sel),
                     "indices_sha256": indices_digest(sel)}
            for s, digest, total, sel in zip(sources, digests, totals, chosen)}


def train_dataset(cfg, tokenizer, image_processor, num_image_tokens: int, image_token_id: int | None = None,
                  on_bad_sample: str | None = None):
    """The training data of a spec: its mixture (data.sources, or a mixture .yaml), else data.data_path's file."""
    from llava_hydra.data.mixture import is_mixture
    from llava_hydra.data.spec import spec_dataset

    if is_mixture(cfg.data) or cfg.data.data_path is None:  # the latter: read_sources says what is missing
        return mixture_dataset(cfg, tokenizer, image_processor, num_image_tokens, image_token_id, on_bad_sample)
    return spec_dataset(cfg, cfg.data.data_path, tokenizer, image_processor, num_image_tokens,
                        image_token_id=image_token_id, on_bad_sample=on_bad_sample)


__all__ = ["MixtureDataset", "MixtureError", "MixtureRecords", "SourceCollator", "mixture_dataset", "selection_of",
           "train_dataset"]
