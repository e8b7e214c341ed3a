"""Record-level bad input, caught by the one check training and ``data.check`` share
(records.normalize_turns): ``<image>`` in an answer, empty answers (a single image tagged in a
later human turn is not one: LLaVA trains it, its tag moved to the front of that turn). Under ``raise`` the error names file, index, id and problem; under
``skip`` the sample is replaced and counted with its own reason; ``data.check`` lists it under
its kind with index and id, and its totals add up (bad records are a row); ``data.preview`` of
a bad record prints the problem, not a traceback."""

from __future__ import annotations

import json

import pytest
from PIL import Image

import stand_ins as testing
from llava_hydra.data import check, preview
from llava_hydra.data.dataset import LazySupervisedDataset
from llava_hydra.data.records import BadSampleError, RecordError, normalize_turns
from stand_ins import turns

GOOD_TEXT = {"id": "good", "conversations": turns("Hi.", "Hello!")}
GOOD2 = {"id": "good2", "conversations": turns("Bye.", "See you!")}

BAD = {  # case -> (record, kind, problem)
    "image_in_answer": ({"id": "x", "image": "ok.png", "conversations": turns("What is it?", "It is <image> a dog.")},
                        "image_in_answer", "turn 1: <image> in an answer (gpt turn)"),
    "image_in_answer_text_only": ({"id": "x", "conversations": turns("Hi", "<image>")},
                                  "image_in_answer", "turn 1: <image> in an answer (gpt turn)"),
    "empty_answer": ({"id": "x", "conversations": turns("Say nothing.", "")},
                     "empty_answer", "turn 1: empty answer"),
    "every_answer_blank": ({"id": "x", "conversations": turns("Hi.", " ", "And?", "  \n ")},
                           "empty_answer", "turns 1, 3: empty answer"),
}


@pytest.fixture(scope="module")
def tok(bpe400):
    return bpe400


@pytest.fixture
def folder(tmp_path):
    folder = tmp_path / "img"
    folder.mkdir()
    Image.new("RGB", (24, 16), (10, 200, 10)).save(folder / "ok.png")
    return folder


def dataset(path, tok, folder, policy="raise"):
    return LazySupervisedDataset(path, tok, testing.clip_processor(), "v1", image_folder=folder,
                                 num_image_tokens=4, on_bad_sample=policy)


@pytest.mark.parametrize("case", sorted(BAD))
def test_raise_names_file_index_id_and_problem(case, tok, folder, tmp_path):
    record, kind, problem = BAD[case]
    with pytest.raises(RecordError) as e:
        normalize_turns(record)
    assert e.value.kind == kind
    path = tmp_path / "data.json"
    path.write_text(json.dumps([GOOD_TEXT, record, GOOD2]))
    with pytest.raises(BadSampleError) as e:
        dataset(path, tok, folder)[1]
    assert str(e.value).startswith(f"{path}: sample 1 (id='x'): {problem}")
    with pytest.raises(BadSampleError, match=r"sample 1 \(id='x'\): " + problem.split(":")[0]):
        dataset(path, tok, folder).modality_lengths  # the length pass (before training) stops too


@pytest.mark.parametrize("case", sorted(BAD))
def test_skip_replaces_and_counts_with_its_own_reason(case, tok, folder, tmp_path, caplog):
    record, kind, problem = BAD[case]
    path = tmp_path / "data.json"
    path.write_text(json.dumps([GOOD_TEXT, record, GOOD2]))
    ds = dataset(path, tok, folder, policy="skip")
    assert ds[1]["input_ids"].tolist() == ds[0]["input_ids"].tolist()  # sample 1's stand-in in epoch 0: record 0
    report = ds.report()
    assert report["skipped"] == 1 and report["by_reason"] == {kind: 1} and problem in report["examples"][0]
    assert any(f"1 of 3 samples skipped (1 {kind})" in r.message for r in caplog.records)
    assert "model_max_length" not in report["examples"][0]  # not the truncation reason
    fresh = dataset(path, tok, folder, policy="skip")  # found by the length pass, before any sample is built
    fresh.modality_lengths
    assert fresh.report()["by_reason"] == {kind: 1} and problem in fresh.report()["examples"][0]


def test_several_images_may_stand_in_any_human_turn(tok, folder, tmp_path):
    """Multi-image records (interleaved format) have their tags wherever the conversation needs
    them, the first human turn included or not."""
    Image.new("RGB", (24, 16), (200, 10, 10)).save(folder / "b.png")
    record = {"id": "m", "image": ["ok.png", "b.png"],
              "conversations": turns("Hi.", "Hello!", "<image>\nAnd <image>?", "Two.")}
    path = tmp_path / "data.json"
    path.write_text(json.dumps([record]))
    assert dataset(path, tok, folder)[0]["pixel_values"].shape == (2, 3, 32, 32)


def test_a_single_image_tagged_in_a_later_human_turn_trains(tok, folder, tmp_path):
    """LLaVA's preprocess_multimodal takes the tag from any human turn and moves it to the front
    of that turn; the length pass and data.check accept the record too."""
    record = {"id": "late", "image": "ok.png",
              "conversations": turns("Hi.", "Hello!", "What is it?\n<image>", "A dog.")}
    assert [t["value"] for t in normalize_turns(record)] == ["Hi.", "Hello!", "<image>\nWhat is it?", "A dog."]
    path = tmp_path / "data.json"
    path.write_text(json.dumps([GOOD_TEXT, record]))
    ds = dataset(path, tok, folder)
    sample = ds[1]
    assert sample["pixel_values"].shape == (3, 32, 32) and (sample["labels"] != -100).sum() > 0
    assert not ds.length_table().problems and ds.modality_lengths[1] == len(sample["input_ids"])


# -- data.check and data.preview -------------------------------------------------------------------

@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


def overrides_for(tmp_path, records):
    folder = tmp_path / "img"
    folder.mkdir(exist_ok=True)
    Image.new("RGB", (30, 20), (200, 0, 0)).save(folder / "ok.png")
    Image.new("RGB", (20, 30), (0, 0, 200)).save(folder / "b.png")
    path = tmp_path / "d.json"
    path.write_text(json.dumps(records))
    return [f"data.data_path={path}", f"data.image_folder={folder}", "data.synthetic=null", "stage=finetune",
            "model.model_max_length=200"]


IMAGE = {"image": "ok.png", "conversations": turns("<image>\nWhat color?", "Red.")}
MULTI = {"image": ["ok.png", "b.png"], "conversations": turns("<image> or <image>?", "The first.")}


def test_check_totals_add_up_and_problems_name_index_and_id(tmp_path, cache, capsys):
    records = [{**IMAGE, "id": f"i{k}"} for k in range(11)] + [{**MULTI, "id": f"m{k}"} for k in range(2)] + \
        [{"id": "t0", "conversations": turns("Say yes.", "Yes.")}, {**BAD["empty_answer"][0], "id": "e0"}]
    rc = check.main([*overrides_for(tmp_path, records), f"paths.cache_dir={cache}", "--json", str(tmp_path / "r.json")])
    out = capsys.readouterr().out
    assert rc == 1
    report = json.loads((tmp_path / "r.json").read_text())
    assert (report["samples"], report["image_samples"], report["multi_image_samples"], report["text_only_samples"],
            report["bad_samples"]) == (15, 13, 2, 1, 1)
    assert report["found"]["empty_answer"] == [[14, "e0", "turn 1: empty answer (nothing to train on)"]]
    assert report["found"]["nothing_to_train"] == []  # an empty answer is not a truncation problem
    lines = [" ".join(line.split()) for line in out.splitlines()]
    assert {"samples 15", "with image(s) 13 (2 with several)", "text-only 1", "bad (errors below) 1"} <= set(lines)
    assert "[empty_answer] sample 14 (id='e0'): turn 1: empty answer" in out


def test_check_counts_each_new_kind_and_missing_images_as_bad(tmp_path, cache, capsys):
    records = [{**IMAGE, "id": "i0"}, {**MULTI, "id": "m0", "image": ["ok.png", "gone.png"]}] + \
        [{**BAD[case][0], "id": case} for case in sorted(BAD)]
    rc = check.main([*overrides_for(tmp_path, records), f"paths.cache_dir={cache}", "--json", str(tmp_path / "r.json")])
    out = capsys.readouterr().out
    assert rc == 1
    report = json.loads((tmp_path / "r.json").read_text())
    assert (report["samples"], report["image_samples"], report["text_only_samples"], report["bad_samples"]) == \
        (6, 1, 0, 5)
    found = {kind: [(i, rid) for i, rid, _ in items] for kind, items in report["found"].items() if items}
    assert found == {"missing_image": [(1, "m0")],
                     "empty_answer": [(2, "empty_answer"), (3, "every_answer_blank")],
                     "image_in_answer": [(4, "image_in_answer"), (5, "image_in_answer_text_only")]}
    assert "<image> in an answer (gpt turn)" in out and "image_position" not in report["found"]


@pytest.mark.parametrize("record,problem", [
    (BAD["image_in_answer"][0], "turn 1: <image> in an answer (gpt turn)"),
    ({"id": "x", "conversations": []}, "'conversations' is empty"),
    ({"id": "x", "conversations": turns("Repeat: " + "apple " * 300, "apple")}, "beyond model_max_length"),
])
def test_preview_of_a_bad_record_prints_the_problem(tmp_path, cache, capsys, record, problem):
    overrides = overrides_for(tmp_path, [{**IMAGE, "id": "i0"}, record])
    assert preview.main([*overrides, f"paths.cache_dir={cache}", "--index", "1"]) == 1
    captured = capsys.readouterr()
    assert f"FAILED: {tmp_path / 'd.json'}: sample 1 (id='x'): " in captured.out and problem in captured.out
    assert "Traceback" not in captured.out + captured.err
    assert preview.main([*overrides, f"paths.cache_dir={cache}", "--index", "0"]) == 0  # the good one still shows


def test_preview_of_a_bad_jsonl_line(tmp_path, cache, capsys):
    overrides = overrides_for(tmp_path, [])
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({**IMAGE, "id": "i0"}) + "\n{oops\n")
    assert preview.main([*overrides, f"data.data_path={path}", f"paths.cache_dir={cache}", "--index", "1"]) == 1
    assert "line 2 is not valid JSON" in capsys.readouterr().out


def test_one_blank_answer_among_real_ones_trains_as_in_llava(tok, folder, tmp_path):
    """LLaVA trains such a conversation (the blank turn's label is its end-of-turn token);
    only a record whose every answer is blank has nothing to learn and is refused."""
    record = {"id": "b", "conversations": turns("Hi.", "Hello!", "And?", "  ")}
    path = tmp_path / "data.json"
    path.write_text(json.dumps([record]))
    sample = dataset(path, tok, folder)[0]
    assert (sample["labels"] != -100).sum() > 0
