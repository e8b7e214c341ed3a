"""Checkpoints and run directories, one process: a run killed with SIGKILL and resumed ends
exactly where an uninterrupted run does (stage 1, stage 2, stage 2 under LoRA: adapter +
projector + optimizer state; metrics.json's mean loss included); damaged checkpoints are skipped
with a warning naming the file; a run directory is locked and holds one run; a checkpoint is
resumed only under the spec it was written under. Two processes and DeepSpeed:
test_resume_matrix.py."""

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

from llava_hydra.train.checkpoint_trust import note_written
from llava_hydra.train.checkpoints import (MANIFEST, RUN_FILE, RUN_RECORD, CheckpointError, RunDirError, claim_run_dir,
                                     find_resume_checkpoint, lock_run_dir, write_checkpoint_record)

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
@pytest.mark.parametrize("overrides, weights", [
    # stage 1 in CI: tests/test_resume_matrix.py's two-process stage 1 cases (ZeRO-2, FSDP2)
    pytest.param(["stage=pretrain"], "mm_projector.safetensors", marks=pytest.mark.slow, id="pretrain"),
    pytest.param(["stage=finetune"], "model.safetensors", id="finetune"),
    pytest.param(LORA, "adapter_model.safetensors", id="finetune-lora")])
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
    # metrics.json: the mean over all six steps, not over the three after the resume
    mean_whole = json.loads((tmp_path / "whole" / "metrics.json").read_text())["train_loss_mean"]
    mean_resumed = json.loads((tmp_path / "resumed" / "metrics.json").read_text())["train_loss_mean"]
    assert mean_resumed == pytest.approx(mean_whole, rel=1e-9, abs=0)
    assert mean_whole == pytest.approx(sum(losses.values()) / 6, rel=1e-9, abs=0)
    assert mean_resumed != pytest.approx(sum(losses[s] for s in (4, 5, 6)) / 3, rel=1e-6)
    record = json.loads((tmp_path / "resumed" / "checkpoint-6" / RUN_RECORD).read_text())
    assert record["spec"]["stage"]["name"] == overrides[0].split("=")[1]
    assert record["run_id"] == json.loads((tmp_path / "resumed" / "checkpoint-3" / RUN_RECORD).read_text())["run_id"]
    a, b = load_file(tmp_path / "whole" / weights), load_file(tmp_path / "resumed" / weights)
    assert a.keys() == b.keys() and any("multi_modal_projector" in k for k in a)  # LoRA: projector beside the adapter
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)
    start = load_file(tmp_path / "resumed" / "checkpoint-3" / weights)  # and the run did train
    assert any(not torch.equal(start[k], a[k]) for k in a)


def make_checkpoint(run_dir: Path, step: int, spec: dict | None = None, run_id: str = "run-a") -> Path:
    """A checkpoint as the trainer writes one: weights, trainer state, run record, manifest."""
    from safetensors.torch import save_file

    path = run_dir / f"checkpoint-{step}"
    path.mkdir(parents=True)
    save_file({"w": torch.arange(64, dtype=torch.float32)}, path / "mm_projector.safetensors")
    (path / "optimizer.pt").write_bytes(b"x" * 100)
    (path / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    write_checkpoint_record(path, run_id, spec if spec is not None else SPEC, train_loss_sum=1.5)
    if not (run_dir / RUN_FILE).exists():  # as claim_run_dir starts a run
        (run_dir / RUN_FILE).write_text(json.dumps({"run_id": run_id, "checkpoints": []}))
    note_written(run_dir / RUN_FILE, path, MANIFEST)  # as the trainer lists what the run wrote
    return path


SPEC = {"model": {"name": "tiny", "llm": "builtin://tiny-llama"}, "data": {"data_path": "a.json"},
        "training": {"learning_rate": 1e-3, "output_dir": "out/a", "save_steps": 3}, "run_dir": "out/a"}


def truncate(f: Path) -> None:
    f.write_bytes(f.read_bytes()[:-10])


@pytest.mark.parametrize("damage", ["mm_projector.safetensors", "optimizer.pt", MANIFEST])
def test_resume_auto_skips_a_damaged_checkpoint_naming_the_file(tmp_path, caplog, damage):
    good = make_checkpoint(tmp_path, 10)
    bad = make_checkpoint(tmp_path, 20)
    (bad / damage).unlink() if damage == MANIFEST else truncate(bad / damage)
    (tmp_path / ".checkpoint-staging" / "checkpoint-30").mkdir(parents=True)  # a save in progress
    with caplog.at_level("WARNING"):
        assert find_resume_checkpoint(str(tmp_path), "auto") == str(good)
    assert f"checkpoint-20/{damage}" in caplog.text
    assert find_resume_checkpoint(str(tmp_path), True) == str(good)
    # named explicitly, the damaged one is an error naming the file
    with pytest.raises(CheckpointError, match=f"checkpoint-20/{damage}"):
        find_resume_checkpoint(str(tmp_path), str(bad))


def test_a_safetensors_file_overwritten_to_the_same_size_is_caught(tmp_path):
    good = make_checkpoint(tmp_path, 10)
    bad = make_checkpoint(tmp_path, 20)
    f = bad / "mm_projector.safetensors"
    f.write_bytes(b"\0" * f.stat().st_size)  # same size, header gone
    assert find_resume_checkpoint(str(tmp_path), "auto") == str(good)


def test_resume_request_off_or_first_run(tmp_path):
    make_checkpoint(tmp_path, 10)
    assert find_resume_checkpoint(str(tmp_path), "false") is None
    assert find_resume_checkpoint(str(tmp_path), None) is None
    assert find_resume_checkpoint(str(tmp_path / "empty"), "auto") is None  # first run of a job


def test_all_checkpoints_damaged_is_an_error_not_a_fresh_start(tmp_path):
    truncate(make_checkpoint(tmp_path, 10) / "optimizer.pt")
    with pytest.raises(CheckpointError, match="every checkpoint"):
        find_resume_checkpoint(str(tmp_path), "auto")


def test_a_new_run_in_a_used_run_directory_is_refused_with_the_ways_out(tmp_path):
    make_checkpoint(tmp_path, 6)
    (tmp_path / "mm_projector.safetensors").write_bytes(b"final")
    with pytest.raises(RunDirError) as e:
        claim_run_dir(str(tmp_path), SPEC, None, is_main=True)
    message = str(e.value)
    for needed in ("checkpoint-6", "mm_projector.safetensors", "training.resume_from_checkpoint=auto",
                   "training.output_dir=", "paths.output_root=", "training.overwrite_output_dir=true"):
        assert needed in message
    assert (tmp_path / "checkpoint-6" / "optimizer.pt").exists()  # untouched
    # continuing it is allowed, and keeps its run id
    assert claim_run_dir(str(tmp_path), SPEC, "auto", is_main=True) == (str(tmp_path / "checkpoint-6"), "run-a")
    # the documented override replaces it
    assert claim_run_dir(str(tmp_path), SPEC, None, is_main=True, overwrite=True)[0] is None
    assert not (tmp_path / "checkpoint-6").exists() and not (tmp_path / "mm_projector.safetensors").exists()


def test_resuming_another_directorys_checkpoint_into_a_used_one_is_refused(tmp_path):
    other = make_checkpoint(tmp_path / "other", 4)
    make_checkpoint(tmp_path / "mine", 6)
    with pytest.raises(RunDirError, match="checkpoint-6"):
        claim_run_dir(str(tmp_path / "mine"), SPEC, str(other), is_main=True)


def test_resuming_under_another_spec_is_refused_naming_the_keys(tmp_path, caplog):
    make_checkpoint(tmp_path, 6)
    changed = json.loads(json.dumps(SPEC))
    changed["training"]["learning_rate"] = 2e-3
    changed["data"]["data_path"] = "b.json"
    changed["training"]["save_steps"] = 100  # bookkeeping: may change
    changed["run_dir"] = changed["training"]["output_dir"] = "elsewhere"
    with pytest.raises(CheckpointError) as e:
        claim_run_dir(str(tmp_path), changed, "auto", is_main=True)
    message = str(e.value)
    assert "training.learning_rate: 0.001 -> 0.002" in message and "data.data_path: 'a.json' -> 'b.json'" in message
    assert "save_steps" not in message and "output_dir:" not in message and "run_dir" not in message
    assert "training.resume_allow_spec_change=true" in message
    with caplog.at_level("WARNING"):
        assert claim_run_dir(str(tmp_path), changed, "auto", is_main=True, allow_spec_change=True)[0] == \
            str(tmp_path / "checkpoint-6")
    assert "training.learning_rate" in caplog.text


def test_a_second_run_is_refused_while_the_first_holds_the_directory(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom llava_hydra.train.checkpoints import "
                               "lock_run_dir\nlock_run_dir(sys.argv[1]); print('locked', flush=True); time.sleep(600)",
                               str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunDirError, match=f"in use by another run \\(pid {holder.pid} "):
            lock_run_dir(tmp_path)
    finally:
        holder.kill()  # SIGKILL: no cleanup runs
        holder.wait()
    lock_run_dir(tmp_path)  # the kernel dropped the killed run's lock
    lock_run_dir(tmp_path)  # and this process may claim it again for its next run


def test_zero_epochs_is_refused_before_anything_loads(compose_spec, tmp_path):
    from llava_hydra.commands.runner import run

    spec = compose_spec(f"paths.output_root={tmp_path}", f"paths.cache_dir={tmp_path / 'cache'}",
                        "training.num_train_epochs=0")
    with pytest.raises(ValueError, match="training.num_train_epochs=0"):
        run(spec)
    assert not (tmp_path / "cache").exists()  # refused before data or models were made


def test_rerunning_the_default_command_says_how_to_resume(tmp_path, cache):
    run_dir = tmp_path / "tiny" / "pretrain"
    make_checkpoint(run_dir, 6)
    done = subprocess.run([sys.executable, "-m", "llava_hydra", f"paths.output_root={tmp_path}",
                           f"paths.cache_dir={cache}"], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode != 0
    assert "already holds another run (run run-a" in done.stderr
    # its checkpoint was written under another spec: resuming would be refused, so it is not offered
    assert "continuing it is refused" in done.stderr and "training.resume_from_checkpoint=auto" not in done.stderr
    assert f"add training.output_dir={run_dir}-2" in done.stderr
    assert "train data:" not in done.stderr + (run_dir / "tiny_pretrain.log").read_text()  # refused before loading
