"""Checkpoints: a run killed with SIGKILL and resumed ends exactly where an uninterrupted run
does (stage 1, stage 2, stage 2 under LoRA: adapter + projector + optimizer state); incomplete
checkpoints are skipped with a warning; checkpoints land atomically."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from llava_hydra.trainer import find_resume_checkpoint

HELPER = Path(__file__).parent / "helpers" / "run_and_die.py"
SMALL = ["data.synthetic.num_images=48", "data.synthetic.num_text_only=16", "data.synthetic.num_eval=4",
         "training.max_steps=6", "training.save_steps=3", "training.logging_steps=1",
         "training.per_device_train_batch_size=4", "training.save_total_limit=2", "eval.enable=false"]


def launch(out: Path, cache: Path, *overrides: str, kill_at: int = 0) -> subprocess.CompletedProcess:
    env = {**os.environ, "KILL_AT_STEP": str(kill_at)}
    args = [sys.executable, str(HELPER), f"run_dir={out}", f"paths.cache_dir={cache}", *SMALL, *overrides]
    return subprocess.run(args, env=env, capture_output=True, text=True)


def logged_losses(run_dir: Path) -> dict[int, float]:
    (last,) = sorted(run_dir.glob("checkpoint-6"))
    history = json.loads((last / "trainer_state.json").read_text())["log_history"]
    return {e["step"]: e["loss"] for e in history if "loss" in e}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


LORA = ["stage=finetune", "lora=lora", "lora.r=8", "lora.alpha=16"]


@pytest.mark.e2e
@pytest.mark.parametrize("overrides, weights", [(["stage=pretrain"], "mm_projector.safetensors"),
                                                (["stage=finetune"], "model.safetensors"),
                                                (LORA, "adapter_model.safetensors")],
                         ids=["pretrain", "finetune", "finetune-lora"])
def test_killed_and_resumed_run_matches_uninterrupted(tmp_path, cache, overrides, weights):
    extra = [*overrides, "stage.pretrain_mm_mlp_adapter=null"]
    whole = launch(tmp_path / "whole", cache, *extra)
    assert whole.returncode == 0, whole.stderr[-3000:]

    killed = launch(tmp_path / "resumed", cache, *extra, kill_at=4)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert (tmp_path / "resumed" / "checkpoint-3" / weights).exists()
    assert not (tmp_path / "resumed" / "checkpoint-6").exists()
    resumed = launch(tmp_path / "resumed", cache, *extra, "training.resume_from_checkpoint=auto")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stderr

    losses = logged_losses(tmp_path / "whole")
    assert len(losses) == 6 and logged_losses(tmp_path / "resumed") == losses
    a, b = load_file(tmp_path / "whole" / weights), load_file(tmp_path / "resumed" / weights)
    assert a.keys() == b.keys() and any("multi_modal_projector" in k for k in a)  # LoRA: projector beside the adapter
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)
    start = load_file(tmp_path / "resumed" / "checkpoint-3" / weights)  # and the run did train
    assert any(not torch.equal(start[k], a[k]) for k in a)


def make_checkpoint(run_dir: Path, step: int, complete: bool = True) -> Path:
    path = run_dir / f"checkpoint-{step}"
    path.mkdir(parents=True)
    (path / "mm_projector.safetensors").write_bytes(b"")
    if complete:
        (path / "trainer_state.json").write_text("{}")
    return path


def test_resume_auto_skips_an_incomplete_checkpoint(tmp_path, caplog):
    good = make_checkpoint(tmp_path, 10)
    make_checkpoint(tmp_path, 20, complete=False)  # killed while writing, before staging existed
    (tmp_path / ".checkpoint-staging" / "checkpoint-30").mkdir(parents=True)  # a save in progress
    with caplog.at_level("WARNING"):
        assert find_resume_checkpoint(str(tmp_path), "auto") == str(good)
    assert "checkpoint-20" in caplog.text
    assert find_resume_checkpoint(str(tmp_path), True) == str(good)
    assert find_resume_checkpoint(str(tmp_path), "false") is None
    assert find_resume_checkpoint(str(tmp_path), None) is None
    assert find_resume_checkpoint(str(tmp_path / "empty"), "auto") is None  # first run of a job


def test_resume_from_a_path_that_is_not_a_checkpoint_is_an_error(tmp_path):
    bad = make_checkpoint(tmp_path, 5, complete=False)
    with pytest.raises(FileNotFoundError, match="checkpoint-5"):
        find_resume_checkpoint(str(tmp_path), str(bad))
