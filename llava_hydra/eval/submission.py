"""Files for the benchmarks a server scores, as LLaVA's converters write them.

- ``vqav2``: scripts/convert_vqav2_for_submission.py: a JSON list ``[{"question_id", "answer"}]``
  over every question of the test split (``llava_vqav2_mscoco_test2015.jsonl``), in its order;
  an answer is ``EvalAIAnswerProcessor()(text)`` (vqa_normalize.normalize), ``""`` for a
  question without an answer (test-dev answers are a subset of test); answers pair by
  ``question_id`` as written (the last answer of an id wins).
- ``mmbench``: scripts/convert_mmbench_for_submission.py: the table mmbench.submission_table
  builds (the TSV less hint, category, source, image, comment, l2-category; ``prediction`` as the
  7th column); ``.xlsx`` (what the server takes; ``to_excel(index=False, engine="openpyxl")``)
  when pandas and openpyxl are installed, else the same table as ``.tsv`` (missing cells empty;
  convert it before uploading).
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

from llava_hydra.eval.mmbench import submission_table
from llava_hydra.eval.vqa_normalize import normalize

log = logging.getLogger(__name__)


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


def mmbench(answers: list[dict], question_tsv: str, out_dir: Path) -> Path:
    columns, table = submission_table(answers, question_tsv)
    try:
        import openpyxl  # noqa: F401
        import pandas as pd
    except ImportError:
        out = out_dir / "mmbench_submission.tsv"
        with out.open("w", newline="") as f:
            writer = csv.writer(f, delimiter="\t", lineterminator="\n")
            writer.writerow(columns)
            writer.writerows([["" if cell is None else cell for cell in row] for row in table])
        log.warning("pandas/openpyxl not installed: wrote %s; the MMBench server takes .xlsx", out)
        return out
    out = out_dir / "mmbench_submission.xlsx"
    pd.DataFrame(table, columns=columns).to_excel(out, index=False, engine="openpyxl")
    return out
