"""A LoRA run killed with SIGKILL and resumed from its last checkpoint (adapter + projector +
optimizer state) ends exactly where an uninterrupted run does."""

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

HELPER = Path(__file__).parent / "helpers" / "run_and_die.py"
SMALL = ["stage=finetune", "stage.pretrain_mm_mlp_adapter=null", "lora=lora", "lora.r=8", "lora.alpha=16",
         "data.synthetic.num_images=48", "data.synthetic.num_text_only=16", "data.synthetic.num_eval=4",
         "training.max_steps=6", "training.save_steps=3", "training.logging_steps=1",
         "training.per_device_train_batch_size=4", "training.save_total_limit=2", "eval.enable=false"]


def launch(out: Path, cache: Path, *overrides: str, kill_at: int = 0) -> subprocess.CompletedProcess:
    env = {**os.environ, "KILL_AT_STEP": str(kill_at)}
    args = [sys.executable, str(HELPER), f"run_dir={out}", f"paths.cache_dir={cache}", *SMALL, *overrides]
    return subprocess.run(args, env=env, capture_output=True, text=True)


def logged_losses(run_dir: Path) -> dict[int, float]:
    history = json.loads((run_dir / "checkpoint-6" / "trainer_state.json").read_text())["log_history"]
    return {e["step"]: e["loss"] for e in history if "loss" in e}


@pytest.mark.e2e
def test_killed_and_resumed_lora_run_matches_uninterrupted(tmp_path_factory, tmp_path):
    cache = tmp_path_factory.mktemp("cache")
    whole = launch(tmp_path / "whole", cache)
    assert whole.returncode == 0, whole.stderr[-3000:]

    killed = launch(tmp_path / "resumed", cache, kill_at=4)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert (tmp_path / "resumed" / "checkpoint-3" / "adapter_model.safetensors").exists()
    assert not (tmp_path / "resumed" / "checkpoint-6").exists()
    resumed = launch(tmp_path / "resumed", cache, "training.resume_from_checkpoint=auto")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stderr

    losses = logged_losses(tmp_path / "whole")
    assert len(losses) == 6 and logged_losses(tmp_path / "resumed") == losses
    a = load_file(tmp_path / "whole" / "adapter_model.safetensors")
    b = load_file(tmp_path / "resumed" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and any("multi_modal_projector" in k for k in a)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)
    # the adapter trained: it is not what the run started from
    start = load_file(tmp_path / "resumed" / "checkpoint-3" / "adapter_model.safetensors")
    assert any(not torch.equal(start[k], a[k]) for k in a)
