"""Every checkpoint records the content digest of the data it was trained on, and resuming on
edited data is refused with the changed file named (training.resume_allow_spec_change=true forces
it, with a warning)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from llava_hydra.train.checkpoints import RUN_RECORD, CheckpointError, write_checkpoint_record
from llava_hydra.train.data_tie import check_resume_data

HELPER = Path(__file__).parent / "helpers" / "run_and_die.py"
SMALL = ["data.synthetic.num_images=24", "data.synthetic.num_text_only=8", "data.synthetic.num_eval=4",
         "training.max_steps=4", "training.save_steps=2", "training.logging_steps=1",
         "training.per_device_train_batch_size=4", "eval.enable=false"]


def launch(out: Path, cache: Path, *overrides: str, kill_at: int = 0) -> subprocess.CompletedProcess:
    env = {**os.environ, "KILL_AT_STEP": str(kill_at)}
    args = [sys.executable, str(HELPER), f"run_dir={out}", f"paths.cache_dir={cache}", *SMALL, *overrides]
    return subprocess.run(args, env=env, capture_output=True, text=True)


def checkpoint(tmp_path, data: dict | None) -> str:
    path = tmp_path / "checkpoint-2"
    path.mkdir()
    write_checkpoint_record(path, "run-a", {"stage": {"name": "pretrain"}}, 1.0, data)
    return str(path)


TRAIN = {"path": "/data/train.json", "sha256": "a" * 64}
HELD_OUT = {"path": "/data/eval.json", "sha256": "b" * 64}


def test_changed_eval_file_is_named_and_the_override_only_warns(tmp_path, caplog):
    ckpt = checkpoint(tmp_path, {"train": TRAIN, "eval": HELD_OUT})
    check_resume_data(ckpt, {"train": TRAIN, "eval": HELD_OUT}, allow_change=False)  # same data: resumes
    now = {"train": TRAIN, "eval": {**HELD_OUT, "sha256": "c" * 64}}
    with pytest.raises(CheckpointError) as e:
        check_resume_data(ckpt, now, allow_change=False)
    message = str(e.value)
    assert "held-out eval data file /data/eval.json changed since the checkpoint was written" in message
    assert f"sha256 {'b' * 16}... then, {'c' * 16}... now" in message and "train.json" not in message
    assert "training.resume_allow_spec_change=true" in message
    with caplog.at_level(logging.WARNING):
        check_resume_data(ckpt, now, allow_change=True)
    assert any("on changed data" in r.getMessage() and "/data/eval.json" in r.getMessage() for r in caplog.records)


def test_checkpoint_without_a_data_digest_resumes_with_a_warning(tmp_path, caplog):
    ckpt = checkpoint(tmp_path, None)
    assert "data" not in json.loads((Path(ckpt) / RUN_RECORD).read_text())
    with caplog.at_level(logging.WARNING):
        check_resume_data(ckpt, {"train": TRAIN}, allow_change=False)
    assert any("records no data digest" in r.getMessage() for r in caplog.records)


@pytest.mark.e2e
def test_resuming_on_edited_data_is_refused_naming_the_file(compose_spec, tmp_path):
    from llava_hydra.data.synthetic import prepare

    cache = tmp_path / "cache"
    spec = compose_spec(f"paths.cache_dir={cache}", *SMALL)
    prepare(spec)  # the synthetic data, copied as a user's file beside its images
    data = tmp_path / "train.json"
    data.write_text(Path(spec.data.data_path).read_text())
    original = data.read_bytes()
    run = [f"data.data_path={data}", f"data.image_folder={spec.data.image_folder}"]
    out = tmp_path / "run"

    killed = launch(out, cache, *run, kill_at=3)  # checkpoint-2 written, then killed
    assert killed.returncode != 0 and (out / "checkpoint-2").is_dir(), killed.stderr[-3000:]
    record = json.loads((out / "checkpoint-2" / RUN_RECORD).read_text())
    assert record["data"] == {"train": {"path": str(data), "sha256": hashlib.sha256(original).hexdigest()}}

    edited = original.replace(b'"value": "', b'"value": "Edited. ', 1)  # one turn's text changed
    data.write_bytes(edited)
    refused = launch(out, cache, *run, "training.resume_from_checkpoint=auto")
    assert refused.returncode != 0
    assert f"training data file {data} changed since the checkpoint was written" in refused.stderr
    assert f"sha256 {hashlib.sha256(original).hexdigest()[:16]}... then, " \
           f"{hashlib.sha256(edited).hexdigest()[:16]}... now" in refused.stderr
    assert "model: " not in refused.stderr  # refused before the model was built
    assert not (out / "checkpoint-4").exists()

    forced = launch(out, cache, *run, "training.resume_from_checkpoint=auto", "training.resume_allow_spec_change=true")
    assert forced.returncode == 0, forced.stderr[-3000:]
    assert "on changed data (training.resume_allow_spec_change=true)" in forced.stderr and "model: " in forced.stderr
    record = json.loads((out / "checkpoint-4" / RUN_RECORD).read_text())
    assert record["data"]["train"]["sha256"] == hashlib.sha256(edited).hexdigest()  # what it went on with
