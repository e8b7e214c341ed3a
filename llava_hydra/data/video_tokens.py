"""How many frames a video is sampled to, and how many ``<video>`` tokens it becomes (LLaVA-OneVision).

One place for the rule, read by the length pass, the sampler, packing, truncation, ``data.check`` and the
sample itself (data/video.py), so every count is the count of the pixels the model will see.

Frames (LLaVA-NeXT ``llava/utils.py`` ``process_video_with_decord``, which ``train.py`` calls for a
``video`` record): a video of ``total`` frames at ``fps`` frames per second is read every
``round(fps / video_fps)``-th frame (``range(0, total, step)``: ``ceil(total / step)`` frames); when
``frames_upbound`` > 0 and that is more than ``frames_upbound`` frames -- or always, under
``force_sample`` -- it is ``frames_upbound`` frames uniformly spread instead
(``np.linspace(0, total - 1, frames_upbound, dtype=int)``). So under ``force_sample`` (with an upbound)
the count is a constant and no file is opened to count; otherwise it comes from the container header
(``total`` and the average rate), as decord reads them.

Tokens (transformers ``LlavaOnevisionModel.get_video_features`` + ``LlavaOnevisionProcessor``): each frame's
``side x side`` patch features (SigLIP-384/14: 27 x 27) are bilinearly pooled to
``ceil(side / 2) x ceil(side / 2)`` (14 x 14 = 196), the frames are laid one after another and ONE
``image_newline`` closes the video: ``frames * ceil(side / 2) ** 2 + 1`` (``replace_video_token``).
"""

from __future__ import annotations

import math

import numpy as np


def pooled_per_frame(side: int) -> int:
    """Tokens per frame after OneVision's 2x bilinear pooling of a ``side x side`` patch grid."""
    return math.ceil(side / 2) ** 2


class VideoTokens:
    """The frame sampling and token count of one model + data config.

    ``side``: the tower's patches per side (image_size // patch_size); ``frames_upbound`` (0: no cap),
    ``force_sample`` and ``video_fps`` as LLaVA-NeXT's ``DataArguments``."""

    def __init__(self, side: int, frames_upbound: int = 0, force_sample: bool = False, video_fps: int = 1):
        if side <= 0:
            raise ValueError(f"patches per side must be positive, got {side}")
        if frames_upbound < 0:
            raise ValueError(f"data.frames_upbound must be >= 0 (0: no cap), got {frames_upbound}")
        if force_sample and frames_upbound == 0:
            raise ValueError("data.force_sample=true samples data.frames_upbound frames from every video: "
                             "set data.frames_upbound > 0")
        if video_fps <= 0:
            raise ValueError(f"data.video_fps must be > 0, got {video_fps}")
        self.side, self.per_frame = side, pooled_per_frame(side)
        self.frames_upbound, self.force_sample, self.video_fps = frames_upbound, force_sample, video_fps

    @property
    def constant_frames(self) -> int | None:
        """The frame count of every video when it does not depend on the video (force_sample), else None."""
        return self.frames_upbound if self.force_sample else None

    @property
    def key(self) -> list:
        """Identifies the rule for caches (the length pass)."""
        return ["video", self.side, self.frames_upbound, self.force_sample, self.video_fps]

    def indices(self, total: int, fps: float) -> list[int]:
        """The frame indices read from a video of ``total`` frames at ``fps`` (LLaVA-NeXT's sampling)."""
        if total <= 0:
            raise ValueError(f"the video has {total} frames")
        # decord: round(avg_fps / video_fps); a clip under half a frame per second would step by 0 there
        step = max(1, round(fps / self.video_fps)) if fps and fps > 0 else 1
        idx = list(range(0, total, step))
        if self.frames_upbound > 0 and (len(idx) > self.frames_upbound or self.force_sample):
            idx = np.linspace(0, total - 1, self.frames_upbound, dtype=int).tolist()
        return idx

    def frames(self, total: int, fps: float) -> int:
        if self.constant_frames is not None:
            return self.constant_frames
        return len(self.indices(total, fps))

    def tokens(self, frames: int) -> int:
        """``<video>`` tokens of a video sampled to ``frames`` frames: pooled frames + one newline."""
        return frames * self.per_frame + 1

    def __str__(self) -> str:  # what the data commands print per video
        if self.constant_frames is not None:
            return f"{self.tokens(self.constant_frames)} ({self.constant_frames} frames x {self.per_frame} + 1)"
        cap = f", at most {self.frames_upbound}" if self.frames_upbound else ""
        return f"frames x {self.per_frame} + 1 (frames at {self.video_fps}/s{cap})"


def video_tokens_for(side: int, data_cfg) -> VideoTokens:
    """The rule of a spec's ``data.frames_upbound`` / ``force_sample`` / ``video_fps``."""
    return VideoTokens(side, int(data_cfg.get("frames_upbound", 0) or 0), bool(data_cfg.get("force_sample", False)),
                       int(data_cfg.get("video_fps", 1) or 1))
