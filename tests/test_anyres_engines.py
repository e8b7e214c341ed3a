"""The engines with the tiny AnyRes models (model=tiny_onevision, model=tiny_next): two processes under
torchrun with DeepSpeed ZeRO-3 and ZeRO-2, launcher.nproc_per_node=2 (DDP), LoRA, and a run killed with
SIGKILL and resumed ending exactly where an uninterrupted one does. Slow: `pytest -m slow tests/test_anyres_engines.py`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from launching import torchrun
from safetensors.torch import load_file

pytestmark = pytest.mark.slow
pytest.importorskip("deepspeed")

HELPER = Path(__file__).parent / "helpers" / "run_and_die.py"
SMALL = ["data.synthetic.num_images=32", "data.synthetic.num_text_only=8", "data.synthetic.num_eval=4",
         "training.max_steps=3", "training.per_device_train_batch_size=4", "training.save_steps=2",
         "eval.max_samples=4", "stage=finetune", "stage.pretrain_mm_mlp_adapter=null"]
CLASSES = {"tiny_onevision": "LlavaOnevisionForConditionalGeneration", "tiny_next": "LlavaNextForConditionalGeneration"}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


def saved_model_class(run_dir: Path) -> str:
    return json.loads((run_dir / "config.json").read_text())["architectures"][0]


@pytest.mark.parametrize("model, launch", [("tiny_onevision", "torchrun zero3"), ("tiny_next", "torchrun zero2"),
                                           ("tiny_onevision", "nproc_per_node ddp")])
def test_two_processes(tmp_path, cache, model, launch):
    overrides = [f"model={model}", f"paths.output_root={tmp_path / 'out'}", f"paths.cache_dir={cache}", *SMALL]
    if launch.startswith("torchrun"):
        done = torchrun("-m", "llava_hydra", f"deepspeed={launch.split()[1]}", *overrides, cwd=tmp_path)
    else:
        env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
        done = subprocess.run([sys.executable, "-m", "llava_hydra", "launcher.nproc_per_node=2", "deepspeed=none",
                               *overrides], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    run_dir = tmp_path / "out" / model / "finetune"
    assert saved_model_class(run_dir) == CLASSES[model]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["train_steps"] == 3 and metrics["eval_samples"] == 4
    state = load_file(run_dir / "model.safetensors")
    assert state["image_newline"].shape == (128,) and state["image_newline"].abs().sum() > 0


def launch(out: Path, cache: Path, *overrides: str, kill_at: int = 0) -> subprocess.CompletedProcess:
    env = {**os.environ, "KILL_AT_STEP": str(kill_at)}
    args = [sys.executable, str(HELPER), f"run_dir={out}", f"paths.cache_dir={cache}", *SMALL, "training.max_steps=6",
            "training.save_steps=3", "training.logging_steps=1", "training.save_total_limit=2", "eval.enable=false",
            *overrides]
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=900)


def losses(run_dir: Path) -> dict[int, float]:
    history = json.loads((run_dir / "checkpoint-6" / "trainer_state.json").read_text())["log_history"]
    return {e["step"]: e["loss"] for e in history if "loss" in e}


@pytest.mark.parametrize("overrides, weights", [(["model=tiny_onevision"], "model.safetensors"),
                                                (["model=tiny_next", "lora=lora", "lora.r=8", "lora.alpha=16"],
                                                 "adapter_model.safetensors")],
                         ids=["onevision", "next-lora"])
def test_killed_and_resumed_anyres_run_matches_uninterrupted(tmp_path, cache, overrides, weights):
    whole = launch(tmp_path / "whole", cache, *overrides)
    assert whole.returncode == 0, whole.stderr[-3000:]
    killed = launch(tmp_path / "resumed", cache, *overrides, kill_at=4)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert not (tmp_path / "resumed" / "checkpoint-6").exists()
    resumed = launch(tmp_path / "resumed", cache, *overrides, "training.resume_from_checkpoint=auto")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stderr
    assert len(losses(tmp_path / "whole")) == 6 and losses(tmp_path / "resumed") == losses(tmp_path / "whole")
    a, b = load_file(tmp_path / "whole" / weights), load_file(tmp_path / "resumed" / weights)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)
    if weights.startswith("adapter"):  # LoRA: the adapter plus the parts trained whole (the projector)
        assert any("lora_A" in k for k in a) and any("multi_modal_projector" in k for k in a), sorted(a)[:5]
