"""Files for the benchmarks a server scores, in the format the server wants.

- ``vqav2``: scripts/convert_vqav2_for_submission.py: a JSON list ``[{"question_id", "answer"}]``
  over every question of the test split (``llava_vqav2_mscoco_test2015.jsonl``), answers
  normalised as the VQA evaluation does, ``""`` for a question without an answer (test-dev
  answers are a subset of test).
- ``mmbench``: scripts/convert_mmbench_for_submission.py: the question TSV without ``hint``,
  ``category``, ``source``, ``image``, ``comment``, ``l2-category``, a ``prediction`` column
  inserted as the 7th, one row per question; ``.xlsx`` (what the server takes) when pandas and
  openpyxl are installed, else the same table as ``.tsv`` (convert it before uploading).
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

from llava_hydra.eval.vqa_normalize import normalize

log = logging.getLogger(__name__)
MMBENCH_DROPPED = ("hint", "category", "source", "image", "comment", "l2-category")


def vqav2(answers: list[dict], test_split: str, out_dir: Path) -> Path:
    results = {a["question_id"]: a["text"] for a in answers}
    questions = [json.loads(line) for line in Path(test_split).read_text().splitlines() if line.strip()]
    rows = [{"question_id": q["question_id"],
             "answer": normalize(results[q["question_id"]]) if q["question_id"] in results else ""}
            for q in questions]
    out = out_dir / "vqav2_test_submission.json"
    out.write_text(json.dumps(rows))
    log.info("VQAv2 submission (%d questions, %d answered): %s", len(rows), len(results), out)
    return out


def mmbench_table(answers: list[dict], question_tsv: str) -> tuple[list[str], list[list[str]]]:
    from llava_hydra.eval.benchmarks import read_tsv

    rows = read_tsv(question_tsv)
    columns = [c for c in (rows[0].keys() if rows else []) if c not in MMBENCH_DROPPED]
    columns.insert(6, "prediction")
    pred = {str(a["question_id"]): a["text"] for a in answers}
    table = [[pred.get(str(r["index"]), "") if c == "prediction" else r[c] for c in columns] for r in rows]
    return columns, table


def mmbench(answers: list[dict], question_tsv: str, out_dir: Path) -> Path:
    columns, table = mmbench_table(answers, question_tsv)
    try:
        import openpyxl  # noqa: F401
        import pandas as pd

        out = out_dir / "mmbench_submission.xlsx"
        pd.DataFrame(table, columns=columns).to_excel(out, index=False, engine="openpyxl")
    except ImportError:
        out = out_dir / "mmbench_submission.tsv"
        with out.open("w", newline="") as f:
            writer = csv.writer(f, delimiter="\t")
            writer.writerow(columns)
            writer.writerows(table)
        log.warning("pandas/openpyxl not installed: wrote %s; the MMBench server takes .xlsx", out)
    return out
