"""Each kind of bad input, under data.on_bad_sample=raise (the error names the file, the sample
index and id, and the problem) and skip (a good sample drawn uniformly is handed out instead, each bad
one logged once and counted by report())."""

from __future__ import annotations

import json

import pytest
from PIL import Image

import stand_ins as testing
from stand_ins import turns
from llava_hydra.data.dataset import LazySupervisedDataset
from llava_hydra.data.records import BadSampleError

N_IMG = 4


GOOD_TEXT = {"id": "good", "conversations": turns("Hi.", "Hello!")}


@pytest.fixture(scope="module")
def tok(bpe400):
    return bpe400


@pytest.fixture
def images(tmp_path):
    folder = tmp_path / "img"
    folder.mkdir()
    Image.new("RGB", (24, 16), (10, 200, 10)).save(folder / "ok.png")
    Image.new("RGB", (64, 64), (10, 200, 10)).save(folder / "full.png")
    data = (folder / "full.png").read_bytes()
    (folder / "truncated.png").write_bytes(data[: len(data) // 2])
    (folder / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg" * 10)
    (folder / "empty.png").write_bytes(b"")
    return folder


def dataset(path, tok, folder, policy="raise"):
    return LazySupervisedDataset(path, tok, testing.clip_processor(), "v1", image_folder=folder,
                                 num_image_tokens=N_IMG, on_bad_sample=policy)


BAD_RECORDS = {
    "no_conversations": ({"id": "x"}, "record has no 'conversations'"),
    "empty_conversations": ({"id": "x", "conversations": []}, "'conversations' is empty"),
    "unknown_role": ({"id": "x", "conversations": [{"from": "user", "value": "Hi"}, {"from": "gpt", "value": "Yo"}]},
                     "turn 0: unknown role 'user'"),
    "not_alternating": ({"id": "x", "conversations": [{"from": "human", "value": "a"}, {"from": "human", "value": "b"}]},
                        "turn 1: roles must alternate"),
    "image_tag_in_text_only": ({"id": "x", "conversations": turns("<image>\nWhat is it?", "A dog.")},
                               "1 <image> tag(s) in a text-only sample"),
    "more_tags_than_images": ({"id": "x", "image": "ok.png", "conversations": turns("<image>\n<image> Two?", "No.")},
                              "2 <image> tag(s) in 1 image(s)"),
    "image_without_tag": ({"id": "x", "image": "ok.png", "conversations": turns("What is it?", "A dog.")},
                          "0 <image> tag(s) in 1 image(s)"),
    "non_string_value": ({"id": "x", "conversations": [{"from": "human", "value": 42}, {"from": "gpt", "value": "b"}]},
                         "turn 0: 'value' must be a string, got int"),
    "image_missing": ({"id": "x", "image": "nope.png", "conversations": turns("<image>\nWhat?", "A dog.")},
                      "image file not found"),
    "image_corrupt": ({"id": "x", "image": "corrupt.jpg", "conversations": turns("<image>\nWhat?", "A dog.")},
                      "cannot read image"),
    "image_truncated": ({"id": "x", "image": "truncated.png", "conversations": turns("<image>\nWhat?", "A dog.")},
                        "cannot read image"),
    "image_zero_size": ({"id": "x", "image": "empty.png", "conversations": turns("<image>\nWhat?", "A dog.")},
                        "image file is empty (0 bytes)"),
    "no_answer": ({"id": "x", "conversations": turns("Only a question.")}, "no assistant ('gpt') answer"),
}


@pytest.mark.parametrize("case", sorted(BAD_RECORDS))
def test_raise_names_file_sample_id_and_problem(case, tok, images, tmp_path):
    bad, problem = BAD_RECORDS[case]
    path = tmp_path / "data.json"
    path.write_text(json.dumps([GOOD_TEXT, bad, GOOD_TEXT]))
    ds = dataset(path, tok, images)
    ds[0]
    with pytest.raises(BadSampleError) as e:
        ds[1]
    assert str(e.value).startswith(f"{path}: sample 1 (id='x'): ")
    assert problem in str(e.value)


@pytest.mark.parametrize("case", sorted(BAD_RECORDS))
def test_skip_hands_out_a_good_sample_logs_once_and_counts(case, tok, images, tmp_path, caplog):
    bad, problem = BAD_RECORDS[case]
    path = tmp_path / "data.json"
    good2 = {"id": "good2", "conversations": turns("Bye.", "See you!")}
    path.write_text(json.dumps([GOOD_TEXT, bad, good2]))
    ds = dataset(path, tok, images, policy="skip")
    for _ in range(3):  # record 0: the good stand-in drawn for sample 1 of 3 in epoch 0 (data/stand_in.py)
        assert ds[1]["input_ids"].tolist() == ds[0]["input_ids"].tolist()
    assert sum("skipping sample 1" in r.message and problem in r.message for r in caplog.records) == 1
    report = ds.report()
    assert report["skipped"] == 1 and report["by_kind"] == {"bad": 1} and problem in report["examples"][0]
    assert any("1 of 3 samples skipped" in r.message for r in caplog.records)


def test_record_problems_surface_in_the_length_pass(tok, images, tmp_path):
    """The grouped sampler asks for lengths before training: a malformed record stops the run
    there under raise, and is replaced under skip."""
    path = tmp_path / "data.json"
    path.write_text(json.dumps([GOOD_TEXT, {"id": "x", "conversations": []}, GOOD_TEXT]))
    with pytest.raises(BadSampleError, match=r"sample 1 \(id='x'\): 'conversations' is empty"):
        dataset(path, tok, images).modality_lengths
    ds = dataset(path, tok, images, policy="skip")
    assert len(ds.modality_lengths) == 3 and ds.report()["skipped"] == 1


def test_record_that_is_not_an_object(tok, tmp_path):
    path = tmp_path / "data.json"
    path.write_text(json.dumps([GOOD_TEXT, "just a string", GOOD_TEXT]))
    with pytest.raises(BadSampleError, match=r"sample 1 \(id=None\): record is a str, not an object"):
        dataset(path, tok, tmp_path)[1]
    assert dataset(path, tok, tmp_path, policy="skip")[1]["input_ids"].tolist() == \
        dataset(path, tok, tmp_path)[2]["input_ids"].tolist()


def test_file_not_found(tok, tmp_path):
    with pytest.raises(FileNotFoundError, match=f"data file not found: {tmp_path / 'nope.json'}"):
        dataset(tmp_path / "nope.json", tok, tmp_path)


def test_invalid_json_names_line_and_column(tok, tmp_path):
    path = tmp_path / "data.json"
    path.write_text('[\n {"id": 1, "conversations": []},\n {"id": 2,, }\n]')
    with pytest.raises(BadSampleError, match=rf"{path}: invalid JSON at line 3 column"):
        dataset(path, tok, tmp_path)
    path.write_text('{"id": 1}')
    with pytest.raises(BadSampleError, match="expected a JSON list of records, got dict"):
        dataset(path, tok, tmp_path)


def test_bad_jsonl_line_reports_its_line_number(tok, tmp_path, caplog):
    path = tmp_path / "data.jsonl"
    good = json.dumps(GOOD_TEXT)
    path.write_text("\n".join([good, "", good, '{"id": 3, "conversations": [', good]))  # line 4 is bad
    with pytest.raises(BadSampleError, match=rf"{path}: line 4 is not valid JSON"):
        dataset(path, tok, tmp_path)
    ds = dataset(path, tok, tmp_path, policy="skip")
    assert len(ds) == 4  # blank lines are not records; the bad line keeps its place
    assert ds[2]["input_ids"].tolist() == ds[0]["input_ids"].tolist()
    assert "line 4 is not valid JSON" in ds.report()["examples"][0]


def test_unknown_policy_is_rejected(tok, tmp_path):
    path = tmp_path / "data.json"
    path.write_text(json.dumps([GOOD_TEXT]))
    with pytest.raises(ValueError, match="data.on_bad_sample must be one of"):
        dataset(path, tok, tmp_path, policy="ignore")


def test_all_bad_is_an_error_not_an_endless_loop(tok, tmp_path):
    path = tmp_path / "data.json"
    path.write_text(json.dumps([{"id": 1}, {"id": 2}]))
    with pytest.raises(BadSampleError, match="no usable sample among its 2 records"):
        dataset(path, tok, tmp_path, policy="skip")[0]
