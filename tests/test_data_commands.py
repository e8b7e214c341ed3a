"""python -m llava_hydra.data.check and .preview, composed from the same Hydra overrides as a
run: check counts and finds problems and exits non-zero on errors; preview marks the labels."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from llava_hydra.data import check, preview
from stand_ins import turns


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")  # builtin tiny tokenizer + length caches, built once


def write(tmp_path, records, name="d.json"):
    folder = tmp_path / "img"
    folder.mkdir(exist_ok=True)
    Image.new("RGB", (30, 20), (200, 0, 0)).save(folder / "ok.png")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 50)
    path = tmp_path / name
    path.write_text(json.dumps(records))
    return [f"data.data_path={path}", f"data.image_folder={folder}", "data.synthetic=null", "stage=finetune",
            "model.model_max_length=120"]


GOOD = [{"id": "a", "image": "ok.png", "conversations": turns("What color?\n<image>", "red")},
        {"id": "b", "conversations": turns("Repeat the word: apple", "apple")}]


def test_check_ok(tmp_path, cache, capsys):
    overrides = write(tmp_path, GOOD * 3)
    rc = check.main([*overrides, f"paths.cache_dir={cache}", "--images", "--json", str(tmp_path / "r.json")])
    out = capsys.readouterr().out
    assert rc == 0, out
    report = json.loads((tmp_path / "r.json").read_text())
    assert (report["samples"], report["image_samples"], report["text_only_samples"]) == (6, 3, 3)
    assert report["errors"] == 0 and "OK: 0 error(s)" in out


def test_check_finds_each_problem_and_fails(tmp_path, cache, capsys):
    records = GOOD + [
        {"id": "c", "conversations": []},  # malformed
        {"id": "d", "conversations": turns("<image>\nWhat?", "x")},  # tag in a text-only sample
        {"id": "e", "image": "missing.png", "conversations": turns("<image>\nWhat?", "x")},
        {"id": "f", "image": "broken.png", "conversations": turns("<image>\nWhat?", "x")},
        {"id": "g", "conversations": turns("Repeat: " + "apple " * 200, "apple")},  # nothing left to train
        {"id": "h", "conversations": turns("Hi", "apple " * 200)},  # over-length, still trainable
    ]
    overrides = write(tmp_path, records)
    rc = check.main([*overrides, f"paths.cache_dir={cache}", "--json", str(tmp_path / "r.json")])
    out = capsys.readouterr().out
    assert rc == 1 and "FAILED" in out
    found = {k: [i for i, *_ in v] for k, v in json.loads((tmp_path / "r.json").read_text())["found"].items()}
    assert found["malformed"] == [2] and found["image_tags"] == [3] and found["missing_image"] == [4]
    assert found["unreadable_image"] == []  # without --images a file is only looked up, not opened
    assert found["nothing_to_train"] == [6] and found["over_length"] == [6, 7]
    check.main([*overrides, f"paths.cache_dir={cache}", "--images", "--json", str(tmp_path / "r.json")])
    found = json.loads((tmp_path / "r.json").read_text())["found"]
    assert [i for i, *_ in found["unreadable_image"]] == [5]
    assert "sample 2 (id='c'): 'conversations' is empty" in capsys.readouterr().out


def test_check_reports_a_bad_jsonl_line_and_a_missing_file(tmp_path, cache, capsys):
    overrides = write(tmp_path, [])
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(GOOD[0]) + "\n{oops\n" + json.dumps(GOOD[1]) + "\n")
    rc = check.main([*overrides, f"data.data_path={path}", f"paths.cache_dir={cache}"])
    out = capsys.readouterr().out
    assert rc == 1 and "line 2 is not valid JSON" in out
    rc = check.main([*overrides, f"data.data_path={tmp_path / 'nope.json'}", f"paths.cache_dir={cache}"])
    assert rc == 1 and "data file not found" in capsys.readouterr().out


def test_preview_marks_exactly_the_trained_text(tmp_path, cache, capsys):
    overrides = write(tmp_path, [{"id": "q", "image": "ok.png",
                                  "conversations": turns("What color?\n<image>", "red", "And the shape?", "circle")}])
    assert preview.main([*overrides, f"paths.cache_dir={cache}", "--index", "0"]) == 0
    out = capsys.readouterr().out
    body = out.split("-" * 72 + "\n", 1)[1]
    marked = [part.split("⟧")[0] for part in body.split("⟦")[1:]]
    assert [m.strip() for m in marked] == ["red</s>", "circle</s>"]
    assert "USER: <image>\nWhat color? ASSISTANT:" in body.replace("⟦", "").replace("⟧", "")
    assert "image tokens" in out and "labelled" in out
    assert preview.main([*overrides, f"paths.cache_dir={cache}", "--index", "5"]) == 2


def test_marked_text():
    assert preview.marked_text("ab cd", [(0, 2), (2, 5)], [False, True], "[", "]") == "ab[ cd]"
