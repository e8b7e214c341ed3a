"""The fast AnyRes pixel path (data/anyres_pixels.py) against transformers' PIL AnyRes image processors
(``LlavaNextImageProcessorPil``, ``LlavaOnevisionImageProcessorPil``, built as training builds them):
the same number of views in the same order (base view, then the crops row by row: the model's
feature count depends on it), the same ``image_sizes``, and pixel values within README's tolerance
for the fast pixel path, 2 levels of 8 bits (``2 / (255 * std)``), for a table of image sizes."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
import transformers
from PIL import Image

import stand_ins as testing
from llava_hydra.config.families import pinpoints_for
from llava_hydra.data import anyres_pixels
from llava_hydra.data.anyres import anyres_pixels as dataset_pixels, family_image_processor

LEVELS = 2  # README: the fast pixel path is within 2 levels of 8 bits of the processor


def photo(w: int, h: int, seed: int = 0) -> Image.Image:
    """Gradients + noise: every resize kernel shows in it, and a crop out of place is far off."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    a = np.stack([xx * 255 // max(w - 1, 1), yy * 255 // max(h - 1, 1), (xx * 7 + yy * 3) % 256], -1)
    return Image.fromarray((a + rng.integers(-60, 61, size=(h, w, 3))).clip(0, 255).astype(np.uint8))


def processor(family: str, crop: int):
    tower = testing.clip_processor(crop) if family == "llava_next" else transformers.SiglipImageProcessorPil()
    return family_image_processor(family, tower, SimpleNamespace(image_size=crop), pinpoints_for(family, None, crop))


def check(family: str, crop: int, w: int, h: int, views: int):
    proc = processor(family, crop)
    img = photo(w, h, seed=w * 31 + h)
    plan = anyres_pixels.plan(proc)
    assert plan is not None, "a PIL AnyRes processor takes the fast path"
    ours, size = anyres_pixels.fast_pixels(img, plan)
    theirs = proc(images=[img], return_tensors="pt")
    assert ours.shape == (views, 3, crop, crop) == theirs["pixel_values"][0].shape
    assert size.tolist() == theirs["image_sizes"][0].tolist() == [h, w]
    diff = float((ours - theirs["pixel_values"][0]).abs().max())
    assert diff <= LEVELS / (255 * min(proc.image_std)) + 1e-5, f"{w}x{h}: {diff * 255 * min(proc.image_std):.2f} levels"
    return diff


# (w, h) -> views (base view + crops), written out from the pinpoints. tiny_next's 32-px crops, pinpoints
# 32x64 64x32 64x64 96x32 32x96 (h x w); OneVision's 1x1..6x6 grids of 32 px
TINY = [
    ("portrait", 40, 100, 1 + 3, 1 + 8),        # next: 96x32 (3x1); ov: 128x64 (4x2), the least waste of all that fit it
    ("landscape", 100, 37, 1 + 3, 1 + 8),       # next: 32x96 (1x3); ov: 64x128 (2x4)
    ("tiny", 3, 5, 1 + 2, 1 + 1),               # next: 32x64, the first of the least waste; ov: 1x1
    ("huge", 800, 590, 1 + 4, 1 + 30),          # past every pinpoint: next 64x64 (2x2); ov 160x192 (5x6)
    ("next pinpoint", 64, 32, 1 + 2, 1 + 2),    # exactly 32x64 (1x2), both
    ("ov pinpoint", 96, 64, 1 + 4, 1 + 6),      # exactly 64x96 (2x3) for ov; next: 64x64 keeps most
    ("1-px strip", 1, 50, 1 + 2, 1 + 2),        # 64x32 (2x1), both
]


@pytest.mark.parametrize("what,w,h,next_views,ov_views", TINY, ids=[t[0] for t in TINY])
def test_tiny_towers_views_and_values(what, w, h, next_views, ov_views):
    check("llava_next", 32, w, h, next_views)
    check("llava_onevision", 32, w, h, ov_views)


# realistic towers: CLIP-336 with LLaVA-NeXT's 5 pinpoints, SigLIP-384 with OneVision's 6x6
@pytest.mark.parametrize("family,crop,w,h,views", [
    ("llava_next", 336, 480, 640, 1 + 4),        # a portrait photo: 2x2
    ("llava_next", 336, 672, 336, 1 + 2),        # exactly the 336x672 pinpoint
    ("llava_onevision", 384, 640, 480, 1 + 4),   # a landscape photo: 2x2
    ("llava_onevision", 384, 1152, 768, 1 + 6),  # exactly the 768x1152 pinpoint
])
def test_realistic_towers(family, crop, w, h, views):
    check(family, crop, w, h, views)


@pytest.mark.slow
@pytest.mark.parametrize("family,crop", [("llava_next", 336), ("llava_onevision", 384)])
def test_realistic_towers_full_table(family, crop):
    for w, h in [(400, 1000), (1000, 370), (3, 5), (1, 500), (4000, 3000), (3000, 4000), (2 * crop, crop),
                 (crop, 3 * crop), (333, 199), (2304, 2304)]:
        proc = processor(family, crop)
        want = proc(images=[photo(w, h)], return_tensors="pt")["pixel_values"][0].shape[0]
        check(family, crop, w, h, want)


def test_crops_come_row_by_row_after_the_base_view():
    """A 64x64 image of four plain quadrants on tiny_next's 2x2 grid: base view, then top-left,
    top-right, bottom-left, bottom-right (transformers' divide_to_patches order)."""
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]
    img = Image.new("RGB", (64, 64))
    for k, c in enumerate(colours):
        img.paste(c, ((k % 2) * 32, (k // 2) * 32, (k % 2) * 32 + 32, (k // 2) * 32 + 32))
    pixels, size = dataset_pixels(img, processor("llava_next", 32))
    assert pixels.shape == (5, 3, 32, 32) and size.tolist() == [64, 64]
    mean, std = torch.tensor(testing.clip_processor().image_mean), torch.tensor(testing.clip_processor().image_std)
    got = [tuple(int(v) for v in (pixels[1 + k].mean((1, 2)) * std + mean).mul(255).round()) for k in range(4)]
    assert got == colours


def test_other_processors_run_the_processor_and_a_difference_switches_to_it(monkeypatch, caplog):
    proc = processor("llava_next", 32)
    cropped = processor("llava_next", 32)
    cropped.crop_size = type(cropped.crop_size)(height=30, width=30)  # a per-view crop this path does not do
    assert anyres_pixels.AnyresPipeline(cropped).name == "processor"
    pipe = anyres_pixels.AnyresPipeline(proc)
    assert pipe.name.startswith("torch crops")
    real = anyres_pixels.fast_pixels
    monkeypatch.setattr(anyres_pixels, "fast_pixels", lambda img, p: (real(img, p)[0] + 0.1, real(img, p)[1]))
    img = photo(50, 30)
    out, size = pipe(img)  # the first image is checked against the processor: 0.1 is > 2 levels
    assert pipe.name == "processor" and "differ" in caplog.text
    assert torch.equal(out, proc(images=[img], return_tensors="pt")["pixel_values"][0]) and size.tolist() == [30, 50]
