"""A tracker in training.report_to that is not installed stops the run before anything heavy:
the error names the package and the install extra, and no model is built or data generated."""

from __future__ import annotations

import importlib.util
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from llava_hydra.config.trackers import check_trackers


@pytest.fixture
def without(monkeypatch):
    """without(*modules): importlib.util.find_spec reports those modules as not installed."""
    def hide(*modules):
        real = importlib.util.find_spec
        monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in modules else real(name, *a))
    return hide


def test_missing_wandb_names_package_and_extra(without):
    without("wandb")
    with pytest.raises(ValueError, match=r"report_to includes 'wandb'.*wandb package is not installed.*"
                                         r"pip install 'llava_hydra\[wandb\]'"):
        check_trackers(["wandb"])
    check_trackers(["none"])  # nothing to check
    check_trackers("none")


def test_tensorboardx_serves_tensorboard(without):
    without("tensorboard", "tensorboardX")
    with pytest.raises(ValueError, match=r"llava_hydra\[tensorboard\]"):
        check_trackers(["tensorboard"])
    without("tensorboard")
    if importlib.util.find_spec("tensorboardX") is not None:
        check_trackers(["tensorboard"])


def test_tracker_without_our_extra_names_the_pip_package(without):
    without("mlflow")
    with pytest.raises(ValueError, match=r"pip install mlflow,"):
        check_trackers(["none", "mlflow"])


def test_run_stops_before_building_the_model(compose_spec, tmp_path, without, monkeypatch):
    import llava_hydra.model
    from llava_hydra.commands.runner import run

    monkeypatch.setattr(llava_hydra.model, "build_model", lambda cfg: pytest.fail("the model was built"))
    without("wandb")
    with pytest.raises(ValueError, match="wandb"):
        run(compose_spec("training.report_to=[wandb]", f"paths.output_root={tmp_path}",
                         f"paths.cache_dir={tmp_path / 'cache'}"))
    assert not (tmp_path / "cache").exists()  # no tiny model built, no synthetic data written


def test_command_line_error_comes_before_torch_is_imported(tmp_path):
    code = ("import importlib.util, runpy, sys\n"
            "real = importlib.util.find_spec\n"
            "importlib.util.find_spec = lambda n, *a: None if n == 'wandb' else real(n, *a)\n"
            f"sys.argv = ['llava_hydra', 'training.report_to=[wandb]', 'paths.output_root={tmp_path}',"
            f" 'paths.cache_dir={tmp_path / 'cache'}']\n"
            "try:\n"
            "    runpy.run_module('llava_hydra', run_name='__main__')\n"
            "finally:\n"
            "    print('torch imported:', 'torch' in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "pip install 'llava_hydra[wandb]'" in done.stderr + done.stdout
    assert "torch imported: False" in done.stdout


# -- what the trackers get: name, project, group, the spec, every learning rate, eval and final metrics --

def wandb_run(job_dir: Path) -> dict:
    """An offline wandb run read back from its .wandb file (LevelDB-style log of protobuf records):
    the run record (project, name, group, id), config, summary and history rows."""
    from wandb.proto import wandb_internal_pb2 as pb

    (path,) = job_dir.glob("wandb/offline-run-*/*.wandb")
    data, pos, chunks, pending = path.read_bytes(), 7, [], b""
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7]) if left >= 7 else (0, 0, 0)
        if left < 7 or (length == 0 and kind == 0):  # block trailer / padding
            pos += left
            continue
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind == 1:
            chunks.append(chunk)
        elif kind in (2, 3):
            pending += chunk
        else:
            chunks.append(pending + chunk)
            pending = b""
    out = {"config": {}, "summary": {}, "history": []}
    items = lambda updates: {u.key or "/".join(u.nested_key): json.loads(u.value_json) for u in updates}  # noqa: E731
    for chunk in chunks:
        record = pb.Record()
        record.ParseFromString(chunk)
        kind = record.WhichOneof("record_type")
        if kind == "run":
            out.update(project=record.run.project, name=record.run.display_name, group=record.run.run_group,
                       id=record.run.run_id)
            out["config"].update(items(record.run.config.update))
        elif kind == "config":
            out["config"].update(items(record.config.update))
        elif kind == "summary":
            out["summary"].update(items(record.summary.update))
        elif kind == "history":
            out["history"].append(items(record.history.item))
    return out


@pytest.mark.e2e
def test_sweep_jobs_reach_wandb_and_tensorboard_with_spec_rates_and_metrics(tmp_path):
    pytest.importorskip("wandb")
    report = ["wandb"] + (["tensorboard"] if importlib.util.find_spec("tensorboard") else [])
    args = [sys.executable, "-m", "llava_hydra", "-m", f"paths.output_root={tmp_path}", f"paths.cache_dir={tmp_path}/c",
            "data.synthetic.num_images=32", "data.synthetic.num_text_only=8", "data.synthetic.num_eval=4",
            "training.per_device_train_batch_size=4", "training.max_steps=2", "training.warmup_ratio=0",
            "stage=finetune", "stage.pretrain_mm_mlp_adapter=null", "training.learning_rate=1e-3",
            f"training.report_to=[{','.join(report)}]", "training.mm_projector_lr=1e-4,2e-4"]
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    env.pop("WANDB_DIR", None)
    done = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    (sweep,) = (tmp_path / "multirun" / "tiny" / "finetune").glob("*")
    # the sweep prints its table and where it is
    assert f"sweep summary ({sweep}/summary.{{md,csv,json}})" in done.stdout
    assert "| 1 | training.mm_projector_lr=0.0002 | ok |" in done.stdout
    for job, rate in (("0", 1e-4), ("1", 2e-4)):
        run = wandb_run(sweep / job)  # under the job's run directory, not the working directory
        assert (run["project"], run["group"]) == ("llava_hydra", sweep.name)
        assert run["name"] == f"tiny/finetune training.mm_projector_lr={rate:g}"  # model/stage + what the sweep varies
        assert run["config"]["model"]["name"] == "tiny" and run["config"]["stage"]["trainable"] == ["mm_projector", "llm"]
        assert run["config"]["training"]["mm_projector_lr"] == rate
        assert run["config"]["learning_rates"] == {"mm_projector": rate, "llm": 1e-3}
        (step,) = [h for h in run["history"] if "train/loss" in h]
        schedule = step["train/learning_rate/llm"] / 1e-3  # the cosine's factor at the logged step
        assert step["train/learning_rate"] == step["train/learning_rate/llm"] and schedule > 0
        assert step["train/learning_rate/mm_projector"] == pytest.approx(rate * schedule)
        metrics = json.loads((sweep / job / "metrics.json").read_text())
        assert any(h.get("eval/accuracy") == metrics["eval_accuracy"] for h in run["history"])
        assert run["summary"]["eval_accuracy"] == metrics["eval_accuracy"]
        assert run["summary"]["train_loss"] == pytest.approx(metrics["train_loss"])
        assert list((sweep / job).glob("wandb/offline-run-*/files/metrics.json"))
        if "tensorboard" in report:
            from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

            events = EventAccumulator(str(sweep / job / "tensorboard"))
            events.Reload()
            assert [(e.step, e.value) for e in events.Scalars("eval/accuracy")] == [(2, metrics["eval_accuracy"])]
            assert events.Scalars("train/learning_rate/mm_projector")[0].value == pytest.approx(rate * schedule)
            assert "spec/text_summary" in events.Tags()["tensors"]
    assert not (tmp_path / "wandb").exists() and not (tmp_path / "runs").exists()


def test_run_name_learning_rates_and_swept_keys(compose_spec):
    from llava_hydra.commands.sweep import swept_keys
    from llava_hydra.commands.tracking import learning_rates, run_name

    cfg = compose_spec("stage=finetune", "training.mm_projector_lr=2e-5")
    assert run_name(cfg) == "tiny/finetune"
    assert learning_rates(cfg) == {"mm_projector": 2e-5, "llm": 1e-3}
    assert learning_rates(compose_spec()) == {"mm_projector": 1e-3}
    assert run_name(compose_spec("training.run_name=mine")) == "mine"
    sweep = OmegaConf.create({"hydra": {"overrides": {"task": [
        "training.mm_projector_lr=1e-5,2e-5", "stage=finetune", "+training.max_grad_norm=range(1,3)"]},
        "sweeper": {"params": {"training.learning_rate": "interval(1e-5, 1e-3)"}}}})
    assert swept_keys(sweep) == ["training.mm_projector_lr", "training.max_grad_norm", "training.learning_rate"]


def test_workers_of_a_sweep_job_keep_its_tracker_group(monkeypatch):
    """launcher.nproc_per_node workers run outside Hydra: the job hands them its group by
    environment (and its run name in their spec), so a sweep's runs stay grouped."""
    from llava_hydra.commands.tracking import GROUP_ENV, sweep_job

    monkeypatch.delenv(GROUP_ENV, raising=False)
    assert sweep_job() == (None, [])
    monkeypatch.setenv(GROUP_ENV, "2026-11-24_10-00-00")
    assert sweep_job() == ("2026-11-24_10-00-00", [])
