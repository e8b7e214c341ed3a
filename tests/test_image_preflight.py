"""Image-folder pre-flight: a run whose records name images outside data.image_folder (a path
written with ``../`` past the folder's top, or absolute) stops before its model is built, naming
the data file, a sample (index and id), where the path points and the flag to set; the flag lets it
go on; under on_bad_sample=skip it goes on and the log says how many records will be skipped.
A symlinked subfolder inside the image folder (LLaVA's playground layout) is the user's own and is
accepted: the check is lexical. Only the distinct folders are checked, from the record store's
column: no file is looked up."""

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
    tmp/user/qa.json: 6 records, samples 1 and 3 with an image written as ../../other/b.png (out of
    the folder), sample 5 with one under the symlinked elsewhere/ (in it)."""
    images, other = tmp_path / "user" / "images", tmp_path / "other"
    images.mkdir(parents=True)
    other.mkdir()
    Image.new("RGB", (40, 36), "red").save(images / "r.png")
    Image.new("RGB", (40, 36), "blue").save(other / "b.png")
    os.symlink(other, images / "elsewhere")
    q = "<image>\nWhat color is the shape?"
    records = [{"id": "u0", "image": "r.png", "conversations": turns(q, "red")},
               {"id": "u1", "image": "../../other/b.png", "conversations": turns(q, "blue")},
               {"id": "t2", "conversations": turns("Repeat the word: apple", "apple")},
               {"id": "u3", "image": ["r.png", "../../other/b.png"], "conversations": turns(q + "<image>", "both")},
               {"id": "u4", "image": "not_there/x.png", "conversations": turns(q, "red")},
               {"id": "u5", "image": "elsewhere/b.png", "conversations": turns(q, "blue")}]
    (tmp_path / "user" / "qa.json").write_text(json.dumps(records))
    return tmp_path


def test_only_paths_written_out_of_the_folder_are_found_from_the_store_or_a_list(user_data, tmp_path):
    images, data = user_data / "user" / "images", user_data / "user" / "qa.json"
    store, _ = open_records(data, tmp_path / "cache")
    listed, _ = load_records(data)
    for records in (store, listed):
        # elsewhere/ is a symlink pointing out: the user's own, accepted; not_there/ does not exist: not this check's
        (found,) = folders_outside(records, images)
        assert (found.folder, found.resolved, found.records.tolist(), found.example) == \
            ("../../other/", str(user_data / "other"), [1, 3], "../../other/b.png")
    outside = [{"id": "a", "image": "../x.png"}, {"id": "b", "image": str(user_data / "other" / "b.png")}, {"id": "c"},
               {"id": "d", "image": "coco/../../y.png"}, {"id": "e", "image": "coco/../gqa/z.png"}]
    assert [(o.folder, o.records.tolist()) for o in folders_outside(outside, images)] == \
        [("../", [0]), (str(user_data / "other") + "/", [1]), ("coco/../../", [3])]
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


def test_a_run_with_paths_out_of_the_folder_stops_before_the_model_is_built(run_until_model, user_data):
    with pytest.raises(BadSampleError) as e:
        run_until_model()
    message = str(e.value)
    assert message.startswith(f"{user_data / 'user' / 'qa.json'}: sample 1 (id='u1'): image path '../../other/b.png' "
                              f"goes through '../../other', which leaves data.image_folder=")
    assert f"(to {user_data / 'other'}); 2 record(s) in all" in message
    assert "Set data.allow_images_outside_folder=true" in message
    with pytest.raises(ModelBuilt):  # allowed: on to the model
        run_until_model("data.allow_images_outside_folder=true")


def test_under_skip_the_run_goes_on_and_says_how_many_will_be_skipped(run_until_model, caplog):
    with caplog.at_level(logging.WARNING, logger="llava_hydra.data.preflight"), pytest.raises(ModelBuilt):
        run_until_model("data.on_bad_sample=skip")
    (line,) = [r.getMessage() for r in caplog.records if r.name == "llava_hydra.data.preflight"]
    assert "data: 2 of 6 records of " in line and "they will be skipped" in line
    assert "e.g. sample 1: image path '../../other/b.png' goes through '../../other'" in line


def test_llavas_playground_layout_symlinked_subfolders_train(run_until_model, user_data):
    """Only paths inside the folder (u0, u5 through the symlinked elsewhere/): on to the model."""
    records = json.loads((user_data / "user" / "qa.json").read_text())
    (user_data / "user" / "qa.json").write_text(json.dumps([records[0], records[2], records[5]]))
    with pytest.raises(ModelBuilt):
        run_until_model()
