"""Two processes on CPU (gloo): torchrun with DDP, ZeRO-2 and ZeRO-3 runs of the embedded
default finish in one run directory with one .hydra/, and the ZeRO-3 projector file equals
the projector gathered from the partitions."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from launching import free_port, torchrun
from safetensors.torch import load_file

pytestmark = pytest.mark.e2e
pytest.importorskip("deepspeed")

SMALL = ["data.synthetic.num_images=32", "data.synthetic.num_text_only=8", "data.synthetic.num_eval=4",
         "training.max_steps=3", "training.per_device_train_batch_size=4", "training.save_steps=2",
         "eval.max_samples=4"]
HELPER = Path(__file__).parent / "helpers" / "run_and_compare_projector.py"


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


def one_hydra_dir(root: Path) -> list[Path]:
    return sorted(p.parent for p in root.rglob(".hydra"))


def test_zero3_two_processes_save_the_gathered_projector(tmp_path, cache):
    run_dir = tmp_path / "run"
    done = torchrun(str(HELPER), "deepspeed=zero3", f"run_dir={run_dir}", f"paths.cache_dir={cache}", *SMALL,
                    cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-4000:]
    for rank in (0, 1):
        verdict = json.loads((run_dir / f"projector_check_rank{rank}.json").read_text())
        assert verdict["partitioned"], "ZeRO-3 did not partition the model"
        assert verdict["equal"], f"rank {rank}: saved projector differs from the gathered one"
        assert verdict["keys"] == sorted(load_file(run_dir / "mm_projector.safetensors"))
    assert not list(run_dir.rglob("model*.safetensors")), "stage 1 must not save the frozen model"


@pytest.mark.parametrize("launch", ["torchrun ZeRO-2", "launcher.nproc_per_node DDP"])
def test_two_processes_one_run_directory(tmp_path, cache, launch):
    overrides = ["stage=finetune", "stage.pretrain_mm_mlp_adapter=null", f"paths.output_root={tmp_path / 'out'}",
                 f"paths.cache_dir={cache}", *SMALL]
    if launch.startswith("torchrun"):
        done = torchrun("-m", "llava_hydra", "deepspeed=zero2", *overrides, cwd=tmp_path)
    else:  # one command: the runner composes once and starts the workers itself
        env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
        done = subprocess.run([sys.executable, "-m", "llava_hydra", "launcher.nproc_per_node=2", "deepspeed=none",
                               *overrides], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    run_dir = tmp_path / "out" / "tiny" / "finetune"
    assert one_hydra_dir(tmp_path) == [run_dir]
    assert (run_dir / "model.safetensors").exists() and (run_dir / "metrics.json").exists()
    if launch.startswith("torchrun"):
        log = (run_dir / "tiny_finetune.log").read_text()
        assert log.count("metrics:") == 1, "only rank 0 writes the run's log file"
    else:
        assert (run_dir / "launch_spec.yaml").exists()
        log = (run_dir / "tiny_finetune.log").read_text()
        assert "launching 2 workers" in log
        assert log.count("metrics:") == 1 and "| loss " in log, "rank 0 of the workers appends to the run's log"


def test_deepspeed_launcher_local_rank_is_taken_off_hydras_command_line(tmp_path, cache):
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
    deepspeed = Path(sys.executable).parent / "deepspeed"
    cmd = [str(deepspeed), "--num_gpus", "2", f"--master_port={free_port()}", "--module", "llava_hydra",
           "deepspeed=zero2", f"paths.output_root={tmp_path / 'out'}", f"paths.cache_dir={cache}", *SMALL]
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    run_dir = tmp_path / "out" / "tiny" / "pretrain"
    assert one_hydra_dir(tmp_path) == [run_dir]
    assert (run_dir / "mm_projector.safetensors").exists()
