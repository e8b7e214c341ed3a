"""Image-level bad input (issue 17.6): a truncated JPEG, paths outside data.image_folder and
images over data.max_image_pixels are refused in training (raise: file + index + id; skip: a
count) and in ``data.check --images`` alike, by the same function."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

import stand_ins as testing
from llava_hydra.data.check import check_dataset
from llava_hydra.data.dataset import LazySupervisedDataset
from llava_hydra.data.images import ImageError, ImageSource
from llava_hydra.data.records import BadSampleError


@pytest.fixture()
def folder(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    noise = np.random.default_rng(0).integers(0, 255, (150, 200, 3), dtype=np.uint8)
    Image.fromarray(noise).save(images / "ok.jpg", quality=95)  # mostly entropy-coded data, little header
    full = (images / "ok.jpg").read_bytes()
    (images / "cut.jpg").write_bytes(full[: len(full) * 2 // 3])  # header intact, data cut
    Image.new("RGB", (40, 30), (0, 0, 0)).save(tmp_path / "outside.png")
    os.symlink(tmp_path / "outside.png", images / "link.png")
    Image.new("RGB", (300, 200), (1, 2, 3)).save(images / "big.png")  # 60,000 pixels
    return images


def test_each_refusal_says_what_and_where(folder):
    src = ImageSource(folder, max_pixels=50_000)
    assert src.check("ok.jpg", decode=True) is None
    with Image.open(folder / "cut.jpg") as im:
        assert im.size == (200, 150)  # opening alone (the old check) finds nothing wrong
    cut = src.check("cut.jpg", decode=True)
    assert cut.kind == "unreadable_image" and "cannot read image" in str(cut) and "truncated" in str(cut)
    assert src.check("cut.jpg") is None  # without decode only the path is checked
    for name, how in (("../outside.png", "a '../' path"), (str(folder.parent / "outside.png"), "an absolute path")):
        problem = str(src.check(name))
        assert f"image path {name!r} leaves data.image_folder" in problem and how in problem
        assert "data.allow_images_outside_folder=true" in problem
    assert src.check("link.png", decode=True) is None  # a symlink in the user's own folder: followed (checked lexically)
    assert "300x200 = 0.1 MP, over data.max_image_pixels=50000" in str(src.check("big.png", decode=True))
    with pytest.raises(ImageError, match="over data.max_image_pixels"):
        src.open("big.png")
    allowed = ImageSource(folder, allow_outside=True, max_pixels=None)
    assert [allowed.check(n, True) for n in ("../outside.png", "link.png", "big.png")] == [None, None, None]


def _dataset(tmp_path, folder, on_bad_sample, **kw):
    names = ["ok.jpg", "cut.jpg", "../outside.png", "link.png", "big.png"]
    records = [{"id": f"r{k}", "image": n, "conversations": [{"from": "human", "value": "<image>\nWhat?"},
                                                             {"from": "gpt", "value": "red"}]}
               for k, n in enumerate(names)]
    (tmp_path / "d.json").write_text(json.dumps(records))
    tok = testing.bpe_tokenizer(tmp_path / "tok", vocab_size=300)
    return LazySupervisedDataset(tmp_path / "d.json", tok, testing.clip_processor(32), "v1", image_folder=folder,
                                 num_image_tokens=4, on_bad_sample=on_bad_sample, max_image_pixels=50_000, **kw)


def test_training_refuses_them_naming_file_index_and_id(tmp_path, folder):
    ds = _dataset(tmp_path, folder, "raise")
    assert ds[0]["pixel_values"].shape == (3, 32, 32)
    assert ds[3]["pixel_values"].shape == (3, 32, 32)  # link.png: a symlink inside the folder is followed
    for i, problem in ((1, "truncated"), (2, "leaves data.image_folder"), (4, "over data.max_image_pixels")):
        with pytest.raises(BadSampleError, match=rf"d\.json: sample {i} \(id='r{i}'\): .*") as e:
            ds[i]
        assert problem in str(e.value)
    skip = _dataset(tmp_path, folder, "skip")
    assert all(skip[i]["pixel_values"].shape == (3, 32, 32) for i in range(5))  # each replaced by sample 0
    assert skip.report()["skipped"] == 3
    allowed = _dataset(tmp_path, folder, "raise", allow_images_outside_folder=True)
    assert allowed[2]["pixel_values"].shape == allowed[3]["pixel_values"].shape == (3, 32, 32)


def test_data_check_images_finds_the_same(tmp_path, folder):
    ds = _dataset(tmp_path, folder, "skip")
    decoded = check_dataset(ds, decode_images=True)
    by_kind = lambda report, kind: [i for i, *_ in report["found"][kind]]  # noqa: E731
    assert by_kind(decoded, "unreadable_image") == [1] and by_kind(decoded, "image_too_large") == [4]
    assert by_kind(decoded, "image_outside_folder") == [2]
    assert decoded["errors"] == 3
    looked_up = check_dataset(ds, decode_images=False)  # paths are checked even without --images
    assert by_kind(looked_up, "image_outside_folder") == [2] and looked_up["errors"] == 1
