"""Each scorer's numbers on a fixed answers file, worked out by hand in the comments
(as LLaVA's own scoring scripts would compute them)."""

from __future__ import annotations

import json

import pytest

from llava_hydra.eval import owndata, scorers, submission
from llava_hydra.eval.vqa_normalize import normalize, vqa_accuracy


def rows(*pairs):
    return [{"question_id": q, "prompt": p, "text": t} for q, p, t in pairs]


def test_pope_per_split(tmp_path):
    ann = tmp_path / "coco"
    ann.mkdir()
    (ann / "coco_pope_random.json").write_text("".join(json.dumps({"label": x}) + "\n" for x in
                                                       ["yes", "yes", "no", "no"]))
    (ann / "coco_pope_popular.json").write_text("".join(json.dumps({"label": x}) + "\n" for x in ["yes", "no"]))
    questions = [{"question_id": i, "category": c} for i, c in enumerate(["random"] * 4 + ["popular"] * 2)]
    answers = rows((0, "", "Yes, there is a dog."),  # yes / label yes: TP
                   (1, "", "I do not see one. Yes."),  # first sentence has "not": no / yes: FN
                   (2, "", "There is no cat in the image."),  # "no": no / no: TN
                   (3, "", "Yes"),  # yes / no: FP
                   (4, "", "Yes it is"),  # popular: yes / yes: TP
                   (5, "", "Nope."))  # "Nope" is not "no": yes / no: FP
    got = scorers.pope(answers, questions, str(ann))
    # random: TP=FN=TN=FP=1: everything 50%, yes ratio 2/4
    assert {k: v for k, v in got.items() if k.startswith("random/")} == pytest.approx(
        {"random/accuracy": 50, "random/precision": 50, "random/recall": 50, "random/f1": 50,
         "random/yes_ratio": 50, "random/n": 4})
    # popular: TP=1, FP=1: accuracy 1/2, precision 1/2, recall 1/1, F1 2*.5*1/1.5 = 2/3, yes ratio 2/2
    assert got["popular/accuracy"] == pytest.approx(50) and got["popular/precision"] == pytest.approx(50)
    assert got["popular/recall"] == pytest.approx(100) and got["popular/f1"] == pytest.approx(200 / 3)
    assert got["popular/yes_ratio"] == pytest.approx(100)
    assert got["f1"] == pytest.approx((50 + 200 / 3) / 2)  # mean over splits: 58.33


def test_science_qa_accuracy_and_img_accuracy(tmp_path):
    problems = {"1": {"choices": ["a", "b", "c"], "answer": 2}, "2": {"choices": ["x", "y"], "answer": 0},
                "3": {"choices": ["p", "q", "r", "s"], "answer": 3}, "4": {"choices": ["m", "n"], "answer": 1},
                "5": {"choices": ["u", "v"], "answer": 0}, "6": {"choices": ["u", "v"], "answer": 0}}
    (tmp_path / "problems.json").write_text(json.dumps(problems))
    (tmp_path / "pid_splits.json").write_text(json.dumps({"test": ["1", "2", "3", "4", "5"], "val": ["6"]}))
    answers = rows(("1", "<image>\nQ1", "C"),  # C = index 2: right (image)
                   ("2", "<image>\nQ2", "B. y"),  # "B. ": index 1, answer 0: wrong (image)
                   ("3", "Q3", "The answer is D."),  # D = index 3: right (no image)
                   ("4", "<image>\nQ4", "E"),  # E beyond 2 choices: -1, wrong (image)
                   ("6", "Q6", "A"))  # val split: not counted; "5" unanswered: FAILED, wrong
    got = scorers.science_qa(answers, str(tmp_path))
    assert got == pytest.approx({"accuracy": 40.0, "img_accuracy": 100 / 3, "n": 5, "n_img": 3})  # 2/5, 1/3


@pytest.mark.parametrize("text,letter", [("C", "C"), (" B ", "B"), ("A. a cat", "A"), ("The answer is B", "B"),
                                         ("I think (A)", "FAILED"), ("a", "FAILED")])
def test_science_qa_reads_the_letter_as_llava_does(text, letter):
    assert scorers.science_qa_letter(text) == letter


def test_gqa_exact_match_after_llava_normalisation(tmp_path):
    gold = tmp_path / "testdev.json"
    gold.write_text(json.dumps({"q1": {"answer": "yes"}, "q2": {"answer": "red"}, "q3": {"answer": "left"}}))
    answers = rows(("q1", "", "Yes."), ("q2", "", "Red car"), ("q3", "", "LEFT"))  # yes right, red car wrong
    assert scorers.gqa(answers, str(gold)) == pytest.approx({"accuracy": 200 / 3, "n": 3})


@pytest.mark.parametrize("raw,norm", [("Two dogs.", "2 dogs"), ("the Man's hat", "man 's hat"), ("3.5", "3.5"),
                                      ("dont know!", "don't know"), ("black-and-white", "black and white"),
                                      ("1,000", "1000")])
def test_vqa_normalisation(raw, norm):
    assert normalize(raw) == norm


def test_textvqa_and_vqav2_accuracy(tmp_path):
    # Q1: 2 of 10 humans said "red": each leave-one-out set has 1 (if it left out a red) or 2 red: min(1, k/3)
    #     -> (2 * 1/3 + 8 * 2/3) / 10 = 0.6
    # Q2: "two" -> "2", 4 humans say 2 ("2" x3, "two"): every set has >= 3 -> 1.0
    # Q3: "the blue one" -> "blue 1", no human said it -> 0.   Mean 1.6 / 3 = 53.33 %
    humans = [["red"] * 2 + ["blue"] * 8, ["2"] * 3 + ["two"] + ["3"] * 6, ["blue"] * 10]
    assert vqa_accuracy("Red.", humans[0]) == pytest.approx(0.6)
    textvqa = tmp_path / "textvqa.json"
    textvqa.write_text(json.dumps({"data": [{"image_id": f"img{i}", "question": f"Q{i}?", "answers": h}
                                            for i, h in enumerate(humans)]}))
    suffix = "\nAnswer the question using a single word or phrase."
    answers = rows(("img0", "q0?" + suffix, "Red."), ("img1", "Q1?\nReference OCR token: 2, two" + suffix, "two"),
                   ("img2", "Q2?" + suffix, "the blue one"))
    assert scorers.vqa(answers, str(textvqa)) == pytest.approx({"accuracy": 160 / 3, "n": 3})
    vqav2 = tmp_path / "vqav2.json"
    vqav2.write_text(json.dumps({"annotations": [{"question_id": 10 + i, "answers": [{"answer": a} for a in h]}
                                                 for i, h in enumerate(humans)]}))
    answers = rows((10, "", "Red."), (11, "", "two"), (12, "", "the blue one"))
    assert scorers.vqa(answers, str(vqav2)) == pytest.approx({"accuracy": 160 / 3, "n": 3})


def test_mme_acc_acc_plus_and_totals(tmp_path):
    root = tmp_path / "MME"
    (root / "existence").mkdir(parents=True)
    (root / "existence" / "000.txt").write_text("Is there a dog? Please answer yes or no.\tYes\n"
                                                "Is there a cat? Please answer yes or no.\tNo\n")
    (root / "existence" / "001.txt").write_text("Is it red? Please answer yes or no.\tYes\n"
                                                "Is it blue? Please answer yes or no.\tNo\n")
    (root / "count" / "images").mkdir(parents=True)  # the layout with images/ + questions_answers_YN/
    (root / "count" / "questions_answers_YN").mkdir()
    (root / "count" / "questions_answers_YN" / "010.txt").write_text(
        "Are there two cats?  Please answer yes or no.\tYes\n"  # two spaces, as in some MME files
        "Are there three cats? Please answer yes or no.\tNo\n")
    (root / "code_reasoning").mkdir()
    (root / "code_reasoning" / "020.txt").write_text("Is the output 3? Please answer yes or no.\tYes\n"
                                                     "Is the output 4? Please answer yes or no.\tNo\n")
    s = "\nAnswer the question using a single word or phrase."
    answers = rows(("existence/000.jpg", "Is there a dog?" + s, "Yes"),  # right
                   ("existence/000.jpg", "Is there a cat?" + s, "No, there is not."),  # "no" in first 4: right
                   ("existence/001.png", "Is it red? Please answer yes or no." + s, "yes"),  # right
                   ("existence/001.png", "Is it blue? Please answer yes or no." + s, "Yes"),  # wrong
                   ("count/010.png", "Are there two cats?" + s, "Maybe"),  # "other": wrong
                   ("count/010.png", "Are there three cats?" + s, "no"),  # right
                   ("code_reasoning/020.png", "Is the output 3?" + s, "Yes"),  # right
                   ("code_reasoning/020.png", "Is the output 4?" + s, "no"))  # right
    got = scorers.mme(answers, str(root))
    # existence: 3/4 = 75, one image of two all right = 50 -> 125; count: 1/2 = 50, 0 -> 50; code: 100 + 100
    assert got == pytest.approx({"existence/acc": 75, "existence/acc_plus": 50, "existence/score": 125,
                                 "count/acc": 50, "count/acc_plus": 0, "count/score": 50,
                                 "code_reasoning/acc": 100, "code_reasoning/acc_plus": 100,
                                 "code_reasoning/score": 200, "perception": 175, "cognition": 200})


def test_own_data_exact_match_and_token_f1():
    answers = [{"text": "A red circle.", "reference": "a red circle"},  # exact; F1 1
               {"text": "red square", "reference": "A red circle."},  # red of 2 and 2 tokens: P = R = 1/2, F1 1/2
               {"text": "blue", "reference": "two blue squares"}]  # P = 1, R = 1/3: F1 = (2/3) / (4/3) = 1/2
    got = owndata.score(answers)
    assert got == pytest.approx({"exact_match": 100 / 3, "token_f1": 200 / 3, "n": 3})
    assert [r["exact"] for r in answers] == [True, False, False]
    assert [r["f1"] for r in answers] == pytest.approx([1, 0.5, 0.5])


def test_vqav2_submission_covers_the_test_split(tmp_path):
    split = tmp_path / "test2015.jsonl"
    split.write_text("".join(json.dumps({"question_id": q, "text": "?"}) + "\n" for q in (1, 2, 3)))
    out = submission.vqav2(rows((1, "", "Two dogs."), (3, "", "Yes")), str(split), tmp_path)
    assert json.loads(out.read_text()) == [{"question_id": 1, "answer": "2 dogs"}, {"question_id": 2, "answer": ""},
                                           {"question_id": 3, "answer": "yes"}]


def test_mmbench_submission_table(tmp_path):
    tsv = tmp_path / "mmbench.tsv"
    header = ["index", "question", "hint", "A", "B", "C", "D", "answer", "category", "image", "source",
              "l2-category", "comment", "split"]
    tsv.write_text("\t".join(header) + "\n" + "7\tWhich?\tnan\tcat\tdog\tnan\tnan\tA\tc\tIMG\ts\tl2\tnan\tdev\n"
                   + "9\tWhat?\ta hint\tred\tblue\tgreen\tnan\tC\tc\tIMG\ts\tl2\tnan\tdev\n")
    columns, table = submission.mmbench_table(rows((9, "", "C")), str(tsv))
    assert columns == ["index", "question", "A", "B", "C", "D", "prediction", "answer", "split"]
    assert table == [["7", "Which?", "cat", "dog", "nan", "nan", "", "A", "dev"],
                     ["9", "What?", "red", "blue", "green", "nan", "C", "C", "dev"]]
