"""The pixel pipeline: an RGB image -> square or padded (LLaVA's ``expand2square`` for
``image_aspect_ratio=pad``, filled with ``int(255 * mean)`` of the processor, as LLaVA) -> the
vision tower's pixel values, by the fastest path that gives the processor's values.

Three paths, chosen once per image processor and logged (``images: ...``):

- ``fast processor``: the processor is transformers' torchvision backend (what
  ``AutoImageProcessor`` gives when torchvision imports): it is called as it is.
- ``torch resize``: the processor is a PIL-backend one (``CLIPImageProcessorPil``, what
  transformers falls back to without torchvision) with a plain resize (shortest edge, or height
  x width; bicubic or bilinear) + centre crop + rescale + normalize. The same steps run on a
  uint8 tensor with torch's antialiased interpolation (the kernel torchvision's resize uses),
  about 6x faster than PIL's resize here. Values match the processor's to within one 8-bit
  level before normalization (:data:`TOLERANCE_LEVELS`): the first image each process sees is
  run through both paths and a larger difference switches to the processor for good. A
  height x width resize that scales the two axes differently (SigLIP, ``square``, a non-square
  image) goes to the processor: there torch's antialiased resize is up to ~18 levels off PIL's.
  So does a bicubic shrink of an image taller than wide (``square``; 400x1200 at 336: 15 levels).
- ``processor``: anything else (other resizes, padding, tiling): the processor itself.

A saved ``pad`` model's ``LlavaImageProcessor`` (``do_pad``, model/saved_pixels.py) is used with its
padding off (:func:`without_padding`): padding is the ``aspect``'s, done here by expand2square.

``draft_size`` tells images.open_rgb how small a JPEG may be decoded (DCT scaling) so that the
resize still starts from at least as many pixels as it keeps; ``peak_size`` how large the largest
image is that the path makes of a decoded one (``pad``'s square canvas, side = the longer side; a
shortest-edge resize's output, edge x edge * long / short), which images.py bounds by
``data.max_image_pixels`` before anything is allocated.
"""

from __future__ import annotations

import logging
import math
from typing import Callable

import numpy as np
from PIL import Image

ASPECTS = ("square", "pad")  # data.image_aspect_ratio

log = logging.getLogger(__name__)

TOLERANCE_LEVELS = 2  # verified bound: max |torch - processor| <= this many 8-bit levels / (255 * std)
DRAFT_GAP = 2  # JPEGs decoded at >= this many times the pixels the resize keeps (PIL thumbnail's reducing_gap)
_MODES = {2: "bilinear", 3: "bicubic"}  # PIL resample codes
_CACHE: dict[int, tuple[object, "Pipeline"]] = {}


def expand2square(img: Image.Image, fill: tuple[int, int, int]) -> Image.Image:
    w, h = img.size
    if w == h:
        return img
    side = max(w, h)
    canvas = Image.new("RGB", (side, side), fill)
    canvas.paste(img, ((side - w) // 2, (side - h) // 2))
    return canvas


def mean_colour(image_processor) -> tuple[int, int, int]:
    return tuple(int(c * 255) for c in image_processor.image_mean)


def pads_to_square(image_processor) -> bool:
    """transformers' LlavaImageProcessor with ``do_pad``: it pads to a square of ``int(255 * mean)``
    itself, centred as expand2square centres (what a model saved from a ``pad`` run carries)."""
    return bool(getattr(image_processor, "do_pad", False)) and \
        type(image_processor).__name__ in ("LlavaImageProcessor", "LlavaImageProcessorPil")


def without_padding(image_processor):
    """``image_processor`` with its own padding to a square turned off (a copy): the pixel path pads
    by ``image_aspect_ratio`` itself, so a saved ``pad`` model's processor neither pads twice nor
    pads a ``square`` run."""
    if not pads_to_square(image_processor):
        return image_processor
    import copy

    out = copy.copy(image_processor)
    out.do_pad = False
    return out


def check_aspect(aspect: str) -> None:
    if aspect not in ASPECTS:
        raise ValueError(f"image_aspect_ratio must be one of {ASPECTS}, got {aspect!r}")


def process(img: Image.Image, aspect: str, image_processor):
    """One RGB image -> pixel values (C, H, W) through the processor itself (the reference path)."""
    check_aspect(aspect)
    if aspect == "pad":
        img = expand2square(img, mean_colour(image_processor))
    return image_processor(img, return_tensors="pt")["pixel_values"][0]



class Pipeline:
    """``pipeline(img, aspect) -> (C, H, W)`` tensor; ``name`` says which path."""

    def __init__(self, image_processor):
        self.processor = image_processor = without_padding(image_processor)
        self.plan = _plan(image_processor)
        backends = {c.__name__ for c in type(image_processor).__mro__}
        self.name = ("fast processor (torchvision)" if "TorchvisionBackend" in backends
                     else "torch resize (PIL processor's steps)" if self.plan else "processor")
        self._verified = self.plan is None

    def __call__(self, img, aspect: str):
        check_aspect(aspect)
        if self.plan is None:
            return _one_thread(process, img, aspect, self.processor)
        out = _one_thread(self._torch, img, aspect)
        if not self._verified:
            self._verified = True
            ref = process(img, aspect, self.processor)
            diff = float((out - ref).abs().max()) if out.shape == ref.shape else math.inf
            bound = TOLERANCE_LEVELS / (255 * min(self.processor.image_std)) + 1e-5
            if diff > bound:
                log.warning("images: torch resize differs from %s by %.4g (> %.4g): using the processor",
                            type(self.processor).__name__, diff, bound)
                self.plan, self.name = None, "processor"
                return ref
        return out

    def draft_size(self, aspect: str) -> Callable[[int, int], tuple[int, int]] | None:
        """(w, h) of the file -> the least (w, h) to decode it at, or None (decode in full)."""
        return draft_size(aspect, shortest_edge(self.processor))

    def _torch(self, img, aspect: str):
        import torch
        import torch.nn.functional as F

        p = self.plan
        if aspect == "pad":
            img = expand2square(img, mean_colour(self.processor))
        x = torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1)[None]
        h, w = x.shape[-2:]
        if p["resize"]:
            edge = p["shortest_edge"]
            if edge:
                short, long = (w, h) if w <= h else (h, w)
                new_long = int(edge * long / short)  # transformers' get_resize_output_image_size
                size = (new_long, edge) if w <= h else (edge, new_long)
            else:
                size = p["hw"]
                if size[0] * w != size[1] * h:  # unequal scales (SigLIP's height x width on a non-square
                    return process(img, "square", self.processor)  # image): torch's differ from PIL's by ~18 levels
            if p["mode"] == "bicubic" and size[0] < h and h > w:  # torch's bicubic shrink of a tall image: up to
                return process(img, "square", self.processor)  # ~15 levels off PIL's (400x1200 -> 336x1008)
            if size != (h, w):
                x = F.interpolate(x, size=size, mode=p["mode"], antialias=True)
        if p["crop"]:
            ch, cw = p["crop"]
            h, w = x.shape[-2:]
            if ch > h or cw > w:  # the processor pads first: its own path
                return process(img, "square", self.processor)
            top, left = (h - ch) // 2, (w - cw) // 2
            x = x[..., top:top + ch, left:left + cw]
        x = x[0].to(torch.float32)  # a new contiguous tensor: scaled in place, one pass each
        return x.mul_(p["scale"]).add_(p["shift"])


def shortest_edge(processor) -> int | None:
    """The edge a processor resizes the shorter side to (aspect kept), or None for any other resize."""
    size = getattr(processor, "size", None) if processor else None
    edge = getattr(size, "shortest_edge", None) if size is not None else None
    if not getattr(processor, "do_resize", False) or not edge or getattr(size, "longest_edge", None):
        return None
    return int(edge)


def draft_size(aspect: str, edge: int | None) -> Callable[[int, int], tuple[int, int]] | None:
    """(w, h) of the file -> the least (w, h) to decode it at for a shortest-edge resize, or None."""
    if not edge:
        return None

    def least(w: int, h: int) -> tuple[int, int]:
        side = max(w, h) if aspect == "pad" else min(w, h)  # pad: the square's side is the longer one
        return math.ceil(w * edge * DRAFT_GAP / side), math.ceil(h * edge * DRAFT_GAP / side)
    return least


def peak_size(aspect: str, edge: int | None) -> Callable[[int, int], tuple[int, str]]:
    """(w, h) of the decoded image -> (pixels, what) of the largest image the path makes of it:
    under pad the square canvas (then resized to edge x edge); under square the shortest-edge
    resize's output (a 1x30000 strip resized to 336 on its short side is 336 x 10,080,000)."""
    def peak(w: int, h: int) -> tuple[int, str]:
        if aspect == "pad":
            side = max(w, h)
            return max(side * side, (edge or 0) ** 2), f"its padded square canvas is {side}x{side}"
        if edge:
            short, long = min(w, h), max(w, h)
            resized = (edge, int(edge * long / short))  # transformers' get_resize_output_image_size
            if resized[0] * resized[1] > w * h:
                return resized[0] * resized[1], f"resized to {edge} on its short side it is {resized[0]}x{resized[1]}"
        return w * h, "it is that large"
    return peak


def _one_thread(fn, *args):
    """``fn(*args)`` on one intra-op thread: a few-ms op on one image gains nothing from more, and
    where cores are shared (or busy with training) OpenMP's threads made the torch path 10x slower."""
    import torch

    threads = torch.get_num_threads()
    if threads == 1:  # DataLoader workers
        return fn(*args)
    torch.set_num_threads(1)
    try:
        return fn(*args)
    finally:
        torch.set_num_threads(threads)


def _plan(proc) -> dict | None:
    """The PIL-backend processor's steps when the torch path can do them, else None."""
    import torch

    if "PilBackend" not in {c.__name__ for c in type(proc).__mro__}:
        return None
    g = lambda name, default=None: getattr(proc, name, default)  # noqa: E731
    if g("do_pad") or g("image_grid_pinpoints") or g("do_convert_rgb") is False:
        return None
    size, crop = g("size"), g("crop_size")
    plan = {"resize": bool(g("do_resize")), "shortest_edge": None, "hw": None, "mode": None, "crop": None,
            "rescale": g("rescale_factor") if g("do_rescale") else None}
    if plan["resize"]:
        if size is None or g("resample") not in _MODES or getattr(size, "longest_edge", None):
            return None
        plan["mode"] = _MODES[int(g("resample"))]
        if getattr(size, "shortest_edge", None):
            plan["shortest_edge"] = int(size.shortest_edge)
        elif getattr(size, "height", None) and getattr(size, "width", None):
            plan["hw"] = (int(size.height), int(size.width))
        else:
            return None
    if g("do_center_crop"):
        if crop is None or not getattr(crop, "height", None) or not getattr(crop, "width", None):
            return None
        plan["crop"] = (int(crop.height), int(crop.width))
    # rescale + normalize fused: x * rescale / std - mean / std (what the torchvision backend fuses too)
    rescale = float(plan.pop("rescale") or 1.0)
    mean, std = (g("image_mean"), g("image_std")) if g("do_normalize") else ([0.0] * 3, [1.0] * 3)
    std64 = torch.tensor(std, dtype=torch.float64)[:, None, None]
    plan["scale"] = (rescale / std64).float()
    plan["shift"] = (-torch.tensor(mean, dtype=torch.float64)[:, None, None] / std64).float()
    return plan


def pipeline(image_processor) -> Pipeline:
    """The pipeline for this processor object (made once per process, its choice logged)."""
    return once_per_processor(_CACHE, Pipeline, image_processor)


def once_per_processor(cache: dict, make, image_processor):
    """``make(image_processor)`` once per processor object and process (keyed by id, held with the
    object so a reused id is not taken for it); the path it chose is logged once."""
    hit = cache.get(id(image_processor))
    if hit is not None and hit[0] is image_processor:
        return hit[1]
    made = make(image_processor)
    cache[id(image_processor)] = (image_processor, made)
    log.info("images: %s for %s", made.name, type(image_processor).__name__)
    return made
