"""Each image problem carries its kind from where it is raised: a skip run counts a missing
file, a truncated JPEG, an image over data.max_image_pixels and one outside data.image_folder
each under its own reason, and ``data.check`` reports them under the same kinds (not by
searching the message)."""

from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pytest
from PIL import Image

import stand_ins as testing
from llava_hydra.data import check
from llava_hydra.data.dataset import LazySupervisedDataset
from llava_hydra.data.images import ImageError
from stand_ins import turns

NAMES = ["ok.jpg", "gone.jpg", "cut.jpg", "big.png", "../other/x.png"]  # sample i uses NAMES[i]
KINDS = {"missing_image": 1, "unreadable_image": 2, "image_too_large": 3, "image_outside_folder": 4}


@pytest.fixture()
def data(tmp_path):
    """tmp/images/ with a good JPEG, a truncated one, a 60,000-pixel PNG and a subfolder that is a
    symlink to tmp/other/ (accepted: the user's own link); tmp/d.json: one record per NAMES entry
    (the last written as ../other/x.png: it leaves the folder)."""
    images, other = tmp_path / "images", tmp_path / "other"
    images.mkdir()
    other.mkdir()
    noise = np.random.default_rng(0).integers(0, 255, (150, 200, 3), dtype=np.uint8)
    Image.fromarray(noise).save(images / "ok.jpg", quality=95)
    full = (images / "ok.jpg").read_bytes()
    (images / "cut.jpg").write_bytes(full[: len(full) * 2 // 3])  # header intact, data cut
    Image.new("RGB", (300, 200), (1, 2, 3)).save(images / "big.png")
    Image.new("RGB", (20, 20), (9, 9, 9)).save(other / "x.png")
    os.symlink(other, images / "elsewhere")
    records = [{"id": f"r{k}", "image": name, "conversations": turns("<image>\nWhat?", "red")}
               for k, name in enumerate(NAMES)]
    (tmp_path / "d.json").write_text(json.dumps(records))
    return tmp_path


def test_a_skip_run_counts_each_image_problem_under_its_kind(data):
    tok = testing.bpe_tokenizer(data / "tok", vocab_size=300)
    ds = LazySupervisedDataset(data / "d.json", tok, testing.clip_processor(32), "v1", image_folder=data / "images",
                               num_image_tokens=4, on_bad_sample="skip", max_image_pixels=50_000)
    assert all(ds[i]["pixel_values"].shape == (3, 32, 32) for i in range(len(NAMES)))  # bad ones replaced
    report = ds.report()
    assert report["skipped"] == 4
    assert report["by_reason"] == {"missing_image": 1, "unreadable_image": 1, "image_too_large": 1,
                                   "image_outside_folder": 1}
    for i, problem in ((1, "image file not found"), (2, "truncated"), (3, "over data.max_image_pixels=50000"),
                       (4, "leaves data.image_folder")):  # messages still name file, index, id
        assert any(f"d.json: sample {i} (id='r{i}'): " in m and problem in m for m in report["examples"])


@pytest.mark.parametrize("decode", [True, False])
def test_data_check_reports_them_by_kind(data, tmp_path_factory, capsys, decode):
    cache = tmp_path_factory.mktemp("cache")
    overrides = [f"data.data_path={data / 'd.json'}", f"data.image_folder={data / 'images'}", "data.synthetic=null",
                 "stage=finetune", "data.max_image_pixels=50000", f"paths.cache_dir={cache}"]
    rc = check.main([*overrides, *(["--images"] if decode else []), "--json", str(data / "r.json")])
    out = capsys.readouterr().out
    assert rc == 1
    found = json.loads((data / "r.json").read_text())["found"]
    # without --images a file is only looked up: a truncated or too large file is not opened
    expected = KINDS if decode else {"missing_image": 1, "image_outside_folder": 4}
    assert {kind: [i for i, *_ in found[kind]] for kind in KINDS} == {
        kind: [i] if kind in expected else [] for kind, i in KINDS.items()}
    assert f"[image_outside_folder] sample 4 (id='r4'): image path '../other/x.png' leaves" in out
    assert "data.allow_images_outside_folder=true" in out
    if decode:
        assert "[unreadable_image] sample 2 (id='r2'): cannot read image" in out
        assert "[image_too_large] sample 3 (id='r3'): image is 300x200" in out


def test_the_kind_survives_a_worker_process_and_must_be_known():
    err = pickle.loads(pickle.dumps(ImageError("image file not found: a.png", "missing_image")))
    assert (err.kind, str(err)) == ("missing_image", "image file not found: a.png")
    with pytest.raises(ValueError, match="ImageError kind must be one of"):
        ImageError("what?", "image")
