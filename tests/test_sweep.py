"""Hydra multirun: each job in its own directory, a summary row per job at the sweep root,
a failing job marked failed while the others still run and report."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

SMALL = ["data.synthetic.num_images=32", "data.synthetic.num_text_only=8", "data.synthetic.num_eval=4",
         "training.max_steps=2", "training.per_device_train_batch_size=4", "training.logging_steps=1"]


def multirun(tmp_path: Path, *overrides: str) -> tuple[subprocess.CompletedProcess, Path]:
    args = [sys.executable, "-m", "llava_hydra", "-m", f"paths.output_root={tmp_path}",
            f"paths.cache_dir={tmp_path}/.cache", *SMALL, *overrides]
    done = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    (sweep_dir,) = (tmp_path / "multirun" / "tiny").glob("*/*")
    return done, sweep_dir


def test_two_value_sweep_summarises_both_jobs(tmp_path):
    done, sweep = multirun(tmp_path, "stage=finetune", "stage.pretrain_mm_mlp_adapter=null",
                           "training.mm_projector_lr=1e-3,5e-3")
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads((sweep / "summary.json").read_text())
    assert [r["status"] for r in rows] == ["ok", "ok"]
    assert ["training.mm_projector_lr=0.001" in r["overrides"] for r in rows] == [True, False]
    for row in rows:
        metrics = json.loads((Path(row["dir"]) / "metrics.json").read_text())
        assert row["train_loss"] == metrics["train_loss"] > 0
        assert row["eval_accuracy"] == metrics["eval_accuracy"] and row["wall_time_s"] > 0
        assert (Path(row["dir"]) / "model.safetensors").exists()  # its own directory
    assert len({r["dir"] for r in rows}) == 2
    table = (sweep / "summary.md").read_text()
    assert "training.mm_projector_lr=0.005" in table and (sweep / "summary.csv").exists()


def test_a_failing_job_is_marked_and_the_others_still_report(tmp_path):
    done, sweep = multirun(tmp_path, "training.warmup_ratio=2.0,0.1")
    assert done.returncode != 0  # the sweep as a whole reports the failure
    rows = json.loads((sweep / "summary.json").read_text())
    assert [r["status"] for r in rows] == ["failed", "ok"]
    assert "warmup_ratio" in rows[0]["error"]
    assert f"sweep summary ({sweep}/summary.{{md,csv,json}})" in done.stdout  # printed although Hydra raised
    assert "| 0 | training.warmup_ratio=2.0 | failed |" in done.stdout
    assert (Path(rows[1]["dir"]) / "mm_projector.safetensors").exists()


@pytest.mark.slow  # CI runs README's command for it: tests/test_readme_commands.py
def test_submitit_local_launcher_runs_a_two_job_sweep(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    done, sweep = multirun(tmp_path, "hydra/launcher=slurm_local", "training.learning_rate=1e-3,2e-3")
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads((sweep / "summary.json").read_text())
    assert [r["status"] for r in rows] == ["ok", "ok"]
    assert (sweep / ".submitit").is_dir()  # the jobs went through submitit, not the basic launcher


@pytest.mark.slow  # CI runs README's command for it: tests/test_readme_commands.py
def test_optuna_search_maximises_the_returned_eval_metric(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    args = [sys.executable, "-m", "llava_hydra", "stage=finetune", "stage.pretrain_mm_mlp_adapter=null",
            "hparams_search=projector_lr_optuna", "hydra.sweeper.n_trials=2", f"paths.output_root={tmp_path}",
            f"paths.cache_dir={tmp_path}/.cache", *SMALL]
    done = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    (sweep,) = (tmp_path / "multirun" / "tiny").glob("*/*")
    rows = json.loads((sweep / "summary.json").read_text())
    assert len(rows) == 2 and all(r["eval_accuracy"] is not None for r in rows)
    result = (sweep / "optimization_results.yaml").read_text()
    assert "training.mm_projector_lr" in result and "training.learning_rate" in result
    assert f"best_value: {max(r['eval_accuracy'] for r in rows)}" in result
