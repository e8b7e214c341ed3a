"""The pixel pipeline (issue 14.4): the torch path and JPEG draft decoding give the CLIP
processor's pixel values within stated bounds, and the path chosen is named."""

from __future__ import annotations

import logging
import random

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter

import stand_ins as testing
from llava_hydra.data.images import load_image, open_rgb
from llava_hydra.data.pixels import process
from llava_hydra.data.pixels import Pipeline, pipeline

ONE_LEVEL = 1 / (255 * 0.26130258)  # one 8-bit level in CLIP-normalized units (smallest CLIP std) = 0.0150


def photo(w: int, h: int, seed: int) -> Image.Image:
    """A photo-like image: shapes with sharp edges, noise, a slight blur."""
    rng = random.Random(seed)
    img = Image.new("RGB", (w, h), (90, 120, 150))
    d = ImageDraw.Draw(img)
    for _ in range(40):
        x, y = rng.randint(0, w), rng.randint(0, h)
        d.ellipse([x, y, x + rng.randint(20, 300), y + rng.randint(20, 300)],
                  fill=tuple(rng.randint(0, 255) for _ in range(3)))
    noise = np.random.default_rng(seed).integers(-20, 20, (h, w, 3))
    return Image.fromarray(np.clip(np.asarray(img).astype(int) + noise, 0, 255).astype(np.uint8)).filter(
        ImageFilter.GaussianBlur(1))


@pytest.fixture(scope="module")
def clip336():
    return testing.clip_processor(336)


@pytest.mark.parametrize("aspect", ["square", "pad"])
def test_torch_path_is_within_one_level_of_the_processor(clip336, tmp_path, aspect):
    photo(520, 610, 1).save(tmp_path / "a.jpg", quality=90)
    p = pipeline(clip336)
    assert p.name == "torch resize (PIL processor's steps)"
    img = open_rgb(tmp_path / "a.jpg")
    ref, got = process(img, aspect, clip336), p(img, aspect)
    assert got.shape == ref.shape == (3, 336, 336)
    diff = (got - ref).abs()
    assert float(diff.max()) <= ONE_LEVEL + 1e-5
    assert float(diff.mean()) < 0.001


@pytest.mark.parametrize("aspect", ["square", "pad"])
def test_jpeg_draft_decoding_is_within_the_stated_bound(clip336, tmp_path, aspect):
    """A 2400x1800 JPEG needs 336 px: it is decoded at half size (>= 2x what the resize keeps).
    Bound stated: mean |diff| <= 0.005 and max <= 0.25 (normalized units; a few edge pixels)."""
    photo(2400, 1800, 2).save(tmp_path / "big.jpg", quality=90)
    p = pipeline(clip336)
    draft = p.draft_size(aspect)
    with Image.open(tmp_path / "big.jpg") as im:
        im.draft("RGB", draft(*im.size))
        assert im.size == (1200, 900)  # really decoded at a reduced scale
    full = process(open_rgb(tmp_path / "big.jpg"), aspect, clip336)  # today's path: full decode + processor
    fast = load_image(tmp_path / "big.jpg", aspect, clip336)
    diff = (fast - full).abs()
    assert float(diff.mean()) <= 0.005 and float(diff.max()) <= 0.25
    # an image not bigger than twice the target is decoded in full: the one-level bound holds
    photo(600, 500, 3).save(tmp_path / "small.jpg", quality=90)
    small = (load_image(tmp_path / "small.jpg", aspect, clip336)
             - process(open_rgb(tmp_path / "small.jpg"), aspect, clip336)).abs()
    assert float(small.max()) <= ONE_LEVEL + 1e-5


def test_processors_the_torch_path_cannot_mirror_are_called_as_they_are(tmp_path, caplog):
    from transformers.models.clip import CLIPImageProcessorPil

    lanczos = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}, resample=1)
    with caplog.at_level(logging.INFO, logger="llava_hydra.data.pixels"):
        p = pipeline(lanczos)
    assert p.name == "processor" and "images: processor for CLIPImageProcessorPil" in caplog.text
    photo(50, 40, 4).save(tmp_path / "a.png")
    img = open_rgb(tmp_path / "a.png")
    assert (p(img, "square") - lanczos(img, return_tensors="pt")["pixel_values"][0]).abs().max() == 0
    assert pipeline(lanczos) is p  # chosen once per processor


def test_a_torch_path_that_disagrees_falls_back_to_the_processor(clip336, tmp_path, caplog):
    p = Pipeline(clip336)
    p.plan["scale"] = p.plan["scale"] * 2  # a broken plan: the first image's check catches it
    img = photo(400, 400, 5)
    with caplog.at_level(logging.WARNING, logger="llava_hydra.data.pixels"):
        out = p(img, "square")
    assert p.name == "processor" and "using the processor" in caplog.text
    assert (out - process(img, "square", clip336)).abs().max() == 0
