"""MME, scored as LLaVA-1.5 scores it: MME's ``convert_answer_to_mme.py`` (from LLaVA's eval.zip)
then MME's official ``eval_tool/calculation.py`` (scripts/v1_5/eval/mme.sh runs the two).

- Ground truth: every ``<category>/[questions_answers_YN/]*.txt`` of the release; each line is
  ``line.strip().split('\\t')`` -> (question, answer), so stray spaces / tabs / ``\\r`` at either
  end of a line are dropped (the question's inner spaces are kept: some MME questions have two
  before "Please answer yes or no.").
- An answer's ground truth: category = ``question_id`` up to the first ``/``, file = its last
  part up to the first ``.`` + ``.txt``; the prompt loses "Answer the question using a single
  word or phrase." (and is then stripped) only when it holds it, gets " Please answer yes or
  no." unless it has it, or two spaces before it when one is not in the ground truth.
- calculation.py: per category, the answers in answers-file order, taken two at a time (one
  image's two questions: LLaVA's llava_mme.jsonl lists them together; a pair that spans two
  images is scored as calculation.py scores it, with a warning); ground truth lower-cased must
  be yes/no; the answer lower-cased is "yes"/"no" if exactly that, else "yes" if its first 4
  characters hold "yes", else "no" if they hold "no", else "other" (wrong). acc = right / asked,
  acc+ = pairs with both right / pairs, score = 100 * (acc + acc+); perception and cognition
  sum the scores of their categories (a category with no answers adds 0: calculation.py stops).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from pathlib import Path

log = logging.getLogger(__name__)

PERCEPTION = ["existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark", "artwork",
              "OCR"]
COGNITION = ["commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning"]
MME_SUFFIX = "Answer the question using a single word or phrase."
YES_NO = " Please answer yes or no."


def mme_label(text: str) -> str:
    """calculation.py's parse_pred_ans of the lower-cased answer."""
    text = text.lower()
    if text in ("yes", "no"):
        return text
    return "yes" if "yes" in text[:4] else "no" if "no" in text[:4] else "other"


def mme_ground_truth(root: str) -> dict:
    """{(category, txt file name, question): answer} from MME's release folders."""
    gt = {}
    for category in sorted(p for p in Path(root).iterdir() if p.is_dir()):
        qa_dir = category / "questions_answers_YN" if (category / "images").is_dir() else category
        for txt in sorted(qa_dir.glob("*.txt")):
            for i, line in enumerate(txt.read_text().split("\n")):
                if not line.strip():
                    continue
                fields = line.strip().split("\t")
                if len(fields) != 2:
                    raise ValueError(f"{txt}: line {i + 1}: expected 'question<TAB>answer', got {line!r}")
                gt[(category.name, txt.name, fields[0])] = fields[1]
    return gt


def _gt_key(gt: dict, category: str, file: str, prompt: str) -> tuple:
    if MME_SUFFIX in prompt:
        prompt = prompt.replace(MME_SUFFIX, "").strip()
    if YES_NO.strip() not in prompt:
        prompt += YES_NO
        if (category, file, prompt) not in gt:  # some MME questions have two spaces
            prompt = prompt.replace(YES_NO, " " + YES_NO)
    return category, file, prompt


def mme(answers: list[dict], annotations: str) -> dict:
    gt = mme_ground_truth(annotations)
    rows = defaultdict(list)  # category -> [(file, right), ...] in answers order
    for i, a in enumerate(answers):
        qid = str(a["question_id"])
        category, file = qid.split("/")[0], qid.split("/")[-1].split(".")[0] + ".txt"
        key = _gt_key(gt, category, file, a["prompt"])
        if key not in gt:
            raise KeyError(f"answer {i} ({qid}): no ground truth in {annotations} for {key[2]!r} in "
                           f"{category}/{file}")
        gold = gt[key].lower()
        if gold not in ("yes", "no"):
            raise ValueError(f"{annotations}/{category}/{file}: ground truth {gt[key]!r} is not yes/no")
        rows[category].append((file, mme_label(a["text"]) == gold))
    out = {}
    for category, hits in rows.items():
        if len(hits) % 2:
            raise ValueError(f"MME {category}: {len(hits)} answers; calculation.py scores them in pairs "
                             f"(two questions per image)")
        pairs = [hits[j:j + 2] for j in range(0, len(hits), 2)]
        if any(p[0][0] != p[1][0] for p in pairs):
            log.warning("MME %s: a pair of consecutive answers spans two images; scored as calculation.py does",
                        category)
        acc = 100.0 * sum(h for _, h in hits) / len(hits)
        acc_plus = 100.0 * sum(p[0][1] and p[1][1] for p in pairs) / len(pairs)
        out[f"{category}/acc"], out[f"{category}/acc_plus"], out[f"{category}/score"] = acc, acc_plus, acc + acc_plus
    out["perception"] = sum(out.get(f"{c}/score", 0.0) for c in PERCEPTION)
    out["cognition"] = sum(out.get(f"{c}/score", 0.0) for c in COGNITION)
    return out
