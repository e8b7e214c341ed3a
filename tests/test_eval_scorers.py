"""Each scorer's numbers on answer files built to exercise one of LLaVA's rules at a time (letter
extraction, normalisation, pairing, whitespace), worked out by hand in the comments the way
LLaVA's own scripts compute them: llava/eval/eval_pope.py, eval_science_qa.py, eval_textvqa.py
(m4c_evaluator.py), convert_gqa_for_eval.py + GQA's eval.py, the official VQA evaluation for local
VQAv2, and MME's convert_answer_to_mme.py + calculation.py. The ``write_*`` builders make the
files; each returns the answers rows."""

from __future__ import annotations

import json

import pytest

from llava_hydra.eval import owndata, scorers
from llava_hydra.eval.mme import mme_label
from llava_hydra.eval.vqa_normalize import normalize, textvqa_accuracy, vqav2_accuracy

SHORT = "\nAnswer the question using a single word or phrase."


def rows(*triples):
    return [{"question_id": q, "prompt": p, "text": t} for q, p, t in triples]


def jsonl(path, items):
    path.write_text("".join(json.dumps(x) + "\n" for x in items))


# --- POPE -----------------------------------------------------------------------------------

def write_pope(tmp):
    ann = tmp / "coco"
    ann.mkdir()
    jsonl(ann / "coco_pope_random.json", [{"label": x} for x in ["yes", "yes", "no", "no"]])
    jsonl(ann / "coco_pope_popular.json", [{"label": x} for x in ["yes", "no", "no", "yes", "no"]])
    questions = [{"question_id": i, "category": c} for i, c in enumerate(["random"] * 4 + ["popular"] * 5)]
    answers = rows((0, "", "Yes, there is a dog."),  # random: yes / label yes: TP
                   (1, "", "I do not see one. Yes."),  # first sentence has "not": no / yes: FN
                   (2, "", "There is no cat in the image."),  # "no": no / no: TN
                   (3, "", "Yes"),  # yes / no: FP
                   (4, "", "No\nThere is a dog."),  # popular: split on " " only: "No\nThere" is no "No": yes / yes TP
                   (5, "", "Not at all."),  # "Not" (capital) is not in the list: yes / no: FP
                   (6, "", "There is no, cat."),  # comma dropped -> "no": no / no: TN
                   (7, "", "I see one. No."))  # first sentence only: yes / yes: TP
    return questions, answers  # popular's 5th question unanswered: zip pairs the first 4 labels


def test_pope_per_split_and_llava_reading_of_answers(tmp_path):
    questions, answers = write_pope(tmp_path)
    got = scorers.pope(answers, questions, str(tmp_path / "coco"))
    # random: TP=FN=TN=FP=1: everything 50%, yes ratio 2/4
    assert {k: v for k, v in got.items() if k.startswith("random/")} == pytest.approx(
        {"random/accuracy": 50, "random/precision": 50, "random/recall": 50, "random/f1": 50,
         "random/yes_ratio": 50, "random/n": 4})
    # popular: TP=2 FP=1 TN=1 FN=0 over the 4 answered: accuracy 3/4, precision 2/3, recall 1,
    # F1 = 2 * (2/3) * 1 / (5/3) = 4/5, yes ratio 3/4
    assert {k: v for k, v in got.items() if k.startswith("popular/")} == pytest.approx(
        {"popular/accuracy": 75, "popular/precision": 200 / 3, "popular/recall": 100, "popular/f1": 80,
         "popular/yes_ratio": 75, "popular/n": 4})
    assert got["f1"] == pytest.approx((50 + 80) / 2)  # mean F1 over the categories: 65


def test_pope_more_answers_than_labels_is_an_error(tmp_path):
    questions, answers = write_pope(tmp_path)
    questions += [{"question_id": 8, "category": "random"}]
    with pytest.raises(ValueError, match="coco_pope_random.json: 4 labels but 5 answers"):
        scorers.pope(answers + rows((8, "", "Yes")), questions, str(tmp_path / "coco"))


# --- ScienceQA ------------------------------------------------------------------------------

@pytest.mark.parametrize("text,letter", [
    ("C", "C"),  # exactly an option letter
    ("A. a cat", "A"),  # "X. " at the start
    ("The answer is B.", "B"),
    ("The answer is B, because it is.", "B"),  # "." in the pattern is any character
    ("The answer is B", "FAILED"),  # ... but there must be one after the letter
    ("The answer is A. The answer is C.", "FAILED"),  # two matches
    ("The answer is F.", "F"),  # [A-Z]: read, then past the choices (wrong)
    (" B ", "FAILED"),  # no stripping
    ("A.", "FAILED"),  # shorter than "X. "
    ("B.\nBecause", "FAILED"),  # "X." + newline is not "X. "
    ("(A)", "FAILED"), ("a", "FAILED")])
def test_science_qa_reads_the_letter_as_llava_does(text, letter):
    assert scorers.science_qa_letter(text) == letter


def write_science_qa(tmp):
    problems = {"1": {"choices": ["a", "b", "c"], "answer": 2}, "2": {"choices": ["x", "y"], "answer": 0},
                "3": {"choices": ["p", "q", "r", "s"], "answer": 3}, "4": {"choices": ["m", "n"], "answer": 1},
                "5": {"choices": ["u", "v"], "answer": 0}, "6": {"choices": ["u", "v", "w"], "answer": 1},
                "7": {"choices": ["u", "v"], "answer": 1}, "8": {"choices": ["u", "v"], "answer": 0},
                "9": {"choices": ["u", "v"], "answer": 0}}
    (tmp / "problems.json").write_text(json.dumps(problems))
    (tmp / "pid_splits.json").write_text(json.dumps({"test": [str(i) for i in range(1, 9)], "val": ["9"]}))
    return rows(("1", "<image>\nQ1", "C"),  # C = index 2: right (image)
                ("2", "<image>\nQ2", "A."),  # FAILED: wrong (image)
                (3, "Q3", "D"),  # int id: LLaVA's dict has 3, not "3": problem 3 FAILED, prompt Unknown (no image)
                ("4", "Q4", "The answer is B, since n."),  # B: right (no image)
                ("5", "<image>\nQ5", "The answer is A. The answer is A."),  # two matches: FAILED (image)
                ("6", "Q6", " B"),  # not stripped: FAILED (no image)
                ("7", "<image>\nQ7", "The answer is B"),  # nothing after B: FAILED (image)
                ("8", "<image>\nQ8", "A. u"),  # A: right (image)
                ("9", "Q9", "A"))  # val split: not counted


def test_science_qa_accuracy_img_accuracy_and_pairing(tmp_path):
    got = scorers.science_qa(write_science_qa(tmp_path), str(tmp_path))
    # right: 1, 4, 8 of the 8 test problems -> 37.5; image prompts: 1 (right), 2, 5, 7, 8 (right) -> 2/5
    assert got == pytest.approx({"accuracy": 37.5, "img_accuracy": 40.0, "n": 8, "n_img": 5})


def test_science_qa_answers_pairing_with_no_problem_is_an_error(tmp_path):
    write_science_qa(tmp_path)
    with pytest.raises(ValueError, match="none of the 2 answers' question_id is an id of split 'test'"):
        scorers.science_qa(rows((1, "Q", "C"), (2, "Q", "A")), str(tmp_path))  # ints: LLaVA scores 0 silently


# --- GQA ------------------------------------------------------------------------------------

def write_gqa(tmp):
    def q(answer, structural, balanced=True):
        return {"answer": answer, "isBalanced": balanced, "types": {"structural": structural}}

    (tmp / "testdev.json").write_text(json.dumps({"q1": q("yes", "verify"), "q2": q("red", "query"),
                                                  "q3": q("left", "query"), "q4": q("no", "logical", False),
                                                  "q5": q("table", "query")}))
    return rows(("q1", "", "Yes."),  # rstrip('.').lower() -> "yes": right (binary)
                ("q2", "", "Red car"),  # "red car" != "red": wrong (open)
                ("q3", "", "LEFT.."),  # every trailing "." goes -> "left": right (open)
                ("q4", "", "yes"),  # not balanced: not scored
                ("q5", "", "The table"))  # no article removal in GQA: wrong (open)


def test_gqa_exact_match_over_balanced_questions(tmp_path):
    got = scorers.gqa(write_gqa(tmp_path), str(tmp_path / "testdev.json"))
    # balanced q1 q2 q3 q5: 2/4; binary (not "query"): q1 1/1; open: q3 of q2 q3 q5 = 1/3
    assert got == pytest.approx({"accuracy": 50.0, "n": 4, "binary": 100.0, "open": 100 / 3})


# --- TextVQA / VQAv2 ------------------------------------------------------------------------

@pytest.mark.parametrize("raw,norm", [
    ("Two dogs.", "2 dogs"), ("the Man's hat", "man 's hat"), ("3.5", "3.5"), ("dont know!", "don't know"),
    ("black-and-white", "black and white"), ("1,000", "1000"), ("Coca-Cola", "coca cola"),
    ("No" + "." * 32, "no"),  # 32 full stops: all go
    ("Yes" + "." * 33, "yes.")])  # sub(..., re.UNICODE) passes count=32: the 33rd stays
def test_vqa_normalisation_is_evalai_answer_processor(raw, norm):
    assert normalize(raw) == norm


def write_textvqa(tmp):
    humans = [["stop"] * 10,
              ["two"] * 3 + ["2"] * 3 + ["3"] * 4,
              ["the coca-cola"] * 2 + ["coca cola"] + ["pepsi"] * 7]
    questions = ["What is written?", "How many?", "Which brand?"]
    (tmp / "textvqa.json").write_text(json.dumps({"data": [
        {"image_id": f"img{i}", "question": q, "answers": h} for i, (q, h) in enumerate(zip(questions, humans))]}))
    return rows(("img0", "what is written?\nReference OCR token: STOP" + SHORT, "Stop" + "." * 33),
                ("img1", "How many?" + SHORT, "2"),
                ("img2", "Reference OCR token: Coca, Cola\nWhich brand?" + SHORT, "Coca-Cola"))


def test_textvqa_accuracy_as_m4c_evaluator(tmp_path):
    # paired by (question_id = image id, the prompt's question lower-cased): line 1 of a 3-line prompt,
    # line 2 when it starts with "Reference OCR token:", line 1 of a 2-line prompt.
    # img0: "stop." (33rd full stop kept) vs 10 x "stop": 0
    # img1: "two" -> "2": six "2" among the humans; every leave-one-out set has >= 5: 1
    # img2: "coca-cola" -> "coca cola"; "the coca-cola" -> "coca cola": 3 matches: 3 sets without one
    #       score 2/3, 7 sets score 1 -> (2 + 7) / 10 = 0.9.      Mean (0 + 1 + 0.9) / 3 = 63.33 %
    answers = write_textvqa(tmp_path)
    assert textvqa_accuracy("Coca-Cola", ["the coca-cola"] * 2 + ["coca cola"] + ["pepsi"] * 7) == pytest.approx(0.9)
    assert scorers.vqa(answers, str(tmp_path / "textvqa.json")) == pytest.approx({"accuracy": 190 / 3, "n": 3})


def write_vqav2(tmp):
    humans = [["the dog"] * 10, ["yes"] * 9 + [" yes\n"], ["man's hat"] * 4 + ["hat"] * 6, ["two"] * 8 + ["2"] * 2,
              ["yes"] * 10]
    (tmp / "vqav2.json").write_text(json.dumps({"annotations": [
        {"question_id": 10 + i, "answers": [{"answer": a, "answer_id": j + 1} for j, a in enumerate(h)]}
        for i, h in enumerate(humans)]}))
    return rows((10, "", "The dog"), (11, "", "Yes."), (12, "", "Man's hat"), (13, "", "two"),
                (14, "", "Yes" + "." * 33))


def test_vqav2_local_accuracy_follows_the_official_rule(tmp_path):
    # The uploaded answer is normalize(text) (LLaVA's converter). vqaEval.py then strips \n \t and
    # outer spaces on both sides; only when the human answers differ do both sides get the
    # punctuation and digit/article passes (and the humans never get EvalAI's "'s" split).
    # 10: uploaded "dog"; 10 x "the dog" agree: compared raw: 0                  (TextVQA's rule: 1)
    # 11: uploaded "yes"; " yes\n" stripped -> 10 x "yes" agree: 1
    # 12: uploaded "man 's hat"; humans differ, "man's hat" keeps its "'s": 0 (TextVQA's rule: 1)
    # 13: uploaded "2"; humans differ: "two" -> "2": 10 matches: 1               (TextVQA's rule: 1)
    # 14: uploaded "yes." (the 33rd full stop); 10 x "yes" agree: compared raw: 0
    # Mean (0 + 1 + 0 + 1 + 0) / 5 = 40 %
    answers = write_vqav2(tmp_path)
    assert vqav2_accuracy("The dog", ["the dog"] * 10) == 0
    assert textvqa_accuracy("The dog", ["the dog"] * 10) == 1
    assert vqav2_accuracy("Man's hat", ["man's hat"] * 4 + ["hat"] * 6) == 0
    assert textvqa_accuracy("Man's hat", ["man's hat"] * 4 + ["hat"] * 6) == 1
    assert scorers.vqa(answers, str(tmp_path / "vqav2.json")) == pytest.approx({"accuracy": 40.0, "n": 5})
    with pytest.raises(KeyError, match="question_id 99 is not in"):
        scorers.vqa(rows((99, "", "yes")), str(tmp_path / "vqav2.json"))


# --- MME ------------------------------------------------------------------------------------

@pytest.mark.parametrize("text,label", [("Yes", "yes"), ("no", "no"), ("No, there is not.", "no"),
                                        ("Not sure", "no"), (" yes", "yes"), ("Maybe", "other"),
                                        ("I'd say yes", "other"), ("Noyes", "no")])
def test_mme_reads_yes_no_from_the_first_four_characters(text, label):
    assert mme_label(text) == label


def write_mme(tmp):
    root = tmp / "MME"
    (root / "existence").mkdir(parents=True)
    # stray whitespace: a trailing space after the answer, CRLF, leading spaces, a trailing tab
    (root / "existence" / "000.txt").write_text("Is there a dog? Please answer yes or no.\tYes \n"
                                                "Is there a cat? Please answer yes or no.\tNo\r\n")
    (root / "existence" / "001.txt").write_text("  Is it red? Please answer yes or no.\tYes\n"
                                                "Is it blue? Please answer yes or no.\tNo\t\n")
    (root / "count" / "images").mkdir(parents=True)  # the layout with images/ + questions_answers_YN/
    (root / "count" / "questions_answers_YN").mkdir()
    (root / "count" / "questions_answers_YN" / "010.txt").write_text(
        "Are there two cats?  Please answer yes or no.\tYes\n"  # two spaces, as in some MME files
        "Are there three cats? Please answer yes or no.\tNo\n")
    (root / "code_reasoning").mkdir()
    (root / "code_reasoning" / "020.txt").write_text("Is the output 3? Please answer yes or no.\tYes\n"
                                                     "Is the output 4? Please answer yes or no.\tNo\n")
    # existence's answers interleave its two images: calculation.py pairs consecutive lines
    return rows(("existence/000.jpg", "Is there a dog?" + SHORT, "Yes"),  # right
                ("existence/001.png", "Is it red? Please answer yes or no." + SHORT, "yes"),  # right
                ("existence/000.jpg", "Is there a cat?" + SHORT, "Yes, there is."),  # wrong
                ("existence/001.png", "Is it blue? Please answer yes or no." + SHORT, "Yes"),  # wrong
                ("count/010.png", "Are there two cats?" + SHORT, "Maybe"),  # "other": wrong
                ("count/010.png", "Are there three cats?" + SHORT, "no"),  # right
                ("code_reasoning/020.png", "Is the output 3?" + SHORT, "Yes"),  # right
                ("code_reasoning/020.png", "Is the output 4?" + SHORT, "No, it is 3."))  # right


def test_mme_whitespace_pairing_acc_plus_and_totals(tmp_path):
    got = scorers.mme(write_mme(tmp_path), str(tmp_path / "MME"))
    # existence: 2/4 right = 50; pairs as listed: (dog right, red right) both right, (cat, blue) not:
    #   acc+ 1/2 = 50 (per image it would be 0) -> 100
    # count: 1/2 = 50, acc+ 0 -> 50; code_reasoning: 100 + 100
    assert got == pytest.approx({"existence/acc": 50, "existence/acc_plus": 50, "existence/score": 100,
                                 "count/acc": 50, "count/acc_plus": 0, "count/score": 50,
                                 "code_reasoning/acc": 100, "code_reasoning/acc_plus": 100,
                                 "code_reasoning/score": 200, "perception": 150, "cognition": 200})


def test_mme_bad_ground_truth_and_odd_answers_are_errors(tmp_path):
    answers = write_mme(tmp_path)
    with pytest.raises(ValueError, match="count: 1 answers; calculation.py scores them in pairs"):
        scorers.mme(answers[:5], str(tmp_path / "MME"))
    (tmp_path / "MME" / "code_reasoning" / "020.txt").write_text("Is the output 3? Please answer yes or no.\tMaybe\n")
    with pytest.raises(ValueError, match="020.txt: ground truth 'Maybe' is not yes/no"):
        scorers.mme(answers[6:], str(tmp_path / "MME"))


# --- own data -------------------------------------------------------------------------------

def test_own_data_exact_match_and_token_f1():
    answers = [{"text": "A red circle.", "reference": "a red circle"},  # exact; F1 1
               {"text": "red square", "reference": "A red circle."},  # red of 2 and 2 tokens: P = R = 1/2, F1 1/2
               {"text": "blue", "reference": "two blue squares"}]  # P = 1, R = 1/3: F1 = (2/3) / (4/3) = 1/2
    got = owndata.score(answers)
    assert got == pytest.approx({"exact_match": 100 / 3, "token_f1": 200 / 3, "n": 3})
    assert [r["exact"] for r in answers] == [True, False, False]
    assert [r["f1"] for r in answers] == pytest.approx([1, 0.5, 0.5])
