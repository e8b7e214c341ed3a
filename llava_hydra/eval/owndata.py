"""Your own held-out data (the training format): exact match and token-level F1 against the
reference answers (the last turn of each conversation), per sample and overall.

Exact match compares after lower-casing, stripping whitespace and a final full stop (as the
training-time eval does, evaluate.normalize_answer). Token F1 is SQuAD's: lower-case, drop
punctuation and the articles a/an/the, split on whitespace, F1 of the token multisets.
"""

from __future__ import annotations

import re
import string
from collections import Counter

from llava_hydra.eval.heldout import normalize_answer


def tokens(text: str) -> list[str]:
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    return re.sub(r"\b(a|an|the)\b", " ", text).split()


def token_f1(prediction: str, reference: str) -> float:
    pred, ref = tokens(prediction), tokens(reference)
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def score(answers: list[dict]) -> dict:
    """Adds ``exact`` and ``f1`` to each row (the per-sample file); returns the means in percent."""
    for row in answers:
        row["exact"] = normalize_answer(row["text"]) == normalize_answer(row["reference"])
        row["f1"] = token_f1(row["text"], row["reference"])
    n = len(answers)
    return {"exact_match": 100.0 * sum(r["exact"] for r in answers) / n if n else 0.0,
            "token_f1": 100.0 * sum(r["f1"] for r in answers) / n if n else 0.0, "n": n}
