"""The fast pixel path for AnyRes images (LLaVA-NeXT / OneVision): one RGB image -> the base view
and the grid's crops as transformers' PIL-backend ``LlavaNextImageProcessorPil`` /
``LlavaOnevisionImageProcessorPil`` make them, by their own steps written out here.

The processor's steps for one image of (H, W): pick the pinpoint (th, tw) by
``select_best_resolution``; resize to (nh, nw), one side equal to the pinpoint's and the other
``ceil``'d (``get_patch_output_size``), aspect kept; paste it centred (floored offsets) on a
black (th, tw) canvas; cut the canvas into (th / p) x (tw / p) crops of p x p, row by row; the base
view is the whole image resized to p x p (aspect not kept); then each of the 1 + crops views is
resized to ``size`` and centre-cropped to ``crop_size`` (both p x p here, so no-ops), rescaled and
normalized. Outputs: ``pixel_values`` (1 + crops, C, p, p), base view first, and ``image_sizes``
(H, W). The path below does the same steps on uint8 tensors and normalizes all views at once
(rescale and normalize fused in float32, as pixels.py's base path), skipping the processor's
per-view PIL round trips and float64 passes.

Resizes: PIL's own ``Image.resize`` (what the processor calls: equal values) except where both
axes are upscaled, which torch's antialiased interpolation does (within one 8-bit level of PIL
there on every size tried). Torch's bicubic downscale is not used: on tall images it is up to
~20 levels off PIL's (480x640 -> 336x336: 9 levels). Values therefore match the processor's to
within pixels.TOLERANCE_LEVELS 8-bit levels; as in pixels.py, the first image each process sees
is run through both paths and a larger difference (or another crop count) switches to the
processor for good. Chosen, as pixels.py's torch path, whenever the processor is a PIL-backend
AnyRes one whose per-view resize and crop are no-ops; anything else runs the processor itself.
"""

from __future__ import annotations

import logging
import math

import numpy as np

from llava_hydra.data.image_tokens import select_best_resolution
from llava_hydra.data.pixels import _MODES, TOLERANCE_LEVELS, _one_thread, once_per_processor

log = logging.getLogger(__name__)

ANYRES_PROCESSORS = ("LlavaNextImageProcessorPil", "LlavaOnevisionImageProcessorPil")
_CACHE: dict[int, tuple[object, "AnyresPipeline"]] = {}


def processor_pixels(rgb, image_processor):
    """The reference path: the processor itself -> (pixel_values (views, C, p, p), image_size [H, W])."""
    out = image_processor(images=[rgb], return_tensors="pt")
    return out["pixel_values"][0], out["image_sizes"][0]


def resized_size(height: int, width: int, target: tuple[int, int]) -> tuple[int, int]:
    """(h, w) an image is resized to inside the pinpoint ``target`` (transformers' get_patch_output_size)."""
    th, tw = target
    scale_w, scale_h = tw / width, th / height  # in this float order: 3000 * (672 / 4000) is 504.00000000000006
    if scale_w < scale_h:
        return min(math.ceil(height * scale_w), th), tw
    return th, min(math.ceil(width * scale_h), tw)


def plan(proc) -> dict | None:
    """The processor's settings when this path reproduces it, else None (the processor runs)."""
    import torch

    if type(proc).__name__ not in ANYRES_PROCESSORS:
        return None
    if "PilBackend" not in {c.__name__ for c in type(proc).__mro__}:
        return None
    g = lambda name, default=None: getattr(proc, name, default)  # noqa: E731
    pinpoints, size, crop = g("image_grid_pinpoints"), g("size"), g("crop_size")
    if not pinpoints or size is None or g("do_convert_rgb") is False or g("resample") is None:
        return None
    edge, hw = getattr(size, "shortest_edge", None), (getattr(size, "height", None), getattr(size, "width", None))
    if getattr(size, "longest_edge", None) or not (edge or all(hw)):
        return None
    base = hw if all(hw) else (edge, edge)  # the processor's base-view size
    p = crop.height if crop is not None and getattr(crop, "height", None) else (hw[0] or edge)  # its crop side
    if base != (p, p):
        return None
    if g("do_resize") and (edge or 0) != p and hw != (p, p):  # the per-view resize would change a p x p view
        return None
    if g("do_center_crop") and (crop is None or (crop.height, crop.width) != (p, p)):
        return None
    if any(h % p or w % p for h, w in pinpoints):
        return None
    rescale = float(g("rescale_factor") or 1.0) if g("do_rescale") else 1.0
    mean, std = (g("image_mean"), g("image_std")) if g("do_normalize") else ([0.0] * 3, [1.0] * 3)
    std64 = torch.tensor(std, dtype=torch.float64)[:, None, None]
    return {"pinpoints": [tuple(int(v) for v in pp) for pp in pinpoints], "side": int(p),
            "resample": int(g("resample")), "mode": _MODES.get(int(g("resample"))),
            "scale": (rescale / std64).float(),
            "shift": (-torch.tensor(mean, dtype=torch.float64)[:, None, None] / std64).float()}


def _resize(img, tensor, size: tuple[int, int], p: dict):
    """(1, C, h, w) uint8 of ``img`` (PIL) resized to ``size`` (h, w): torch when both axes grow, else PIL."""
    import torch
    import torch.nn.functional as F

    h, w = tensor.shape[-2:]
    if size == (h, w):
        return tensor
    if p["mode"] and p.get("torch_upscale", True) and size[0] >= h and size[1] >= w:
        return F.interpolate(tensor, size=size, mode=p["mode"], antialias=True)
    out = img.resize((size[1], size[0]), resample=p["resample"])
    return torch.from_numpy(np.asarray(out).copy()).permute(2, 0, 1)[None]


def fast_pixels(rgb, p: dict):
    """One RGB image -> (pixel_values (1 + crops, C, side, side) float32, image_size [H, W]) by ``p``."""
    import torch

    if rgb.mode != "RGB":
        rgb = rgb.convert("RGB")
    x = torch.from_numpy(np.asarray(rgb).copy()).permute(2, 0, 1)[None]  # (1, 3, H, W) uint8, HWC memory
    height, width = x.shape[-2:]
    side = p["side"]
    th, tw = select_best_resolution(height, width, p["pinpoints"])
    nh, nw = resized_size(height, width, (th, tw))
    views = torch.zeros((1 + (th // side) * (tw // side), 3, side, side), dtype=torch.uint8)
    views[0] = _resize(rgb, x, (side, side), p)[0]
    canvas = torch.zeros((3, th, tw), dtype=torch.uint8)
    top, left = (th - nh) // 2, (tw - nw) // 2
    canvas[:, top:top + nh, left:left + nw] = _resize(rgb, x, (nh, nw), p)[0]
    # (3, rows, side, cols, side) -> (rows, cols, 3, side, side): crops row by row, as divide_to_patches
    views[1:] = canvas.view(3, th // side, side, tw // side, side).permute(1, 3, 0, 2, 4).reshape(-1, 3, side, side)
    out = views.to(torch.float32).mul_(p["scale"]).add_(p["shift"])
    return out, torch.tensor([height, width], dtype=torch.long)


class AnyresPipeline:
    """``pipeline(rgb) -> (pixel_values, image_size)``; ``name`` says which path."""

    def __init__(self, image_processor):
        self.processor = image_processor
        self.plan = plan(image_processor)
        self.name = "torch crops (AnyRes processor's steps)" if self.plan else "processor"
        self._verified = self.plan is None

    def __call__(self, rgb):
        if self.plan is None:
            return _one_thread(processor_pixels, rgb, self.processor)
        out = _one_thread(fast_pixels, rgb, self.plan)
        if not self._verified:
            self._verified = True
            ref = processor_pixels(rgb, self.processor)
            diff = float((out[0] - ref[0]).abs().max()) if out[0].shape == ref[0].shape else math.inf
            bound = TOLERANCE_LEVELS / (255 * min(self.processor.image_std)) + 1e-5
            if diff > bound or out[1].tolist() != ref[1].tolist():
                log.warning("images: AnyRes torch crops differ from %s by %.4g (> %.4g): using the processor",
                            type(self.processor).__name__, diff, bound)
                self.plan, self.name = None, "processor"
                return ref
        return out


def anyres_pipeline(image_processor) -> AnyresPipeline:
    """The AnyRes pipeline for this processor object (made once per process, its choice logged)."""
    return once_per_processor(_CACHE, AnyresPipeline, image_processor)
