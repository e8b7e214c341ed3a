"""Image-folder pre-flight: a run whose records have images under a symlinked subfolder that
points outside data.image_folder stops before its model is built, naming the data file, a
sample (index and id), where the folder resolves and the flag to set; the flag lets it go on;
under on_bad_sample=skip it goes on and the log says how many records will be skipped. Only the
distinct folders are resolved, from the record store's column: no file is looked up."""

from __future__ import annotations

import json
import logging
import os

import pytest
from PIL import Image

from llava_hydra.data.preflight import folders_outside
from llava_hydra.data.records import BadSampleError, load_records
from llava_hydra.data.store import open_records
from stand_ins import turns


class ModelBuilt(Exception):
    """Raised by the stand-in build_model: the run got past the pre-flight."""


@pytest.fixture
def user_data(tmp_path):
    """tmp/user/images/ holds r.png and `elsewhere`, a symlink to tmp/other/ (b.png);
    tmp/user/qa.json: 5 records, samples 1 and 3 with an image under elsewhere/."""
    images, other = tmp_path / "user" / "images", tmp_path / "other"
    images.mkdir(parents=True)
    other.mkdir()
    Image.new("RGB", (40, 36), "red").save(images / "r.png")
    Image.new("RGB", (40, 36), "blue").save(other / "b.png")
    os.symlink(other, images / "elsewhere")
    q = "<image>\nWhat color is the shape?"
    records = [{"id": "u0", "image": "r.png", "conversations": turns(q, "red")},
               {"id": "u1", "image": "elsewhere/b.png", "conversations": turns(q, "blue")},
               {"id": "t2", "conversations": turns("Repeat the word: apple", "apple")},
               {"id": "u3", "image": ["r.png", "elsewhere/b.png"], "conversations": turns(q + "<image>", "both")},
               {"id": "u4", "image": "not_there/x.png", "conversations": turns(q, "red")}]
    (tmp_path / "user" / "qa.json").write_text(json.dumps(records))
    return tmp_path


def test_only_folders_resolving_outside_are_found_from_the_store_or_a_list(user_data, tmp_path):
    images, data = user_data / "user" / "images", user_data / "user" / "qa.json"
    store, _ = open_records(data, tmp_path / "cache")
    listed, _ = load_records(data)
    for records in (store, listed):
        (found,) = folders_outside(records, images)  # not_there/ does not exist: not this check's business
        assert (found.folder, found.resolved, found.records.tolist(), found.example) == \
            ("elsewhere/", os.path.realpath(user_data / "other"), [1, 3], "elsewhere/b.png")
    outside = [{"id": "a", "image": "../x.png"}, {"id": "b", "image": str(user_data / "other" / "b.png")}, {"id": "c"}]
    assert [(o.folder, o.records.tolist()) for o in folders_outside(outside, images)] == \
        [("../", [0]), (str(user_data / "other") + "/", [1])]
    assert folders_outside([{"id": "t", "conversations": []}], images) == []


@pytest.fixture
def run_until_model(compose_spec, user_data, monkeypatch):
    """run(overrides) up to build_model (a stand-in that raises ModelBuilt); the tiny builtin parts
    are built under the test's cache."""
    from llava_hydra.commands.runner import run

    def fake_build_model(cfg):
        raise ModelBuilt

    monkeypatch.setattr("llava_hydra.model.build_model", fake_build_model)
    root = user_data / "user"

    def _run(*overrides):
        run(compose_spec(f"data.data_path={root / 'qa.json'}", f"data.image_folder={root / 'images'}",
                         "stage=finetune", "stage.pretrain_mm_mlp_adapter=null", f"paths.cache_dir={user_data / 'c'}",
                         f"paths.output_root={user_data / 'out'}", *overrides))
    return _run


def test_a_run_with_a_symlinked_subfolder_stops_before_the_model_is_built(run_until_model, user_data):
    with pytest.raises(BadSampleError) as e:
        run_until_model()
    message = str(e.value)
    assert message.startswith(f"{user_data / 'user' / 'qa.json'}: sample 1 (id='u1'): image path 'elsewhere/b.png' "
                              f"goes through 'elsewhere', which resolves outside data.image_folder=")
    assert f"(to {os.path.realpath(user_data / 'other')}); 2 record(s) in all" in message
    assert "Set data.allow_images_outside_folder=true" in message
    with pytest.raises(ModelBuilt):  # allowed: on to the model
        run_until_model("data.allow_images_outside_folder=true")


def test_under_skip_the_run_goes_on_and_says_how_many_will_be_skipped(run_until_model, caplog):
    with caplog.at_level(logging.WARNING, logger="llava_hydra.data.preflight"), pytest.raises(ModelBuilt):
        run_until_model("data.on_bad_sample=skip")
    (line,) = [r.getMessage() for r in caplog.records if r.name == "llava_hydra.data.preflight"]
    assert "data: 2 of 5 records of " in line and "they will be skipped" in line
    assert "e.g. sample 1: image path 'elsewhere/b.png' goes through 'elsewhere'" in line
