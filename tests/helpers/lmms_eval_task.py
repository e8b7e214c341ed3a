"""lmms-eval (0.7.3) run on a saved folder, as README shows it: a local task (``dataset_path:
json``, one ``{"id", "image", "question", "answer"}`` a line) answered by its ``llava_hf`` model on
CPU, in lmms-eval's own environment (``python``: that environment's interpreter). ``run`` returns
{record id: answer} read from lmms-eval's logged samples."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

UTILS = '''from PIL import Image


def doc_to_visual(doc):
    return [Image.open(doc["image"]).convert("RGB")]


def doc_to_text(doc, lmms_eval_specific_kwargs=None):
    return doc["question"]


def process_results(doc, results):
    return {"exact_match": float(results[0].strip().lower() == doc["answer"].strip().lower())}
'''

TASK = """task: own_shapes
dataset_path: json
dataset_kwargs:
  data_files:
    test: {jsonl}
test_split: test
output_type: generate_until
doc_to_visual: !function utils.doc_to_visual
doc_to_text: !function utils.doc_to_text
doc_to_target: answer
generation_kwargs:
  max_new_tokens: {max_new}
  temperature: 0
  num_beams: 1
  do_sample: false
process_results: !function utils.process_results
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
"""


def write_task(root: Path, questions: Path, max_new: int) -> Path:
    """The task folder for lmms-eval's --include_path, from a LLaVA-format question file
    (one ``<image>`` question per record, images beside the file)."""
    records = json.loads(questions.read_text())
    folder = root / "own_shapes"
    folder.mkdir(parents=True)
    rows = [{"id": r["id"], "image": str(questions.parent / r["image"]),
             "question": r["conversations"][0]["value"].replace("<image>", "").strip(),
             "answer": r["conversations"][1]["value"]} for r in records]
    jsonl = root / "own.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "utils.py").write_text(UTILS)
    (folder / "own_shapes.yaml").write_text(TASK.format(jsonl=jsonl, max_new=max_new))
    return root


def run(python: str, model_dir: Path, questions: Path, out: Path, max_new: int, timeout: int = 600) -> dict:
    """lmms-eval's llava_hf on ``model_dir`` (CPU, float32, batch 1) -> {record id: answer, stripped}."""
    tasks = write_task(out / "tasks", questions, max_new)
    cmd = [python, "-m", "lmms_eval", "eval", "--model", "llava_hf",
           "--model_args", f"pretrained={model_dir},device_map=cpu,dtype=float32",
           "--tasks", "own_shapes", "--include_path", str(tasks), "--device", "cpu", "--batch_size", "1",
           "--log_samples", "--output_path", str(out / "lmms_out")]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    (out / "lmms.log").write_text(done.stdout + done.stderr)
    samples = sorted((out / "lmms_out").rglob("*samples_own_shapes.jsonl"))
    if done.returncode or not samples:
        raise RuntimeError(f"lmms-eval failed (rc {done.returncode}):\n{(done.stdout + done.stderr)[-3000:]}")
    ids = [r["id"] for r in json.loads(questions.read_text())]
    out_answers = {}
    for line in samples[-1].read_text().splitlines():
        row = json.loads(line)
        resp = row["filtered_resps"]
        resp = resp[0] if isinstance(resp, list) else resp
        out_answers[ids[row["doc_id"]]] = resp.strip()
    return out_answers
