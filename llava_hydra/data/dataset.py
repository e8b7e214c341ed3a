"""The lazy supervised dataset and the collator.

``LazySupervisedDataset`` opens the records up front (with a ``cache_dir``: the shared,
memory-mapped record store of store.py, one record decoded per access; without: a list) and does the work of a sample — render,
tokenize + mask (labels.py), load + process its images (images.py) — only when the sample is
asked for. ``modality_lengths`` runs the cached length pass (lengths.py) the first time the
grouped sampler asks. A multi-image record's sample carries its images' pixel values stacked
``(n, C, H, W)`` in tag order (a single image's are ``(C, H, W)``); the collator and packing
concatenate every sample's images in order (``stack_images``), as the model fills the batch's
image-token runs in order. AnyRes (``num_image_tokens`` an ImageTokens rule): each image's run is
counted from its size (from its file header, kept in the record store: store_sizes.py), and a sample
carries its images' crops ``(crops, C, h, w)`` with ``image_sizes`` ``(n, 2)``. A OneVision video: data/video.py.

Bad samples follow ``on_bad_sample``: ``raise`` stops with a BadSampleError naming the file,
the sample index and id and the problem; ``skip`` logs each bad sample once and hands out a
good sample drawn uniformly in its place (stand_in.py: deterministic per index and epoch, so no
good sample is made more likely). A sample
left with nothing to train on after truncation is always replaced the same way, never handed
to the trainer with zero loss. ``report()`` counts what was skipped (across DataLoader worker
processes too: each skip is appended to a small JSONL file the dataset owns;
``report(all_ranks=True)``, called by every rank, also joins the other ranks' skips).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from llava_hydra.data import lengths as lengths_mod, store_sizes
from llava_hydra.data.anyres import anyres_images
from llava_hydra.data.image_tokens import ImageTokens
from llava_hydra.data.conversation import IMAGE_TOKEN, Rendered, check_template, render
from llava_hydra.data.images import DEFAULT_MAX_PIXELS, ImageError, ImageSource
from llava_hydra.data.pixels import shortest_edge
from llava_hydra.data.labels import IGNORE_INDEX, Encoded, NothingToTrain, encode, encode_prompt  # noqa: F401
from llava_hydra.data.records import (CHECKS_VERSION, BadSampleError, RecordError, images_of,  # noqa: F401
                                      load_records, normalize_turns, record_id)
from llava_hydra.data.stand_in import candidates, stand_in
from llava_hydra.data.store import open_records
from llava_hydra.data.video import Video, batch_videos, media_of, require, video_sample, video_token_id

log = logging.getLogger(__name__)

POLICIES = ("raise", "skip")


class LazySupervisedDataset(torch.utils.data.Dataset):
    """Opens records up front, tokenizes and loads images only when a sample is asked for."""

    def __init__(self, data_path, tokenizer, image_processor, template: str, image_folder=None,
                 image_aspect_ratio: str = "square", model_max_length: int = 2048,
                 image_token_id: int | None = None, num_image_tokens: int | ImageTokens = 576,
                 on_bad_sample: str = "raise", cache_dir=None, allow_images_outside_folder: bool = False,
                 max_image_pixels: int | None = DEFAULT_MAX_PIXELS, records=None, videos=None):
        if on_bad_sample not in POLICIES:
            raise ValueError(f"data.on_bad_sample must be one of {POLICIES}, got {on_bad_sample!r}")
        check_template(template)
        self.data_path = str(data_path)
        self.on_bad_sample = on_bad_sample
        if records is not None:  # given (a shard stream's, one sample at a time: data.stream): no file read
            self.records, self.data_digest = records, None
        elif cache_dir is not None:  # memory-mapped, shared by every rank and worker
            self.records, self.data_digest = open_records(data_path, cache_dir,
                                                          skip_bad_lines=on_bad_sample == "skip")
        else:
            self.records, self.data_digest = load_records(data_path, skip_bad_lines=on_bad_sample == "skip")
        self.tokenizer, self.image_processor = tokenizer, image_processor
        self.template, self.image_folder = template, Path(image_folder or ".")
        self.images = ImageSource(self.image_folder, allow_images_outside_folder, max_image_pixels,
                                  image_aspect_ratio, shortest_edge(image_processor))
        self.image_aspect_ratio, self.model_max_length = image_aspect_ratio, model_max_length
        self.image_token_id = (image_token_id if image_token_id is not None
                               else tokenizer.convert_tokens_to_ids(IMAGE_TOKEN))
        # tokens per image: a count for all (LLaVA-1.5), or an ImageTokens rule by size (AnyRes)
        self.image_tokens = num_image_tokens if isinstance(num_image_tokens, ImageTokens) else ImageTokens(
            num_image_tokens)
        self.anyres = self.image_tokens.fixed is None
        self.num_image_tokens = self.image_tokens if self.anyres else self.image_tokens.fixed
        self.videos, self.video_token_id = videos, video_token_id(tokenizer, videos)  # OneVision: a VideoSource
        self.cache_dir = cache_dir
        self._table: lengths_mod.LengthTable | None = None
        self._known_bad: set[int] = set()  # indices replaced without trying (from the length pass)
        self.epoch = 0  # set_epoch: skip's stand-ins are drawn per epoch
        self._seen: dict[int, tuple[str, str, str]] = {}  # skips noticed in this process: (kind, message, reason)
        where = Path(cache_dir) / "skips" if cache_dir else Path(tempfile.gettempdir())
        self.skip_log = where / f"skips-{os.getpid()}-{time.time_ns()}.jsonl"

    def __len__(self) -> int:
        return len(self.records)

    # -- one record ----------------------------------------------------------------------------

    def _fail(self, i: int, problem: str, reason: str = "bad") -> BadSampleError:
        return BadSampleError(f"{self.data_path}: sample {i} (id={record_id(self.records[i])!r}): {problem}", reason)

    def prepare(self, i: int) -> tuple[Rendered, list[str]]:
        """(rendered conversation, image paths or [Video(path)]) of record i; RecordError if it is malformed."""
        record = self.records[i]
        turns = normalize_turns(record)
        return render(self.template, turns, tokenizer=self.tokenizer), media_of(record, self.videos)

    def image_runs(self, images: list[str], i: int | None = None):
        """The token run of each image (of record i): the fixed count (LLaVA-1.5), or one per image by its size."""
        if images and isinstance(images[0], Video):  # by its frame count (video_tokens.py)
            return [require(self.videos).tokens(images[0])]
        if not self.anyres:
            return self.num_image_tokens
        # by size (stored, else its header's); OneVision: one view + a newline for each of several (ImageTokens.runs)
        return self.image_tokens.runs(store_sizes.sizes_of(self, i, images))

    def _runs_for_lengths(self, images: list[str], i: int) -> list[int]:
        try:
            return self.image_runs(images, i)
        except ImageError as e:
            raise RecordError(str(e), e.kind) from None

    def encode(self, i: int) -> tuple[Encoded, list[str]]:
        """Tokens + labels of record i (no image decoded); BadSampleError / NothingToTrain."""
        try:
            rendered, images = self.prepare(i)
            return encode(rendered, self.tokenizer, self.image_token_id, self.image_runs(images, i),
                          self.model_max_length), images
        except NothingToTrain:
            raise
        except ValueError as e:  # RecordError, or a chat template that cannot be located
            raise self._fail(i, str(e), getattr(e, "kind", "malformed")) from None

    def build(self, i: int) -> dict:
        """Sample i as the collator takes it; raises on any problem (no replacement)."""
        e, images = self.encode(i)
        sample = {"input_ids": torch.tensor(e.input_ids), "labels": torch.tensor(e.labels)}
        if images and e.num_images:  # the images whose token runs survived truncation, in tag order
            try:
                if isinstance(images[0], Video):  # its run re-tagged <video>, its frames
                    return video_sample(sample, images[0], self.videos, self.image_token_id, self.video_token_id)
                if self.anyres:
                    kept, sizes = images[:e.num_images], store_sizes.stored_of(self, i, images, e.num_images)
                    return {**sample, **anyres_images(self.images, kept, self.image_processor, len(images), sizes)}
                pixels = [self.images.load(path, self.image_aspect_ratio, self.image_processor)
                          for path in images[:e.num_images]]
            except ImageError as err:
                raise self._fail(i, str(err), err.kind) from None
            sample["pixel_values"] = torch.stack(pixels) if len(images) > 1 else pixels[0]
        return sample

    # -- the policy ----------------------------------------------------------------------------

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __getitem__(self, i: int) -> dict:
        n = len(self)
        for j in candidates(i, self.epoch, n, self._known_bad):  # i, then uniform draws of a good stand-in
            try:
                return self.build(j)
            except BadSampleError as e:
                if self.on_bad_sample == "raise":
                    raise
                self._skip(j, "bad", str(e), reason=e.reason)
            except NothingToTrain as e:
                self._skip(j, "nothing_to_train", str(self._fail(j, str(e))))
        raise BadSampleError(f"{self.data_path}: no usable sample among its {n} records")

    def _logged(self) -> dict[int, tuple[str, str, str]]:
        out = {}
        if self.skip_log.exists():
            for line in self.skip_log.read_text().splitlines():
                try:
                    i, kind, msg, reason = json.loads(line)
                    out[int(i)] = (kind, msg, reason)
                except (ValueError, TypeError):
                    continue
        return out

    def _skip(self, i: int, kind: str, message: str, logged: dict | None = None, reason: str | None = None) -> None:
        """Note sample i as replaced: ``kind`` bad | nothing_to_train, ``reason`` the problem's own kind."""
        self._known_bad.add(i)
        if i in self._seen:
            return
        self._seen[i] = (kind, message, reason or kind)
        if i in (self._logged() if logged is None else logged):
            return  # another worker process (or an earlier epoch's) already logged it
        log.warning("skipping sample %d (%s): %s", i, kind, message)
        self.skip_log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.skip_log, "a") as f:
            f.write(json.dumps([i, kind, message, reason or kind]) + "\n")

    def report(self, all_ranks: bool = False) -> dict:
        """Counts of samples replaced so far (this process and its DataLoader workers; with
        ``all_ranks``, every rank's: a collective call every rank must make), logged once as a
        summary. A sample skipped by several ranks or workers counts once."""
        skipped = {**self._logged(), **self._seen}
        if all_ranks:
            skipped = _joined_across_ranks(skipped)
        kinds: dict[str, int] = {}
        reasons: dict[str, int] = {}
        for kind, _, reason in skipped.values():
            kinds[kind] = kinds.get(kind, 0) + 1
            reasons[reason] = reasons.get(reason, 0) + 1
        summary = {"samples": len(self), "skipped": len(skipped), "by_kind": kinds, "by_reason": reasons,
                   "examples": [msg for _, msg, _ in list(skipped.values())[:5]]}
        if skipped:
            log.warning("data: %d of %d samples skipped (%s) from %s", len(skipped), len(self),
                        ", ".join(f"{v} {k}" for k, v in sorted(reasons.items())), self.data_path)
        return summary

    # -- lengths -------------------------------------------------------------------------------

    def _prepare_for_lengths(self, i: int):
        try:
            return self.prepare(i)
        except RecordError:
            raise
        except ValueError as e:  # a chat template problem: a record problem too
            raise RecordError(str(e)) from None

    def length_table(self) -> lengths_mod.LengthTable:
        """The cached length pass (computed on first use)."""
        if self._table is None:
            digest = f"{self.data_digest}/checks{CHECKS_VERSION}" + store_sizes.length_key(self)  # + AnyRes sizes
            key = lengths_mod.cache_key(digest, self.tokenizer, self.template, self.model_max_length,
                                        (self.image_tokens.key if self.anyres else self.num_image_tokens)
                                        if self.videos is None else [self.image_tokens.key, self.videos.key])
            runs = self._runs_for_lengths if self.anyres else self.num_image_tokens  # AnyRes: sizes (stored)
            started = time.time()
            self._table, hit = lengths_mod.cached(
                self.cache_dir, key,
                lambda: lengths_mod.compute(len(self), self._prepare_for_lengths, self.tokenizer,
                                            runs, self.model_max_length), n=len(self))
            log.info("lengths of %d samples %s in %.1fs", len(self), "read from the cache" if hit else "computed",
                     time.time() - started)
        return self._table

    @property
    def modality_lengths(self) -> list[int]:
        """Token count per sample (image tokens included, capped at model_max_length); negative
        for text-only, as LLaVA's. Bad or untrainable samples take their replacement's length."""
        table = self.length_table()
        if table.problems and self.on_bad_sample == "raise":
            i, (_, message) = min(table.problems.items())
            raise self._fail(i, message)
        logged = self._logged()
        for i, (kind, message) in sorted(table.problems.items()):
            self._skip(i, "bad", str(self._fail(i, message)), logged, reason=kind)
        for i in table.nothing_to_train(self.model_max_length).nonzero()[0].tolist():
            problem = (f"every answer lies beyond model_max_length={self.model_max_length}"
                       if table.first_label[i] >= 0 else "no answer token to train on")
            self._skip(i, "nothing_to_train", str(self._fail(i, problem)), logged)
        lengths = table.modality_lengths(self.model_max_length)
        if self._known_bad:
            n = len(self)
            if len(self._known_bad) == n:
                raise BadSampleError(f"{self.data_path}: no usable sample among its {n} records")
            for i in sorted(self._known_bad):  # epoch 0's stand-in (stand_in.py)
                lengths[i] = lengths[stand_in(i, 0, n, self._known_bad)]
        return lengths


def _joined_across_ranks(skipped: dict[int, tuple]) -> dict[int, tuple]:
    """The union of every rank's skips (torch.distributed all_gather_object); as is without a
    process group."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return skipped
    parts: list = [None] * dist.get_world_size()
    dist.all_gather_object(parts, skipped)
    joined: dict[int, tuple] = {}
    for part in parts:
        joined.update(part)
    return dict(sorted(joined.items()))


def stack_images(samples: list[dict]) -> torch.Tensor | None:
    """Every sample's images, in order, as one ``(n_images, C, H, W)`` tensor (None if none):
    what LlavaForConditionalGeneration takes for the image-token runs of a batch."""
    images = [s["pixel_values"] for s in samples if "pixel_values" in s]
    if not images:
        return None
    return torch.cat([im if im.dim() == 4 else im.unsqueeze(0) for im in images])


@dataclass
class DataCollator:
    """Right-pads a batch; every image of the batch, sample by sample in tag order, in one
    ``(n_images, C, H, W)`` tensor (text-only samples have none)."""

    pad_token_id: int

    def __call__(self, samples: list[dict]) -> dict:
        longest = max(len(s["input_ids"]) for s in samples)
        ids = torch.full((len(samples), longest), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(samples), longest), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(samples), longest), dtype=torch.long)
        for row, s in enumerate(samples):
            n = len(s["input_ids"])
            ids[row, :n], labels[row, :n], mask[row, :n] = s["input_ids"], s["labels"], 1
        batch = {"input_ids": ids, "labels": labels, "attention_mask": mask}
        return {**batch, **batch_images(samples), **batch_videos(samples)}


def batch_images(samples: list[dict]) -> dict:
    """``pixel_values`` of every sample's images in order (stack_images) and, for AnyRes samples,
    ``image_sizes`` (n_images, 2): LlavaNext splits the crops per image by the sizes. {} if none."""
    images = stack_images(samples)
    if images is None:
        return {}
    out = {"pixel_values": images}
    if any("image_sizes" in s for s in samples):
        out["image_sizes"] = torch.cat([s["image_sizes"] for s in samples if "image_sizes" in s])
    if any("batch_num_images" in s for s in samples):  # OneVision: images per sample (1: crops, more: one view each)
        out["batch_num_images"] = torch.cat([s["batch_num_images"] for s in samples if "batch_num_images" in s])
    return out
