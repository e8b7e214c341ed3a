"""What protects a run: a stop signal saves a checkpoint at the next step and exits 128+signal,
and resuming it ends exactly where an uninterrupted run does (one process; two processes agree
on the step when only one rank got the signal); a time-based save interval saves whatever
save_steps says; a non-finite loss or gradient stops the run naming the step (or skips the step
under training.on_nonfinite=skip); a full disk is named as such. Checkpoint trust (NaN weights,
planted directories): test_checkpoint_trust.py.

The SIGTERM and NaN cases also run under FSDP2 (``-m slow``, engine ``fsdp2``): two processes on
gloo, the signal sent to rank 1 only; both ranks stop at the same step, the checkpoint resumes to
the uninterrupted FSDP2 run exactly."""

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

from launching import torchrun
from llava_hydra.train.preemption import Preempted, StopSignals, parse_signals

HELPER = Path(__file__).parent / "helpers" / "run_with_faults.py"
SMALL = ["data.synthetic.num_images=48", "data.synthetic.num_text_only=16", "data.synthetic.num_eval=4",
         "training.max_steps=6", "training.save_steps=3", "training.logging_steps=1",
         "training.per_device_train_batch_size=4", "training.save_total_limit=2", "eval.enable=false",
         "stage=finetune", "stage.pretrain_mm_mlp_adapter=null"]
# engine -> (overrides, processes, environment): fsdp2 keeps the global batch of 4 and signals rank 1 only
ENGINES = {"one": ((), 1, {}),
           "fsdp2": (("deepspeed=none", "fsdp=full", "training.per_device_train_batch_size=2"), 2, {"SIGNAL_RANK": "1"})}
SLOW_FSDP2 = pytest.param("fsdp2", marks=pytest.mark.slow)


def launch(out: Path, cache: Path, *overrides: str, engine: str = "one", **env: str) -> subprocess.CompletedProcess:
    engine_overrides, nproc, engine_env = ENGINES[engine]
    args = [str(HELPER), f"run_dir={out}", f"paths.cache_dir={cache}", *SMALL, *engine_overrides, *overrides]
    if nproc > 1:
        return torchrun(*args, nproc=nproc, env={**engine_env, **env}, timeout=300)
    return subprocess.run([sys.executable, *args], env={**os.environ, **env}, capture_output=True, text=True,
                          timeout=300)


def exited(done: subprocess.CompletedProcess, engine: str, status: int) -> bool:
    """The run exited with ``status``; under torchrun: the first rank to exit did (torchrun then sends
    SIGTERM to the others, which may be gone already: their own status or -15)."""
    if ENGINES[engine][1] == 1:
        return done.returncode == status
    ranks = done.stderr.split("Failures:")[-1]
    first = ranks.split("Root Cause (first observed failure):")[-1]
    codes = ranks.count(f"exitcode  : {status} ") + ranks.count("exitcode  : -15 ")
    return done.returncode != 0 and f"exitcode  : {status} " in first and codes == ENGINES[engine][1]


def logged_losses(checkpoint: Path) -> dict[int, float]:
    history = json.loads((checkpoint / "trainer_state.json").read_text())["log_history"]
    return {e["step"]: e["loss"] for e in history if "loss" in e}


def listed(run_dir: Path) -> list[str]:
    return [e["name"] for e in json.loads((run_dir / "run.json").read_text())["checkpoints"]]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, cache):
    """The uninterrupted run of each engine, made once."""
    made = {}

    def get(engine):
        if engine not in made:
            made[engine] = tmp_path_factory.mktemp(f"whole-{engine}")
            done = launch(made[engine], cache, engine=engine)
            assert done.returncode == 0, done.stderr[-3000:]
        return made[engine]

    return get


@pytest.mark.e2e
@pytest.mark.parametrize("engine", ["one", SLOW_FSDP2])
def test_sigterm_saves_the_next_step_exits_143_and_resumes_to_the_uninterrupted_result(tmp_path, cache,
                                                                                        uninterrupted, engine):
    out, nproc = tmp_path / "run", ENGINES[engine][1]
    stopped = launch(out, cache, engine=engine, SIGNAL_AT_STEP="4", SIGNAL="SIGTERM")  # arrives in step 5
    assert exited(stopped, engine, 143), stopped.stderr[-3000:]
    assert stopped.stderr.count("SIGTERM received: saving a checkpoint at the end of this optimizer step") == 1
    assert stopped.stderr.count(f"preempted at step 5 by SIGTERM: {out}/checkpoint-5 written; resume with "
                                "training.resume_from_checkpoint=auto (exit status 143)") == nproc  # each rank
    assert (out / "checkpoint-5" / "model.safetensors").exists() and not (out / "checkpoint-6").exists()
    assert not (out / "model.safetensors").exists() and not (out / "metrics.json").exists()  # not a finished run
    assert listed(out) == ["checkpoint-3", "checkpoint-5"]

    resumed = launch(out, cache, "training.resume_from_checkpoint=auto", engine=engine)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stderr and "checkpoint-5" in resumed.stderr
    whole = uninterrupted(engine)
    losses = logged_losses(whole / "checkpoint-6")
    assert sorted(losses) == [1, 2, 3, 4, 5, 6]
    assert logged_losses(out / "checkpoint-6") == losses
    a, b = load_file(whole / "model.safetensors"), load_file(out / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)
    mean = json.loads((whole / "metrics.json").read_text())["train_loss_mean"]
    assert json.loads((out / "metrics.json").read_text())["train_loss_mean"] == pytest.approx(mean, rel=1e-9)


@pytest.mark.e2e
def test_two_ranks_stop_at_the_same_step_when_only_one_got_the_signal(tmp_path, cache):
    out = tmp_path / "run"
    done = torchrun(str(HELPER), f"run_dir={out}", f"paths.cache_dir={cache}", *SMALL,
                    "training.per_device_train_batch_size=2",
                    env={"SIGNAL_AT_STEP": "1", "SIGNAL": "SIGUSR1", "SIGNAL_RANK": "1"}, timeout=240)
    assert done.returncode != 0
    assert "exitcode  : 138" in done.stderr  # 128 + SIGUSR1 (10), reported by torchrun for the ranks
    assert "SIGUSR1 received" in done.stderr and done.stderr.count("SIGUSR1 received") == 1  # rank 1 only
    assert done.stderr.count("preempted at step 2 by SIGUSR1") == 2  # both ranks, the same step
    assert (out / "checkpoint-2" / "model.safetensors").exists() and not (out / "checkpoint-3").exists()
    state = json.loads((out / "checkpoint-2" / "trainer_state.json").read_text())
    assert state["global_step"] == 2


@pytest.mark.e2e
def test_save_every_minutes_saves_whatever_save_steps_says(tmp_path, cache):
    out = tmp_path / "run"
    done = launch(out, cache, "training.max_steps=3", "training.save_steps=1000", "training.save_total_limit=null",
                  "training.save_every_minutes=1e-6")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "since the last checkpoint (training.save_every_minutes): saving one" in done.stderr
    assert listed(out) == ["checkpoint-1", "checkpoint-2", "checkpoint-3"]
    assert all((out / f"checkpoint-{s}" / "model.safetensors").exists() for s in (1, 2, 3))
    # off (the default): save_steps alone decides; the Trainer saves the last step only
    quiet = launch(tmp_path / "quiet", cache, "training.max_steps=3", "training.save_steps=1000")
    assert quiet.returncode == 0 and [p.name for p in (tmp_path / "quiet").glob("checkpoint-*")] == ["checkpoint-3"]


@pytest.mark.e2e
@pytest.mark.parametrize("engine", ["one", SLOW_FSDP2])
def test_a_nan_run_stops_naming_the_step_and_saves_nothing(tmp_path, cache, engine):
    out = tmp_path / "run"
    done = launch(out, cache, "training.learning_rate=1e6", engine=engine)  # the run: exited 0, NaN weights
    assert exited(done, engine, 1), done.stderr[-3000:]
    assert "NonFiniteError: step 3: the gradient norm is nan; training stopped before the optimizer applied it" \
        in done.stderr
    assert "training.on_nonfinite=skip" in done.stderr
    assert not (out / "metrics.json").exists() and not (out / "model.safetensors").exists()
    assert not list(out.glob("checkpoint-*"))  # save_steps=3: the NaN step 3 is never saved

    injected = launch(tmp_path / "nan4", cache, engine=engine, NAN_AT_STEP="4")
    assert exited(injected, engine, 1), injected.stderr[-3000:]
    on_rank = " on rank 0" if ENGINES[engine][1] > 1 else ""  # the lowest rank whose loss is NaN (here: all)
    assert f"NonFiniteError: step 4: the loss is nan{on_rank} and the gradient norm is nan" in injected.stderr
    assert (tmp_path / "nan4" / "checkpoint-3").exists() and not (tmp_path / "nan4" / "checkpoint-6").exists()


@pytest.mark.e2e
def test_on_nonfinite_skip_drops_the_step_and_counts_it(tmp_path, cache):
    out = tmp_path / "run"
    done = launch(out, cache, "training.max_steps=4", "training.on_nonfinite=skip", NAN_AT_STEP="4")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "step 4: the loss is nan and the gradient norm is nan: the step is skipped " \
           "(training.on_nonfinite=skip; 1 skipped so far)" in done.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["skipped_steps"] == 1 and metrics["train_steps"] == 4
    before, after = load_file(out / "checkpoint-3" / "model.safetensors"), load_file(out / "model.safetensors")
    for key in after:  # step 4 was not applied: the weights after it are step 3's
        assert torch.isfinite(after[key]).all(), key
        torch.testing.assert_close(after[key], before[key], rtol=0, atol=0, msg=key)


@pytest.mark.e2e
def test_a_full_disk_while_writing_optimizer_pt_is_named(tmp_path, cache):
    out = tmp_path / "run"
    done = launch(out, cache, FULL_DISK="1")
    assert done.returncode == 1
    assert (f"CheckpointWriteError: no space left on device (ENOSPC) while writing checkpoint "
            f"{out}/.checkpoint-staging/checkpoint-3: 0.00 GiB free") in done.stderr
    assert "unexpected pos 4160 vs 4048" in done.stderr  # torch's own words, kept
    assert not (out / ".checkpoint-staging").exists() and not (out / "checkpoint-3").exists()


# -- signals, in this process ------------------------------------------------------------------

def test_a_handler_there_before_runs_after_the_checkpoint_as_submitits_requeue_does():
    calls = []
    before = signal.signal(signal.SIGUSR1, lambda s, f: calls.append(s))
    try:
        stop = StopSignals(parse_signals(["SIGUSR1", "SIGTERM"]))
        assert stop.install()
        os.kill(os.getpid(), signal.SIGUSR1)
        assert stop.received == signal.SIGUSR1 and calls == []  # noted only: the step finishes first
        with pytest.raises(Preempted) as e:
            stop.hand_on(stop.received, 7, "out/checkpoint-7")
        assert calls == [signal.SIGUSR1]  # submitit's handler would requeue here
        assert e.value.code == 128 + signal.SIGUSR1
        assert str(e.value).startswith("preempted at step 7 by SIGUSR1: out/checkpoint-7 written")
        assert signal.getsignal(signal.SIGUSR1) is not stop._note  # handlers restored
    finally:
        signal.signal(signal.SIGUSR1, before)


def test_an_unknown_signal_name_is_refused_naming_the_valid_ones():
    with pytest.raises(ValueError, match="training.checkpoint_on_signals item 'TERM': not one of SIGTERM, SIGUSR1"):
        parse_signals(["TERM"])
    assert parse_signals([]) == []
