"""Server submission files and MMBench prompts, compared with what LLaVA's own code writes for the
same input: scripts/convert_vqav2_for_submission.py, scripts/convert_mmbench_for_submission.py
and llava/eval/model_vqa_mmbench.py (which read the TSV with pandas: NA cells, integer index).
The expected outputs are written out literally."""

from __future__ import annotations

import base64
import io
import json
import sys

import pytest
from PIL import Image

from llava_hydra.eval import submission
from llava_hydra.eval.benchmarks import load_items
from llava_hydra.eval.mmbench import is_none, submission_table

LETTER = "Answer with the option's letter from the given choices directly."


def rows(*pairs):
    return [{"question_id": q, "prompt": "", "text": t} for q, t in pairs]


def test_vqav2_submission_as_convert_vqav2_for_submission(tmp_path):
    split = tmp_path / "llava_vqav2_mscoco_test2015.jsonl"
    split.write_text("".join(json.dumps({"question_id": q, "image": f"{q}.jpg", "text": "?"}) + "\n"
                             for q in (1, 2, 3, 4)))
    answers = rows((3, "Two dogs."),
                   (1, "Yes" + "." * 33),  # EvalAIAnswerProcessor drops 32 full stops: "yes."
                   (5, "extra"),  # not in the test split: not written
                   (3, "The Man's hat!"))  # a later answer of the same id wins: "man 's hat"
    out = submission.vqav2(answers, str(split), tmp_path)
    # the test split's order; "" for 2 and 4 (unanswered); json.dump's default separators
    assert out.read_text() == ('[{"question_id": 1, "answer": "yes."}, {"question_id": 2, "answer": ""}, '
                               '{"question_id": 3, "answer": "man \'s hat"}, {"question_id": 4, "answer": ""}]')


def b64_png() -> str:
    buf = io.BytesIO()
    Image.new("RGB", (8, 6), "green").save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def write_mmbench(tmp):
    img = b64_png()
    header = ["index", "question", "hint", "A", "B", "C", "D", "answer", "category", "image", "source",
              "l2-category", "comment", "split"]
    body = [["7", "Which animal?", "nan", "cat", "dog", "NA", "fish", "A", "animals", img, "s", "l2", "nan", "dev"],
            ["9", "What colour?", "Look: it is sunny.", "red", "blue", "green", "", "C", "colour", img, "s", "l2",
             "", "dev"],
            ["11", "How many?", "N/A", "1", "2", "none", "4", "B", "count", img, "s", "l2", "nan", "dev"]]
    tsv = tmp / "mmbench_dev_20230712.tsv"
    tsv.write_text("\n".join("\t".join(r) for r in [header] + body) + "\n")
    return tsv


@pytest.mark.parametrize("cell,none", [("nan", True), ("NaN", True), ("NA", True), ("N/A", True), ("", True),
                                       ("null", True), ("None", True), ("none", True), ("NONE", True),
                                       (" nan", False), ("n.a.", False), ("0", False), ("Na", False)])
def test_mmbench_missing_cells_as_pandas_and_is_none(cell, none):
    # pandas.read_table's NA spellings (exact), then model_vqa_mmbench.is_none (lower case nan / none)
    assert is_none(cell) is none


def test_mmbench_prompts_as_model_vqa_mmbench(tmp_path):
    items = load_items("mmbench", str(write_mmbench(tmp_path)), None, LETTER)
    # 7: hint "nan" is none; C "NA" is NaN to pandas: options stop there, D "fish" after the gap is dropped
    # 9: hint + "\n" + question; D "" is NaN
    # 11: hint "N/A" is NaN; C "none" is none to is_none
    assert [it.question_id for it in items] == [7, 9, 11]
    assert [it.prompt for it in items] == ["Which animal?\nA. cat\nB. dog",
                                           "Look: it is sunny.\nWhat colour?\nA. red\nB. blue\nC. green",
                                           "How many?\nA. 1\nB. 2"]
    assert items[0].text == f"Which animal?\nA. cat\nB. dog\n{LETTER}"
    assert [it.extra for it in items] == [
        {"round_id": 0, "options": ["cat", "dog"], "option_char": ["A", "B"]},
        {"round_id": 0, "options": ["red", "blue", "green"], "option_char": ["A", "B", "C"]},
        {"round_id": 0, "options": ["1", "2"], "option_char": ["A", "B"]}]
    assert items[0].image.size == (8, 6)


def test_mmbench_submission_as_convert_mmbench_for_submission(tmp_path, monkeypatch):
    tsv = write_mmbench(tmp_path)
    answers = rows((9, "C"), (11, "B"), ("7", "A"))  # "7" is not the index 7 (df['index'] == '7' is False)
    columns, table = submission_table(answers, str(tsv))
    # hint, category, image, source, l2-category, comment dropped; prediction the 7th column;
    # index an int; NaN cells (NA, "", nan) None; "none" stays a string (not a pandas NA spelling)
    assert columns == ["index", "question", "A", "B", "C", "D", "prediction", "answer", "split"]
    assert table == [[7, "Which animal?", "cat", "dog", None, "fish", None, "A", "dev"],
                     [9, "What colour?", "red", "blue", "green", None, "C", "C", "dev"],
                     [11, "How many?", "1", "2", "none", "4", "B", "B", "dev"]]
    monkeypatch.setitem(sys.modules, "openpyxl", None)  # the .tsv fallback, whatever is installed
    out = submission.mmbench(answers, str(tsv), tmp_path)
    assert out.name == "mmbench_submission.tsv"
    assert out.read_text() == ("index\tquestion\tA\tB\tC\tD\tprediction\tanswer\tsplit\n"
                               "7\tWhich animal?\tcat\tdog\t\tfish\t\tA\tdev\n"
                               "9\tWhat colour?\tred\tblue\tgreen\t\tC\tC\tdev\n"
                               "11\tHow many?\t1\t2\tnone\t4\tB\tB\tdev\n")


def test_mmbench_answers_matching_no_index_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="no answer's question_id equals an index of the TSV"):
        submission_table(rows(("7", "A"), ("9", "C")), str(write_mmbench(tmp_path)))
