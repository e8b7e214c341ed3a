"""What a user sees of a run: a progress bar and log lines with step, epoch, loss, the learning rate
of every trained part and tokens/s, also in <run dir>/<model>_<stage>.log; no pin_memory warning
on CPU; metrics.json's final train loss and loss.png even for a run shorter than logging_steps;
own data with README's overrides trains and evaluates nothing it was not given."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from llava_hydra.train.progress import plot_loss, smoothed, step_line

SMALL = ["data.synthetic.num_images=32", "data.synthetic.num_text_only=8", "data.synthetic.num_eval=4",
         "training.per_device_train_batch_size=4"]


def cli(tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess:
    args = [sys.executable, "-m", "llava_hydra", f"paths.output_root={tmp_path / 'out'}",
            f"paths.cache_dir={tmp_path / 'cache'}", *overrides]
    return subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=600)


def test_step_line_names_every_part():
    logs = {"loss": 2.3456, "grad_norm": 0.5, "learning_rate": 1e-3, "learning_rate/llm": 1e-3,
            "learning_rate/mm_projector": 2e-5, "epoch": 0.25}
    assert step_line(logs, 10, 40, 1234.4) == (
        "step 10/40 (epoch 0.25) | loss 2.346 | lr llm 0.001, mm_projector 2e-05 | grad_norm 0.5 | 1234 tok/s")
    assert step_line({"eval_accuracy": 0.875, "epoch": 1.0}, 40, 40, None) == "step 40/40 (epoch 1) | eval accuracy 0.875"
    assert step_line({"train_loss": 1.5, "train_runtime": 12.34, "epoch": 1.0}, 40, 40, None) == (
        "step 40/40 (epoch 1) | train done in 12.3 s, mean loss 1.5")


def test_smoothing_starts_at_the_first_value_and_follows_a_constant():
    assert smoothed([4.0, 4.0, 4.0]) == pytest.approx([4.0, 4.0, 4.0])
    assert smoothed([2.0, 0.0]) == [2.0, 0.0]  # both ends are the raw values (tests/test_first_hour.py: no lag)


def test_loss_png_for_one_logged_step_and_none_without(tmp_path):
    assert plot_loss([{"loss": 3.0, "step": 1}, {"eval_accuracy": 0.5, "step": 1}], tmp_path / "a.png")
    assert (tmp_path / "a.png").stat().st_size > 1000
    assert not plot_loss([{"train_runtime": 1.0, "step": 1}], tmp_path / "b.png")
    assert not (tmp_path / "b.png").exists()


@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
    """Stage 2 of the default for 3 steps (logging_steps 10), its projector at its own rate."""
    tmp = tmp_path_factory.mktemp("short")
    done = cli(tmp, "stage=finetune", "stage.pretrain_mm_mlp_adapter=null", "training.max_steps=3",
               "training.logging_steps=10", "training.learning_rate=1e-3", "training.mm_projector_lr=1e-4",
               "training.warmup_ratio=0", "eval.max_samples=4", *SMALL)
    assert done.returncode == 0, done.stderr[-3000:]
    return done, tmp / "out" / "tiny" / "finetune"


def test_log_file_is_named_after_the_run_and_holds_the_loss_lines(short_run):
    done, run_dir = short_run
    assert not (run_dir / "__main__.log").exists()
    log = (run_dir / "tiny_finetune.log").read_text()
    (line,) = [ln for ln in log.splitlines() if "| loss " in ln]  # the last step, though logging_steps is 10
    m = re.search(r"step 3/3 \(epoch [\d.]+\) \| loss [\d.]+ \| lr llm ([\d.e-]+), mm_projector ([\d.e-]+) \| "
                  r"grad_norm [\d.]+ \| \d+ tok/s", line)
    assert m, line
    llm, projector = float(m.group(1)), float(m.group(2))
    assert projector == pytest.approx(llm / 10)  # 1e-4 vs 1e-3 on the same cosine schedule
    assert "eval accuracy" in log and "train done in" in log
    assert line.split(" - ", 1)[1] in done.stdout  # the console shows the same line


def test_logged_learning_rate_is_the_llms_not_the_first_groups(short_run):
    _, run_dir = short_run
    history = json.loads((run_dir / "checkpoint-3" / "trainer_state.json").read_text())["log_history"]
    (entry,) = [e for e in history if "loss" in e]
    assert entry["learning_rate"] == entry["learning_rate/llm"] == pytest.approx(10 * entry["learning_rate/mm_projector"])
    assert entry["learning_rate"] > 1e-4  # not the projector's 1e-4 schedule


def test_progress_bar_shown_and_no_pin_memory_warning(short_run):
    done, _ = short_run
    assert "3/3 [" in done.stderr  # tqdm: steps, elapsed<left, rate
    assert "pin_memory" not in done.stderr + done.stdout
    assert "{'loss'" not in done.stdout  # the Trainer's bare dicts are gone


def test_short_run_reports_its_final_loss_and_plots_it(short_run):
    _, run_dir = short_run
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["train_steps"] == 3 and metrics["train_loss"] > 0  # was null when max_steps < logging_steps
    assert (run_dir / "loss.png").stat().st_size > 1000


@pytest.mark.slow  # CI runs README's own-data command itself: tests/test_readme_commands.py
@pytest.mark.e2e
def test_own_data_with_readmes_overrides_exits_0(tmp_path):
    """README's command for one's own data (stage 2 after stage 1 of the default): no synthetic eval."""
    mine = tmp_path / "mine"
    (mine / "images").mkdir(parents=True)
    Image.new("RGB", (40, 36), "red").save(mine / "images" / "r.png")
    turn = lambda q, a: [{"from": "human", "value": q}, {"from": "gpt", "value": a}]  # noqa: E731
    records = [{"id": f"u{i}", "image": "r.png", "conversations": turn("<image>\nWhat color?", "red")} for i in range(6)]
    (mine / "qa.json").write_text(json.dumps(records))
    stage1 = cli(tmp_path, "training.max_steps=2", *SMALL)
    assert stage1.returncode == 0, stage1.stderr[-3000:]
    done = cli(tmp_path, "stage=finetune", f"data.data_path={mine / 'qa.json'}", f"data.image_folder={mine / 'images'}",
               "training.max_steps=2", "training.per_device_train_batch_size=2")
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((tmp_path / "out" / "tiny" / "finetune_qa" / "metrics.json").read_text())  # its own run dir
    assert metrics["train_samples"] == 6 and "eval_accuracy" not in metrics
    assert "no evaluation: data.eval_data_path is the synthetic held-out set" in done.stdout


def test_every_trained_part_finds_its_optimizer_group(compose_spec, tmp_path):
    from llava_hydra.model import build_model
    from llava_hydra.train.param_groups import parameter_groups, part_groups

    model, _, _ = build_model(compose_spec(f"paths.cache_dir={tmp_path}", "stage=finetune",
                                           "stage.pretrain_mm_mlp_adapter=null",
                                           "stage.trainable=[mm_projector,llm,vision_tower]"))
    decay = {n for n, p in model.named_parameters() if p.ndim >= 2}
    groups = parameter_groups(model, decay, 0.0, vision_tower_lr=2e-6)
    names = {part: groups[i]["name"] for part, i in part_groups(model, groups).items()}
    # each part -> the first group holding one of its tensors (the vision tower's: class_embedding, no decay)
    assert names == {"llm": "base_decay", "mm_projector": "base_decay", "vision_tower": "vision_tower_no_decay"}
    projector_only = compose_spec(f"paths.cache_dir={tmp_path}")  # stage 1: the projector alone, at the base rate
    model, _, _ = build_model(projector_only)
    groups = parameter_groups(model, decay, 0.0)
    assert {part: groups[i]["name"] for part, i in part_groups(model, groups).items()} == {"mm_projector": "base_decay"}
