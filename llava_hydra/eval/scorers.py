"""LLaVA-1.5's scoring scripts, reimplemented: each takes the answers (LLaVA's answers JSONL rows,
in question-file order) and the benchmark's local ground truth, and returns flat metrics.

- ``pope``: llava/eval/eval_pope.py (first sentence; "no"/"No"/"not" among its words -> no;
  answers of a category zipped in order with ``coco_pope_<category>.json``); accuracy,
  precision, recall, F1, yes-ratio per category, and the mean F1 LLaVA-1.5 reports.
- ``science_qa``: llava/eval/eval_science_qa.py (the letter, "X. ...", or "The answer is X");
  accuracy over the split and over its image questions (ScienceQA-IMG).
- ``gqa``: scripts/convert_gqa_for_eval.py (``text.rstrip('.').lower()``) + GQA's exact match.
- ``vqa``: TextVQA / VQAv2 accuracy (vqa_normalize); TextVQA annotations are matched as
  eval_textvqa.py does, by (image id, question), VQAv2 annotations by question id.
- ``mme``: convert_answer_to_mme.py + MME's calculation.py: per subtask accuracy and accuracy+
  (both questions of an image right), score = 100 * (acc + acc+), perception / cognition totals.
Accuracies are percentages; missing answers count as wrong.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path

from llava_hydra.eval.vqa_normalize import vqa_accuracy


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
    tp = sum(p and g for p, g in zip(preds, gold))
    fp = sum(p and not g for p, g in zip(preds, gold))
    tn = sum(not p and not g for p, g in zip(preds, gold))
    fn = sum(not p and g for p, g in zip(preds, gold))
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
        if len(cur) != len(labels):
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


def science_qa_letter(text: str) -> str:
    """The option letter LLaVA's eval_science_qa.py reads from an answer, or FAILED."""
    text = text.replace("\n", ". ")
    if text.strip() in OPTIONS:
        return text.strip()
    if len(text) >= 3 and text[0] in OPTIONS and text[1:3] == ". ":
        return text[0]
    match = re.search(r"The answer is ([A-E])\.", text) or re.search(r"The answer is ([A-E])", text)
    return match.group(1) if match else "FAILED"


def science_qa(answers: list[dict], annotations: str, split: str = "test") -> dict:
    base = Path(annotations)
    ids = json.loads((base / "pid_splits.json").read_text())[split]
    problems = json.loads((base / "problems.json").read_text())
    by_id = {str(a["question_id"]): a for a in answers}
    correct = img_correct = img_total = 0
    for pid in ids:
        prob = problems[pid]
        pred = by_id.get(str(pid), {"text": "FAILED", "prompt": "Unknown"})
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
    asked = [qid for qid in gold if qid in pred] or list(gold)
    correct = sum(pred.get(qid) == gold[qid]["answer"] for qid in asked)
    return {"accuracy": _pct(correct, len(asked)), "n": len(asked)}


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
        for a in answers:
            scores.append(vqa_accuracy(a["text"], gold[(a["question_id"], textvqa_question(a["prompt"]))]))
    else:  # VQAv2 annotations: by question id
        gold = {row["question_id"]: [x["answer"] for x in row["answers"]] for row in data["annotations"]}
        scores = [vqa_accuracy(a["text"], gold[a["question_id"]]) for a in answers]
    return {"accuracy": _pct(sum(scores), len(scores)), "n": len(scores)}


# --- MME ------------------------------------------------------------------------------------

PERCEPTION = ["existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark", "artwork",
              "OCR"]
COGNITION = ["commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning"]
MME_SUFFIX = "Answer the question using a single word or phrase."


def mme_label(text: str) -> str:
    text = text.lower()
    if text in ("yes", "no"):
        return text
    return "yes" if "yes" in text[:4] else "no" if "no" in text[:4] else "other"


def mme_ground_truth(root: str) -> dict:
    """{(category, txt file name, question): answer} from MME's release folders."""
    gt = {}
    for category in sorted(p for p in Path(root).iterdir() if p.is_dir()):
        qa_dir = category / "questions_answers_YN" if (category / "images").is_dir() else category
        for txt in qa_dir.glob("*.txt"):
            for line in txt.read_text().splitlines():
                if line.strip():
                    question, answer = line.split("\t")
                    gt[(category.name, txt.name, question)] = answer
    return gt


def _mme_gold(gt: dict, category: str, file: str, prompt: str) -> str:
    prompt = prompt.replace(MME_SUFFIX, "").strip()
    if "Please answer yes or no." not in prompt:
        prompt += " Please answer yes or no."
        if (category, file, prompt) not in gt:  # some MME questions have two spaces
            prompt = prompt.replace(" Please answer yes or no.", "  Please answer yes or no.")
    return gt[(category, file, prompt)]


def mme(answers: list[dict], annotations: str) -> dict:
    gt = mme_ground_truth(annotations)
    images = defaultdict(lambda: defaultdict(list))  # category -> image -> [hit, ...]
    for a in answers:
        qid = str(a["question_id"])
        category, file = qid.split("/")[0], qid.split("/")[-1].split(".")[0] + ".txt"
        gold = _mme_gold(gt, category, file, a["prompt"]).lower()
        images[category][file].append(mme_label(a["text"]) == gold)
    out = {}
    for category, by_image in images.items():
        hits = [h for pair in by_image.values() for h in pair]
        acc, acc_plus = _pct(sum(hits), len(hits)), _pct(sum(all(p) for p in by_image.values()), len(by_image))
        out[f"{category}/acc"], out[f"{category}/acc_plus"], out[f"{category}/score"] = acc, acc_plus, acc + acc_plus
    out["perception"] = sum(out.get(f"{c}/score", 0.0) for c in PERCEPTION)
    out["cognition"] = sum(out.get(f"{c}/score", 0.0) for c in COGNITION)
    return out
