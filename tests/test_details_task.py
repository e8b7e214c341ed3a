"""The high-resolution task (data=synthetic_details, llava_hydra/data/details.py) at pixel level: the mark's
texture -- the answer -- is gone from the 32-px base view a base-resolution model sees (the four textures'
base views differ by at most 2 of 255 levels), and intact in tiny_next's AnyRes crops (110 levels between
vertical and horizontal stripes). The trained comparison is in tests/test_details_compare.py (slow)."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch

from llava_hydra.data.details import PATTERNS, generate, render, texture

PINPOINTS = [[32, 64], [64, 32], [64, 64], [96, 32], [32, 96]]  # conf/model/tiny_next.yaml


@pytest.fixture(scope="module")
def processors():
    """The tiny tower's processor (builtin://tiny-clip's settings) and tiny_next's AnyRes processor around it."""
    from transformers.models.clip import CLIPImageProcessorPil, CLIPVisionConfig

    from llava_hydra.data.anyres import family_image_processor

    clip = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    anyres = family_image_processor("llava_next", clip, CLIPVisionConfig(image_size=32, patch_size=8), PINPOINTS)
    return clip, anyres


def levels(clip, pixels):
    """Normalized pixel values back to 8-bit levels."""
    return pixels * torch.tensor(clip.image_std).view(3, 1, 1) * 255 + torch.tensor(clip.image_mean).view(3, 1, 1) * 255


def test_texture_signs_and_fade():
    v, h, c = texture("vertical", 24), texture("horizontal", 24), texture("checkered", 24)
    assert (v[12, 12], v[12, 13], v[13, 12]) == (1.0, -1.0, 1.0)  # columns alternate
    assert (h[12, 12], h[12, 13], h[13, 12]) == (1.0, 1.0, -1.0)  # rows alternate
    assert (c[12, 12], c[12, 13], c[13, 13]) == (1.0, -1.0, 1.0)
    assert not texture("plain", 24).any()
    assert v[0, 0] == pytest.approx(0.000387, abs=1e-6)  # smoothstep(0.5 / 6) ** 2: faded in from the edge
    assert v[3, 12] == pytest.approx(0.623843, abs=1e-6)  # smoothstep(3.5 / 6): 3 px in from the top edge
    assert v[12, 3] == pytest.approx(-0.623843, abs=1e-6)  # 3 px in from the left, an odd column
    assert v[6, 12] == 1.0  # full amplitude from TAPER px in


def test_texture_is_gone_at_base_resolution_and_intact_in_the_crops(processors):
    from llava_hydra.data.pixels import pipeline

    clip, anyres = processors
    base_path = pipeline(clip)  # what a model=tiny run (data.image_aspect_ratio=pad) feeds the tower
    scenes = [("red", 24, 20, 20, 128, 0), ("yellow", 20, 2, 42, 95, 1), ("blue", 28, 34, 6, 200, 2),
              ("green", 22, 30, 30, 150, 3)]
    for color, side, x0, y0, grey, seed in scenes:
        images = {p: render(p, color, side, x0, y0, grey, seed) for p in PATTERNS}
        native = {p: np.asarray(im, dtype=float) for p, im in images.items()}
        base = {p: levels(clip, base_path(im, "pad")) for p, im in images.items()}
        crops = {p: anyres(images=[im], return_tensors="pt")["pixel_values"][0] for p, im in images.items()}
        for p in PATTERNS:
            assert crops[p].shape == (5, 3, 32, 32)  # the base view + the 2x2 grid of the 64x64 pinpoint
        for a, b in itertools.combinations(PATTERNS, 2):
            assert (base[a] - base[b]).abs().max() <= 2.0 + 1e-3, (color, a, b)  # base: all one plain mark
            view = levels(clip, crops[a][0]) - levels(clip, crops[b][0])  # the AnyRes model's own base view too
            assert view.abs().max() <= 2.0 + 1e-3, (color, a, b)
        cy, cx = y0 + side // 2, x0 + side // 2  # mark centre: full amplitude, +/- 55 levels, +/- 4 noise
        assert abs(native["vertical"][cy, cx, 0] - native["vertical"][cy, cx + 1, 0]) == pytest.approx(110, abs=8)
        assert abs(native["horizontal"][cy, cx, 0] - native["horizontal"][cy + 1, cx, 0]) == pytest.approx(110, abs=8)
        assert abs(native["horizontal"][cy, cx, 0] - native["horizontal"][cy, cx + 1, 0]) <= 8
        # the crops hold the native pixels: crop 1 + 2*row + col is rows/cols [32*row, 32*row + 32)
        for p in PATTERNS:
            grid = torch.cat([torch.cat([levels(clip, crops[p][1 + 2 * r + c]) for c in (0, 1)], dim=2)
                              for r in (0, 1)], dim=1)  # (3, 64, 64)
            assert (grid - torch.tensor(native[p]).permute(2, 0, 1)).abs().max() <= 0.01
        diff = levels(clip, crops["vertical"][1:]) - levels(clip, crops["horizontal"][1:])
        assert diff.abs().max() >= 100


def test_generated_set(tmp_path):
    generate(tmp_path, num_images=32, num_eval=8, seed=0)
    qa = json.loads((tmp_path / "qa.json").read_text())
    held_out = json.loads((tmp_path / "qa_eval.json").read_text())
    assert len(qa) == 32 and len(held_out) == 8
    answers = [[t["value"] for t in r["conversations"][1::2]] for r in qa]
    assert sorted(a for pair in answers for a in pair if a in PATTERNS) == sorted(list(PATTERNS) * 8)
    assert all(len(r["conversations"]) == 2 and r["conversations"][1]["value"] in PATTERNS for r in held_out)
    from PIL import Image

    for record in qa[:8] + held_out:  # each answer is what the pixels show at native resolution
        pattern = next(t["value"] for t in record["conversations"] if t["value"] in PATTERNS)
        img = np.asarray(Image.open(tmp_path / "images" / record["image"]), dtype=float).sum(axis=2)
        assert img.shape == (64, 64)
        # second differences: 4 x 55 levels x 3 channels where a texture alternates at full amplitude;
        # at most ~430 across the mark's edge (its colour against the grey) plus noise
        cols = np.abs(np.diff(img, n=2, axis=1)).max() > 500
        rows = np.abs(np.diff(img, n=2, axis=0)).max() > 500
        seen = {(True, True): "checkered", (True, False): "vertical", (False, True): "horizontal",
                (False, False): "plain"}[cols, rows]
        assert seen == pattern, record["id"]
