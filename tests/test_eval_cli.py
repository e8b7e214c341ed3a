"""``python -m llava_hydra.eval`` on a tiny saved model and small benchmark files in LLaVA's formats:
the answers files have LLaVA's fields and prompts, results are scored and tabled, a rerun only
answers what is missing, batching (left padding) does not change the answers, multirun tables
one row per benchmark."""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent / "helpers"))
from local_parts import save_parts  # noqa: E402
from saved_models import saved_model  # noqa: E402

from llava_hydra.commands.eval_cli import run  # noqa: E402

LLAVA_FIELDS = {"question_id", "prompt", "text", "answer_id", "model_id", "metadata"}
SHORT = "Answer the question using a single word or phrase."
LETTER = "Answer with the option's letter from the given choices directly."


def image(path: Path, size=(40, 28), colour="red") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)


def jsonl(path: Path, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from hydra import compose as _compose

    from llava_hydra.config.schema import register_configs

    root = tmp_path_factory.mktemp("eval")
    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_module("llava_hydra.conf", version_base="1.3"):
        model = saved_model(lambda *o: _compose("config", overrides=list(o)), save_parts(root / "parts"),
                            root / "model")
    GlobalHydra.instance().clear()
    ev = root / "eval_root"
    # POPE: model_vqa_loader JSONL; LLaVA's files already end with the suffix (q2 does): not appended twice
    for name, colour in (("a.jpg", "red"), ("b.jpg", "blue")):
        image(ev / "pope" / "val2014" / name, colour=colour)
    jsonl(ev / "pope" / "llava_pope_test.jsonl",
          [{"question_id": 1, "image": "a.jpg", "text": "Is there a dog in the image?", "category": "random"},
           {"question_id": 2, "image": "b.jpg", "text": f"Is there a cat in the image?\n{SHORT}", "category": "random"},
           {"question_id": 3, "image": "a.jpg", "text": "Is there a car in the image?", "category": "popular"},
           {"question_id": 4, "image": "b.jpg", "text": "Is there a bus in the image?", "category": "popular"}])
    jsonl(ev / "pope" / "coco" / "coco_pope_random.json", [{"label": "yes"}, {"label": "no"}])
    jsonl(ev / "pope" / "coco" / "coco_pope_popular.json", [{"label": "no"}, {"label": "yes"}])
    # ScienceQA: model_vqa_science's JSON list
    image(ev / "scienceqa" / "images" / "test" / "11" / "image.png")
    (ev / "scienceqa" / "llava_test_CQM-A.json").write_text(json.dumps([
        {"id": "11", "image": "11/image.png", "conversations": [
            {"from": "human", "value": "<image>\nContext: a map.\nWhich is north?\nA. up\nB. down"},
            {"from": "gpt", "value": "A"}]},
        {"id": "12", "conversations": [{"from": "human", "value": "Which is a fish?\nA. cat\nB. trout"},
                                       {"from": "gpt", "value": "B"}]}]))
    (ev / "scienceqa" / "problems.json").write_text(json.dumps({"11": {"choices": ["up", "down"], "answer": 0},
                                                               "12": {"choices": ["cat", "trout"], "answer": 1}}))
    (ev / "scienceqa" / "pid_splits.json").write_text(json.dumps({"test": ["11", "12"]}))
    # MMBench: TSV with base64 images
    buf = io.BytesIO()
    Image.new("RGB", (30, 20), "green").save(buf, format="PNG")
    b64 = base64.b64encode(buf.getvalue()).decode()
    header = "index\tquestion\thint\tA\tB\tC\tD\tanswer\tcategory\timage\tsource\tl2-category\tcomment\tsplit\n"
    (ev / "mmbench").mkdir()
    (ev / "mmbench" / "mmbench_dev_20230712.tsv").write_text(
        header + f"5\tWhat colour?\tnan\tgreen\tred\tnan\tnan\tA\tcolour\t{b64}\ts\tl2\tnan\tdev\n"
        + f"6\tWhich shape?\tLook closely.\tsquare\tcircle\tline\tnan\tA\tshape\t{b64}\ts\tl2\tnan\tdev\n")
    # own data: the training format
    image(ev / "own" / "imgs" / "x.png")
    (ev / "own" / "held_out.json").write_text(json.dumps([
        {"id": "h1", "image": "x.png", "conversations": [{"from": "human", "value": "<image>\nWhat colour is it?"},
                                                           {"from": "gpt", "value": "Red."}]},
        {"id": "h2", "conversations": [{"from": "human", "value": "Say hi."}, {"from": "gpt", "value": "hi"}]}]))
    return model, ev


def evaluate(model, ev, *overrides):
    GlobalHydra.instance().clear()
    with initialize_config_module("llava_hydra.conf", version_base="1.3"):
        cfg = compose("eval", overrides=[f"model_dir={model}", f"paths.eval_root={ev}", "device=cpu",
                                         "benchmark.max_new_tokens=4", *overrides])
    GlobalHydra.instance().clear()
    return run(cfg)


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_pope_answers_resume_and_batching(setup, tmp_path):
    model, ev = setup
    metrics = evaluate(model, ev, "benchmark=pope", f"output_root={tmp_path}", "batch_size=3")
    rows = read(tmp_path / "pope" / "answers.jsonl")
    assert [r["question_id"] for r in rows] == [1, 2, 3, 4]
    assert all(set(r) == LLAVA_FIELDS for r in rows) and {r["model_id"] for r in rows} == {"model"}
    assert rows[0]["prompt"] == f"Is there a dog in the image?\n{SHORT}"
    assert rows[1]["prompt"] == f"Is there a cat in the image?\n{SHORT}"  # not appended twice
    assert {"random/f1", "popular/f1", "f1", "random/yes_ratio"} <= set(metrics)
    assert json.loads((tmp_path / "pope" / "results.json").read_text())["f1"] == metrics["f1"]
    assert "| pope | f1 |" in (tmp_path / "results.md").read_text()

    # one at a time: the same answers (left padding changes nothing)
    evaluate(model, ev, "benchmark=pope", f"output_root={tmp_path / 'one'}", "batch_size=1")
    assert [r["text"] for r in read(tmp_path / "one" / "pope" / "answers.jsonl")] == [r["text"] for r in rows]

    # resume: a kept answer is not recomputed, a missing one is, order is the question file's
    kept = [dict(rows[0], text="KEPT"), rows[2], rows[3]]
    (tmp_path / "pope" / "answers.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kept) + '{"torn')
    evaluate(model, ev, "benchmark=pope", f"output_root={tmp_path}")
    again = read(tmp_path / "pope" / "answers.jsonl")
    assert [r["question_id"] for r in again] == [1, 2, 3, 4]
    assert again[0]["text"] == "KEPT" and again[2]["answer_id"] == rows[2]["answer_id"]
    assert again[1]["text"] == rows[1]["text"] and again[1]["answer_id"] != rows[1]["answer_id"]


def test_science_qa_mmbench_and_own_data(setup, tmp_path):
    model, ev = setup
    metrics = evaluate(model, ev, "benchmark=sqa", f"output_root={tmp_path}")
    rows = read(tmp_path / "sqa" / "answers.jsonl")
    assert [r["question_id"] for r in rows] == ["11", "12"] and all(set(r) == LLAVA_FIELDS for r in rows)
    assert rows[0]["prompt"] == f"<image>\nContext: a map.\nWhich is north?\nA. up\nB. down\n{LETTER}"
    assert rows[1]["prompt"] == f"Which is a fish?\nA. cat\nB. trout\n{LETTER}"
    assert metrics["n"] == 2 and metrics["n_img"] == 1

    metrics = evaluate(model, ev, "benchmark=mmbench", f"output_root={tmp_path}")
    rows = read(tmp_path / "mmbench" / "answers.jsonl")
    assert [r["question_id"] for r in rows] == [5, 6]
    assert set(rows[1]) == LLAVA_FIELDS | {"round_id", "options", "option_char"}
    assert rows[1]["prompt"] == "Look closely.\nWhich shape?\nA. square\nB. circle\nC. line"
    assert rows[1]["options"] == ["square", "circle", "line"] and rows[1]["option_char"] == ["A", "B", "C"]
    assert Path(metrics["submission"]).exists()

    metrics = evaluate(model, ev, "benchmark=own", f"benchmark.question_file={ev / 'own' / 'held_out.json'}",
                       f"benchmark.image_folder={ev / 'own' / 'imgs'}", f"output_root={tmp_path}")
    rows = read(tmp_path / "own" / "answers.jsonl")
    assert [r["question_id"] for r in rows] == ["h1", "h2"] and [r["reference"] for r in rows] == ["Red.", "hi"]
    assert {"exact", "f1"} <= set(rows[0]) and metrics["n"] == 2 and 0 <= metrics["token_f1"] <= 100
    table = (tmp_path / "results.md").read_text()
    assert "| sqa | img_accuracy |" in table and "| own | token_f1 |" in table and "| mmbench | n | 2 |" in table


def test_missing_question_file_names_it(setup, tmp_path):
    model, ev = setup
    with pytest.raises(FileNotFoundError, match="gqa/llava_gqa_testdev_balanced.jsonl"):
        evaluate(model, ev, "benchmark=gqa", f"output_root={tmp_path}")


@pytest.mark.e2e
def test_multirun_tables_one_row_per_benchmark(setup, tmp_path):
    model, ev = setup
    subprocess.run([sys.executable, "-m", "llava_hydra.eval", "-m", f"model_dir={model}", f"paths.eval_root={ev}",
                    "benchmark=pope,sqa", f"output_root={tmp_path}", "benchmark.max_new_tokens=2", "device=cpu"],
                   check=True, env=os.environ.copy(), capture_output=True)
    table = (tmp_path / "results.md").read_text()
    assert "| pope | f1 |" in table and "| sqa | img_accuracy |" in table


@pytest.mark.e2e
def test_sharded_over_two_processes_equals_one_process(setup, tmp_path):
    model, ev = setup
    common = [f"model_dir={model}", f"paths.eval_root={ev}", "benchmark=pope", "benchmark.max_new_tokens=4",
              "device=cpu", "batch_size=2"]
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29533",
                    "-m", "llava_hydra.eval", *common, f"output_root={tmp_path / 'two'}"],
                   check=True, env=os.environ.copy(), capture_output=True)
    evaluate(model, ev, "benchmark=pope", "batch_size=2", f"output_root={tmp_path / 'one'}")
    two, one = (read(tmp_path / d / "pope" / "answers.jsonl") for d in ("two", "one"))
    assert [(r["question_id"], r["text"]) for r in two] == [(r["question_id"], r["text"]) for r in one]
    assert not list((tmp_path / "two" / "pope").glob("answers.rank*.jsonl"))  # merged and removed
    assert (json.loads((tmp_path / "two" / "pope" / "results.json").read_text())["f1"]
            == json.loads((tmp_path / "one" / "pope" / "results.json").read_text())["f1"])
