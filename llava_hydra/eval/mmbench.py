"""MMBench as LLaVA-1.5 reads and submits it: llava/eval/model_vqa_mmbench.py (TSV -> prompts) and
scripts/convert_mmbench_for_submission.py (answers -> the table the OpenCompass server scores).

Both read the TSV with ``pandas.read_table``, read here the same way without pandas: a cell is
missing (NaN) when it is empty or one of pandas' NA spellings (``PANDAS_NA``: ``nan``, ``NA``,
``N/A``, ``NULL``, ``None``, ``#N/A``, ...; no stripping), and a column whose present cells are
all integers (``index``) holds ints.

- ``prompts``: model_vqa_mmbench's ``is_none`` (missing, or lower case ``nan`` / ``none``); the
  prompt is ``hint + "\\n" + question`` when the hint is not none, else the question, then
  ``"\\n" + letter + ". " + option`` for A, B, C, D up to the first none option (an option after
  a gap is dropped). That is the recorded ``prompt``; the model sees it with the suffix on a new
  line (``--single-pred-prompt``). ``options`` / ``option_char`` as the answers rows record them.
- ``submission_table``: the TSV's columns less hint, category, source, image, comment,
  l2-category, with ``prediction`` inserted as the 7th column; cells as pandas holds them (ints,
  strings, None for missing); a row's prediction is the text of the last answer whose
  ``question_id`` equals the row's ``index`` (``df['index'] == question_id``: 7 is not "7"),
  None when no answer has it.
"""

from __future__ import annotations

import csv
import re
import sys

PANDAS_NA = frozenset({"", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN",
                       "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null"})  # pandas 2/3 defaults
ALL_OPTIONS = ["A", "B", "C", "D"]
DROPPED = ("hint", "category", "source", "image", "comment", "l2-category")
_INT = re.compile(r"[+-]?\d+")
_FLOAT = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def is_none(cell) -> bool:
    """model_vqa_mmbench.is_none of the value pandas reads for ``cell``."""
    return cell is None or cell in PANDAS_NA or cell.lower() in ("nan", "none")


def _typed(column: list[str]) -> list:
    present = [c for c in column if c not in PANDAS_NA]
    if present and all(_INT.fullmatch(c) for c in present) and len(present) == len(column):
        return [int(c) for c in column]
    if present and all(_FLOAT.fullmatch(c) or _INT.fullmatch(c) for c in present):
        return [None if c in PANDAS_NA else float(c) for c in column]
    return [None if c in PANDAS_NA else c for c in column]


def read_tsv(path: str, typed: bool = True) -> tuple[list[str], list[dict]]:
    """(header, rows) of an MMBench TSV; each cell as pandas.read_table holds it, or the raw string."""
    csv.field_size_limit(sys.maxsize)  # base64 images
    with open(path, newline="") as f:
        lines = [r for r in csv.reader(f, delimiter="\t") if r]
    if not lines:
        raise ValueError(f"{path}: empty TSV")
    header, body = lines[0], lines[1:]
    for i, r in enumerate(body):
        if len(r) != len(header):
            raise ValueError(f"{path}: row {i}: {len(r)} cells, the header has {len(header)}")
    columns = {name: [r[j] for r in body] for j, name in enumerate(header)}
    if typed:
        columns = {name: _typed(cells) for name, cells in columns.items()}
    return header, [{name: columns[name][i] for name in header} for i in range(len(body))]


def prompts(path: str) -> list[dict]:
    """Per TSV row: ``index``, ``prompt`` (no suffix), ``options``, ``option_char``, base64 ``image``."""
    header, rows = read_tsv(path, typed=False)
    missing = [c for c in ("index", "question", "image") if c not in header]
    if missing:
        raise ValueError(f"{path}: no column {missing} (MMBench TSV: index, question, hint, A-D, image, ...)")
    index = _typed([r["index"] for r in rows])
    out = []
    for i, row in enumerate(rows):
        question = row["question"]
        if question in PANDAS_NA or is_none(row["image"]):
            raise ValueError(f"{path}: row {i} (index {row['index']}): no question or no image")
        if not is_none(row.get("hint")):
            question = f"{row['hint']}\n{question}"
        options = []
        for letter in ALL_OPTIONS:
            if is_none(row.get(letter)):
                break
            options.append(row[letter])
        for letter, option in zip(ALL_OPTIONS, options):
            question += f"\n{letter}. {option}"
        out.append({"index": index[i], "prompt": question, "options": options,
                    "option_char": ALL_OPTIONS[:len(options)], "image": row["image"]})
    return out


def submission_table(answers: list[dict], path: str) -> tuple[list[str], list[list]]:
    header, rows = read_tsv(path)
    columns = [c for c in header if c not in DROPPED]
    columns.insert(6, "prediction")
    pred = {}
    for a in answers:
        pred[a["question_id"]] = a["text"]
    if answers and not any(r["index"] in pred for r in rows):
        raise ValueError(f"{path}: no answer's question_id equals an index of the TSV (answers have "
                         f"{answers[0]['question_id']!r}, the TSV {rows[0]['index'] if rows else None!r})")
    return columns, [[pred.get(r["index"]) if c == "prediction" else r[c] for c in columns] for r in rows]
