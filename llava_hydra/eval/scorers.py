"""LLaVA-1.5's scoring scripts, reimplemented: each takes the answers (LLaVA's answers JSONL rows,
in question-file order) and the benchmark's local ground truth, and returns flat metrics
(percentages) equal to what LLaVA's script prints for the same answers file.

- ``pope``: llava/eval/eval_pope.py. An answer's first sentence (up to the first ``.``), commas
  dropped, split on spaces: "no", "No" or "not" among the words -> no, else yes. The answers of a
  category, in answers-file order, are zipped with ``coco_pope_<category>.json``'s labels (row i
  with label i: the label files carry no LLaVA question ids). Accuracy, precision, recall, F1,
  yes-ratio per category; ``f1`` = their mean F1 (LLaVA-1.5's POPE column).
- ``science_qa``: llava/eval/eval_science_qa.py. The letter is the whole answer if it is one of
  A-E exactly (no stripping), else the first character of an answer starting "X. ", else the one
  match of ``The answer is ([A-Z]).`` (any character after the letter; none or several ->
  FAILED); a letter past the problem's choices is wrong. Answers pair with ``pid_splits.json``'s
  ids by ``question_id`` as written (a string, as model_vqa_science writes it); a problem without
  an answer is wrong. ``img_accuracy`` (ScienceQA-IMG) counts answers whose prompt has ``<image>``.
- ``gqa``: scripts/convert_gqa_for_eval.py (``text.rstrip('.').lower()``) + GQA's eval.py:
  exact match over the balanced questions (``isBalanced``; LLaVA's testdev_balanced file has only
  those); ``binary`` / ``open`` split by ``types.structural == "query"`` as eval.py does.
- ``vqa``: TextVQA (annotations with ``data``): eval_textvqa.py: answers matched to annotations by
  (image id, question read from the prompt), scored by m4c's TextVQAAccuracyEvaluator. VQAv2
  (annotations with ``annotations``): by question id, the official VQA rule on the answer LLaVA's
  converter uploads (vqa_normalize.vqav2_accuracy).
- ``mme``: see mme.py.
A partial answers file (``max_samples``) is scored over the questions it answers for GQA and
VQAv2 (GQA's eval.py and the VQA API refuse one), over the whole split for ScienceQA (as LLaVA).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from llava_hydra.eval.mme import mme  # noqa: F401  (the scorer named "mme")
from llava_hydra.eval.vqa_normalize import textvqa_accuracy, vqav2_accuracy


def _jsonl(path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def _pct(num: float, den: int) -> float:
    return 100.0 * num / den if den else 0.0


# --- POPE -----------------------------------------------------------------------------------

def pope_says_yes(text: str) -> bool:
    if "." in text:
        text = text.split(".")[0]
    words = text.replace(",", "").split(" ")
    return not ("No" in words or "not" in words or "no" in words)


def pope_split(answers: list[dict], labels: list[str]) -> dict:
    preds = [pope_says_yes(a["text"]) for a in answers]
    gold = [label != "no" for label in labels]
    pairs = list(zip(preds, gold))  # eval_pope.py zips: a partial answers file scores its first labels
    tp = sum(p and g for p, g in pairs)
    fp = sum(p and not g for p, g in pairs)
    tn = sum(not p and not g for p, g in pairs)
    fn = sum(not p and g for p, g in pairs)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"accuracy": _pct(tp + tn, tp + tn + fp + fn), "precision": 100 * precision, "recall": 100 * recall,
            "f1": 100 * f1, "yes_ratio": _pct(sum(preds), len(preds)), "n": len(preds)}


def pope(answers: list[dict], questions: list[dict], annotations: str) -> dict:
    category = {q["question_id"]: q["category"] for q in questions}
    out, f1s = {}, []
    for path in sorted(Path(annotations).glob("coco_pope_*.json")):
        name = path.stem[len("coco_pope_"):]
        labels = [row["label"] for row in _jsonl(path)]
        cur = [a for a in answers if category.get(a["question_id"]) == name]
        if not cur:
            continue
        if len(cur) > len(labels):
            raise ValueError(f"{path}: {len(labels)} labels but {len(cur)} answers of category {name!r}")
        for key, value in pope_split(cur, labels).items():
            out[f"{name}/{key}"] = value
        f1s.append(out[f"{name}/f1"])
    if not f1s:
        raise FileNotFoundError(f"{annotations}: no coco_pope_<category>.json matching the questions' categories")
    out["f1"] = sum(f1s) / len(f1s)
    return out


# --- ScienceQA ------------------------------------------------------------------------------

OPTIONS = ["A", "B", "C", "D", "E"]
ANSWER_IS = re.compile(r"The answer is ([A-Z]).")  # sic: "." is any character, as in eval_science_qa.py


def science_qa_letter(text: str) -> str:
    """The option letter LLaVA's eval_science_qa.py reads from an answer, or FAILED."""
    if text in OPTIONS:
        return text
    if len(text) >= 3 and text[0] in OPTIONS and text[1:3] == ". ":
        return text[0]
    found = ANSWER_IS.findall(text)
    return found[0] if len(found) == 1 else "FAILED"


def science_qa(answers: list[dict], annotations: str, split: str = "test") -> dict:
    base = Path(annotations)
    ids = json.loads((base / "pid_splits.json").read_text())[split]
    problems = json.loads((base / "problems.json").read_text())
    by_id = {a["question_id"]: a for a in answers}
    if answers and not any(pid in by_id for pid in ids):
        raise ValueError(f"{base / 'pid_splits.json'}: none of the {len(answers)} answers' question_id is an id "
                         f"of split {split!r} (ids are strings, e.g. {ids[:1]}; answers have "
                         f"{answers[0]['question_id']!r})")
    correct = img_correct = img_total = 0
    for pid in ids:
        prob = problems[pid]
        pred = by_id.get(pid, {"text": "FAILED", "prompt": "Unknown"})
        letter = science_qa_letter(pred["text"])
        index = OPTIONS.index(letter) if letter in OPTIONS[:len(prob["choices"])] else -1
        hit = index == prob["answer"]
        correct += hit
        if "<image>" in pred["prompt"]:
            img_total += 1
            img_correct += hit
    return {"accuracy": _pct(correct, len(ids)), "img_accuracy": _pct(img_correct, img_total),
            "n": len(ids), "n_img": img_total}


# --- GQA ------------------------------------------------------------------------------------

def gqa(answers: list[dict], annotations: str) -> dict:
    gold = json.loads(Path(annotations).read_text())
    pred = {str(a["question_id"]): a["text"].rstrip(".").lower() for a in answers}
    balanced = [qid for qid, q in gold.items() if q.get("isBalanced", True)]
    asked = [qid for qid in balanced if qid in pred] or balanced
    if answers and not any(qid in gold for qid in pred):
        raise ValueError(f"{annotations}: none of the {len(answers)} answers' question_id is a question of it")
    hits = {qid: pred.get(qid) == gold[qid]["answer"] for qid in asked}
    out = {"accuracy": _pct(sum(hits.values()), len(asked)), "n": len(asked)}
    if all("types" in gold[qid] for qid in asked):
        for kind in ("binary", "open"):
            cur = [hits[q] for q in asked if (gold[q]["types"].get("structural") == "query") == (kind == "open")]
            out[kind] = _pct(sum(cur), len(cur))
    return out


# --- TextVQA / VQAv2 ------------------------------------------------------------------------

def textvqa_question(prompt: str) -> str:
    """The question inside a TextVQA prompt, as eval_textvqa.py's prompt_processor reads it."""
    lines = prompt.split("\n")
    if prompt.startswith("OCR tokens: "):
        question = re.search(r"Question: (.*?) Short answer:", prompt, re.DOTALL).group(1)
    elif "Reference OCR token: " in prompt and len(lines) == 3:
        question = lines[1] if prompt.startswith("Reference OCR token:") else lines[0]
    elif len(lines) == 2:
        question = lines[0]
    else:
        raise ValueError(f"cannot find the question in the TextVQA prompt {prompt!r}")
    return question.lower()


def vqa(answers: list[dict], annotations: str) -> dict:
    data = json.loads(Path(annotations).read_text())
    scores = []
    if "data" in data:  # TextVQA: matched by (image id, question), as eval_textvqa.py does
        gold = {(row["image_id"], row["question"].lower()): row["answers"] for row in data["data"]}
        for i, a in enumerate(answers):
            key = (a["question_id"], textvqa_question(a["prompt"]))
            if key not in gold:
                raise KeyError(f"answer {i}: no annotation in {annotations} for image {key[0]!r}, question {key[1]!r}")
            scores.append(textvqa_accuracy(a["text"], gold[key]))
    else:  # VQAv2 annotations: by question id, the official rule
        gold = {row["question_id"]: [x["answer"] for x in row["answers"]] for row in data["annotations"]}
        for i, a in enumerate(answers):
            if a["question_id"] not in gold:
                raise KeyError(f"answer {i}: question_id {a['question_id']!r} is not in {annotations}")
            scores.append(vqav2_accuracy(a["text"], gold[a["question_id"]]))
    return {"accuracy": _pct(sum(scores), len(scores)), "n": len(scores)}
