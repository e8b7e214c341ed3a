"""Videos (LLaVA-OneVision): a record's ``video`` path -> checked file -> sampled frames -> pixel values.

A record ``{"video": "clip.mp4", "conversations": [...]}`` (LLaVA-NeXT's format) has one ``<image>`` tag in a
human turn that marks where the video goes, as in LLaVA-NeXT's ``train.py``; the tag becomes the video's run
of ``<video>`` tokens (``config.video_token_id``), whose length is ``VideoTokens`` (video_tokens.py), so
``LlavaOnevisionForConditionalGeneration`` fills it with the pooled frame features + one newline.

Owns: the path under ``data.video_folder`` (a mixture source's own ``video_folder``), the frame count from
the container header (PyAV, no decoding: the length pass counts with it), decoding (PyAV: the ``video``
extra) and sampling the frames as LLaVA-NeXT samples them, and each frame to the tower's square input --
resized to the image processor's ``size`` (height x width, its resampling; no padding, no crops), rescaled
and normalized with its mean / std: what LLaVA-NeXT's ``processor.preprocess(frames)`` (the SigLIP
processor) does to each frame, and what the video processor saved beside the model
(model/onevision_processor.py: the same size, mean, std, resampling) does at serving time.
A sample carries ``pixel_values_videos`` (frames, C, H, W); the collator stacks a batch's videos to the
(videos, frames, C, H, W) transformers takes (dataset.stack_videos).

Problems raise ``ImageError`` with a video kind (``missing_video``, ``unreadable_video``), so the dataset's
bad-sample policy (raise / skip, counted by reason) treats them as it treats images.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from llava_hydra.data.images import ImageError, outside_folder
from llava_hydra.data.records import images_of, video_of
from llava_hydra.data.video_tokens import VideoTokens


class Video(str):
    """A record's video path, marked so the token counts treat it as a video (not an image)."""


def require(videos: "VideoSource | None") -> "VideoSource":
    """The dataset's VideoSource; a RecordError (the record is refused) where the model takes no videos."""
    if videos is None:
        from llava_hydra.data.records import RecordError

        raise RecordError("record has a 'video': videos train with model.family=llava_onevision (data.video_folder)")
    return videos


def media_of(record, videos: "VideoSource | None") -> list[str]:
    """A record's image paths in tag order, or ``[Video(path)]`` for a video record (refused without videos)."""
    video = video_of(record)
    return [Video(require(videos) and video)] if video else images_of(record)


def video_token_id(tokenizer, videos) -> int | None:
    """The tokenizer's ``<video>`` id where videos are read (OneVision's assembly adds the token), else None."""
    if videos is None:
        return None
    token = tokenizer.convert_tokens_to_ids("<video>")
    if token is None or token == tokenizer.unk_token_id:
        raise ValueError("videos need the tokenizer's own <video> token (OneVision's model assembly adds it)")
    return token


def _av():
    try:
        import av
    except ImportError:
        raise ImportError("video records need PyAV: pip install 'llava_hydra[video]' (or pip install av)") from None
    return av


class VideoSource:
    """Videos under one folder, sampled by one ``VideoTokens`` rule, pixels as one image processor's."""

    def __init__(self, folder, rule: VideoTokens, image_processor=None, allow_outside: bool = False):
        self.folder, self.rule, self.image_processor = Path(folder) if folder else None, rule, image_processor
        self.allow_outside = allow_outside

    @property
    def key(self) -> list:
        """What a length pass's video runs depend on besides the records: the rule and the folder the
        names are read against (a missing video there is a problem of that folder, not of another)."""
        return [self.rule.key, os.path.realpath(self.folder) if self.folder else None, self.allow_outside]

    def path(self, name: str) -> Path:
        if self.folder is None:
            raise ImageError(f"video {name!r}: no data.video_folder is set (a mixture source: its video_folder)",
                             "missing_video")
        if not self.allow_outside and outside_folder(self.folder, name) is not None:  # the image paths' rule
            raise ImageError(f"video path {name!r} leaves data.video_folder {self.folder} "
                             f"(data.allow_images_outside_folder=true allows it)", "image_outside_folder")
        path = self.folder / name
        if not path.is_file():
            raise ImageError(f"video file not found: {path}", "missing_video")
        return path

    def header(self, name: str) -> tuple[int, float]:
        """(frames, average frames per second) from the container, without decoding; a container that
        does not record its frame count has its video packets counted."""
        path = self.path(name)
        av = _av()
        try:
            with av.open(str(path)) as container:
                if not container.streams.video:
                    raise ImageError(f"video {path}: no video stream", "unreadable_video")
                stream = container.streams.video[0]
                total, rate = stream.frames, stream.average_rate or stream.guessed_rate
                if not total:
                    total = sum(1 for p in container.demux(stream) if p.size)
        except ImageError:
            raise
        except Exception as e:  # noqa: BLE001 - av.error.*, OSError, ...
            raise ImageError(f"video {path}: unreadable ({type(e).__name__}: {e})", "unreadable_video") from None
        if total <= 0:
            raise ImageError(f"video {path}: no frames", "unreadable_video")
        return int(total), float(rate) if rate else 0.0

    def frame_count(self, name: str) -> int:
        """Frames the sample will have (no file opened under force_sample)."""
        if self.rule.constant_frames is not None:
            return self.rule.constant_frames
        return self.rule.frames(*self.header(name))

    def tokens(self, name: str) -> int:
        return self.rule.tokens(self.frame_count(name))

    def frames(self, name: str) -> np.ndarray:
        """The sampled frames, (frames, H, W, 3) uint8 RGB (LLaVA-NeXT: every frame decoded, the sampled kept)."""
        total, fps = self.header(name)
        idx = self.rule.indices(total, fps)
        path, av = self.path(name), _av()
        want, kept = set(idx), {}
        try:
            with av.open(str(path)) as container:
                stream = container.streams.video[0]
                stream.thread_type = "AUTO"
                for k, frame in enumerate(container.decode(stream)):
                    if k in want:
                        kept[k] = frame.to_ndarray(format="rgb24")
                    if k >= idx[-1]:
                        break
        except Exception as e:  # noqa: BLE001 - av.error.* on a corrupt stream
            raise ImageError(f"video {path}: does not decode ({type(e).__name__}: {e})", "unreadable_video") from None
        missing = [k for k in idx if k not in kept]
        if missing:
            raise ImageError(f"video {path}: its header says {total} frames, frame {missing[0]} does not decode "
                             f"({len(kept)} of the {len(idx)} sampled frames read)", "unreadable_video")
        return np.stack([kept[k] for k in idx])

    def check(self, name: str, decode: bool = False) -> ImageError | None:
        """None if the video is usable, else the problem: its header read (``decode``: its sampled frames)."""
        try:
            self.frames(name) if decode else self.header(name)
        except ImageError as e:
            return e
        return None

    def load(self, name: str):
        """The sample's ``pixel_values_videos`` (frames, C, H, W) float32."""
        return frame_pixels(self.frames(name), self.image_processor)


def frame_pixels(frames: np.ndarray, image_processor):
    """(frames, H, W, 3) uint8 -> (frames, C, size, size) float32: each frame resized to the processor's
    ``size`` (its resampling, PIL), rescaled and normalized with its mean / std -- the steps the image
    processor's base view (and transformers' LlavaOnevisionVideoProcessor with the saved config) take."""
    import torch
    from PIL import Image

    size = dict(image_processor.size)
    h, w = (size["height"], size["width"]) if "height" in size else (size["shortest_edge"],) * 2
    resample = int(getattr(image_processor, "resample", Image.BICUBIC))
    scale = float(getattr(image_processor, "rescale_factor", 1 / 255))
    mean = np.asarray(image_processor.image_mean, dtype=np.float32)
    std = np.asarray(image_processor.image_std, dtype=np.float32)
    out = np.empty((len(frames), 3, h, w), dtype=np.float32)
    for k, frame in enumerate(frames):
        resized = np.asarray(Image.fromarray(frame).resize((w, h), resample=resample), dtype=np.float32)
        out[k] = ((resized * scale - mean) / std).transpose(2, 0, 1)
    return torch.from_numpy(out)


def video_sample(sample: dict, name: str, videos: VideoSource, image_token_id: int, video_token_id: int) -> dict:
    """A tokenized video sample (its tag expanded to a run of ``image_token_id``): the run re-tagged as
    ``<video>`` tokens (labels -100) and the video's ``pixel_values_videos``; ImageError if it does not load
    or decodes to another frame count than its run was counted for."""
    run = sample["input_ids"] == image_token_id
    pixels = videos.load(name)
    if int(run.sum()) != videos.rule.tokens(len(pixels)):
        raise ImageError(f"video {name}: decoded {len(pixels)} frames ({videos.rule.tokens(len(pixels))} tokens) "
                         f"where its header gave a run of {int(run.sum())}", "unreadable_video")
    return {"input_ids": sample["input_ids"].masked_fill(run, video_token_id),
            "labels": sample["labels"].masked_fill(run, -100), "pixel_values_videos": pixels}


def stack_videos(videos: list, where: str = "a batch"):
    """Videos ``(frames, C, H, W)`` (or already stacked ``(n, frames, C, H, W)``) as the one
    ``(n_videos, frames, C, H, W)`` tensor LlavaOnevisionForConditionalGeneration takes (None if none).
    transformers takes one frame count per call: videos with different counts cannot share a batch."""
    import torch

    videos = [v if v.dim() == 5 else v.unsqueeze(0) for v in videos]
    if not videos:
        return None
    counts = sorted({v.shape[1] for v in videos})
    if len(counts) > 1:
        raise ValueError(f"{where} holds videos of {counts} frames: transformers' pixel_values_videos is one "
                         f"(videos, frames, C, H, W) tensor, so the videos of a batch need one frame count. Set "
                         f"data.force_sample=true (every video data.frames_upbound frames), or train "
                         f"training.per_device_train_batch_size=1 without training.packing")
    return torch.cat(videos)


def batch_videos(samples: list[dict]) -> dict:
    """``pixel_values_videos`` of every sample's video in order (stack_videos); {} if none."""
    videos = stack_videos([s["pixel_values_videos"] for s in samples if "pixel_values_videos" in s])
    return {} if videos is None else {"pixel_values_videos": videos}
