"""Image shapes that would blow up memory are refused by data.max_image_pixels applied to the
largest image the pixel path makes: pad's square canvas (a 1x30000 strip would make a 30000x30000
canvas, 2.7 GB as uint8 and more as it is converted) and a shortest-edge resize's output under
square. Refused as ``image_too_large`` (counted under skip), before anything is decoded; the
same in data.check. The test bound is 1 MP, so that a regression allocates little."""

from __future__ import annotations

import json

import pytest
from PIL import Image

import stand_ins as testing
from llava_hydra.data.dataset import BadSampleError, LazySupervisedDataset
from llava_hydra.data.images import ImageError, load_image
from stand_ins import turns

LIMIT = 1_000_000


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return testing.bpe_tokenizer(tmp_path_factory.mktemp("tok") / "bpe")


@pytest.fixture
def folder(tmp_path):
    Image.new("RGB", (10, 2000), (200, 0, 0)).save(tmp_path / "strip.png")  # 20,000 pixels
    Image.new("RGB", (20, 1000), (0, 200, 0)).save(tmp_path / "edge.png")  # canvas 1000x1000 = the limit
    Image.new("RGB", (1, 40000), (0, 0, 200)).save(tmp_path / "thread.png")
    Image.new("RGB", (16, 16), (9, 9, 9)).save(tmp_path / "ok.png")
    return tmp_path


def dataset(tmp_path, tok, folder, image, aspect, policy="raise"):
    records = [{"id": "ok", "image": "ok.png", "conversations": turns("<image>\nWhat?", "Dark.")},
               {"id": "x", "image": image, "conversations": turns("<image>\nWhat?", "A strip.")}]
    (tmp_path / "d.json").write_text(json.dumps(records))
    return LazySupervisedDataset(tmp_path / "d.json", tok, testing.clip_processor(), "v1", image_folder=folder,
                                 image_aspect_ratio=aspect, num_image_tokens=4, on_bad_sample=policy,
                                 max_image_pixels=LIMIT)


def test_a_strip_whose_padded_canvas_is_over_the_limit_is_refused_under_pad(tmp_path, tok, folder):
    ds = dataset(tmp_path, tok, folder, "strip.png", "pad")
    with pytest.raises(BadSampleError) as e:
        ds[1]
    assert f"sample 1 (id='x'): image is 10x2000: its padded square canvas is 2000x2000 = 4.0 MP, over " \
           f"data.max_image_pixels=1000000 (1 MP): {folder / 'strip.png'}" in str(e.value)
    assert e.value.reason == "image_too_large"
    problem = ds.images.check("strip.png", decode=True)  # data.check --images refuses it the same way
    assert problem.kind == "image_too_large" and "padded square canvas is 2000x2000" in str(problem)
    assert dataset(tmp_path, tok, folder, "strip.png", "square")[1]["pixel_values"].shape == (3, 32, 32)


def test_a_canvas_exactly_at_the_limit_is_allowed(tmp_path, tok, folder):
    assert dataset(tmp_path, tok, folder, "edge.png", "pad")[1]["pixel_values"].shape == (3, 32, 32)


def test_an_extreme_ratio_is_refused_under_square_too(tmp_path, tok, folder):
    """1x40000 resized to 32 on its short side would be 32 x 1,280,000 = 41 MP."""
    with pytest.raises(ImageError, match=r"image is 1x40000: resized to 32 on its short side it is 32x1280000 = "
                                         r"41\.0 MP, over data\.max_image_pixels=1000000"):
        load_image(folder / "thread.png", "square", testing.clip_processor(), max_pixels=LIMIT)


def test_refused_shapes_are_skipped_and_counted_as_too_large(tmp_path, tok, folder):
    ds = dataset(tmp_path, tok, folder, "thread.png", "pad", policy="skip")
    assert ds[1]["input_ids"].tolist() == ds[0]["input_ids"].tolist()  # the stand-in: the only good record
    report = ds.report()
    assert report["skipped"] == 1 and report["by_reason"] == {"image_too_large": 1}
    assert "padded square canvas is 40000x40000 = 1600.0 MP" in report["examples"][0]
