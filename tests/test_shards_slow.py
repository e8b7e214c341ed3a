"""Shards under several processes and against a real S3-compatible server (slow: pytest -m slow
tests/test_shards_slow.py). Two ranks x two DataLoader workers read every sample exactly once per
epoch in equal steps; the same stream read from moto's S3 server on localhost gives the local
path's samples and trains; a two-process run killed mid-epoch and resumed trains the same samples
in the same steps as an uninterrupted one and reads none of the samples its checkpoint had consumed."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from launching import free_port, torchrun

import stand_ins as testing
from llava_hydra.data.shards import convert
from llava_hydra.data.synthetic import generate

pytestmark = pytest.mark.slow
HELPERS = Path(__file__).parent / "helpers"


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """46 synthetic records (36 with an image, 10 text-only) in shards of 5, and a tokenizer folder."""
    root = tmp_path_factory.mktemp("data")
    generate(root, 36, 10, 0, 0)
    convert(root / "qa.json", root / "images", root / "sh", samples_per_shard=5)
    testing.bpe_tokenizer(root / "tok", vocab_size=400)
    return root


def epochs(out: Path) -> list[dict]:
    return [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]


def test_two_processes_two_workers_read_every_sample_once_per_epoch(shards, tmp_path):
    done = torchrun(str(HELPERS / "stream_epochs.py"), str(shards / "sh"), str(tmp_path), str(shards / "tok"),
                    env={"WORKERS": "2", "EPOCHS": "2", "BATCH": "2"}, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = epochs(tmp_path)
    for epoch in ("0", "1"):
        steps = [ranks[r][epoch] for r in (0, 1)]
        assert [len(s) for s in steps] == [12, 12]  # 23 samples a rank at batch 2: 11 full batches and one of 1
        read = [i for s in steps for batch in s for i in batch]
        assert sorted(read) == list(range(46))  # every sample once: none read twice, none dropped
    assert ranks[0]["0"] != ranks[0]["1"]  # a new shard order and buffer draw each epoch


def test_two_processes_two_workers_pack_every_sample_once_per_epoch_in_equal_steps(shards, tmp_path):
    done = torchrun(str(HELPERS / "stream_epochs.py"), str(shards / "sh"), str(tmp_path), str(shards / "tok"),
                    env={"WORKERS": "2", "EPOCHS": "2", "BATCH": "2", "GROUP": "2", "PACK": "400"}, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = epochs(tmp_path)
    for epoch in ("0", "1"):
        steps = [ranks[r][epoch] for r in (0, 1)]
        assert len(steps[0]) == len(steps[1]) and len(steps[0]) % 2 == 0  # equal, whole steps of 2 micro-batches
        read = [i for s in steps for batch in s for row in batch for i in row]
        assert sorted(read) == list(range(46))  # every sample once, packed
        rows = [row for s in steps for batch in s for row in batch]
        assert len(rows) < 46 and max(map(len, rows)) > 1  # several samples a row: packed
    assert ranks[0]["0"] != ranks[0]["1"]


class MotoServer:
    """moto's S3 server (``python -m moto.server``) on a free localhost port, stopped at the end."""

    def __init__(self):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-p", str(self.port)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.1)
        self.proc.kill()
        raise RuntimeError("moto's S3 server did not start")

    def options(self) -> dict:
        return {"key": "testing", "secret": "testing", "client_kwargs": {"endpoint_url": self.url,
                                                                        "region_name": "us-east-1"}}


@pytest.fixture(scope="module")
def s3(shards):
    pytest.importorskip("s3fs", reason="the S3 test needs s3fs and moto's server: pip install -e '.[stream]'")
    pytest.importorskip("moto.server", reason="the S3 test needs moto's server: pip install -e '.[stream]'")
    pytest.importorskip("flask", reason="moto's server mode needs flask: pip install -e '.[stream]'")
    import s3fs

    server = MotoServer()
    try:
        import boto3

        boto3.client("s3", endpoint_url=server.url, aws_access_key_id="testing", aws_secret_access_key="testing",
                     region_name="us-east-1").create_bucket(Bucket="shards-test")
        fs = s3fs.S3FileSystem(**server.options())
        fs.put(str(shards / "sh") + "/", "shards-test/llava/", recursive=True)
        yield server
    finally:
        server.proc.terminate()
        server.proc.wait(timeout=30)


def test_s3_server_stream_equals_the_local_one(shards, s3, tmp_path):
    env = {"WORKERS": "2", "EPOCHS": "1", "STORAGE_OPTIONS": json.dumps(s3.options())}
    remote = torchrun(str(HELPERS / "stream_epochs.py"), "s3://shards-test/llava", str(tmp_path / "s3"),
                      str(shards / "tok"), env=env, timeout=300)
    assert remote.returncode == 0, remote.stderr[-3000:]
    local = torchrun(str(HELPERS / "stream_epochs.py"), str(shards / "sh"), str(tmp_path / "local"),
                     str(shards / "tok"), env={"WORKERS": "2", "EPOCHS": "1"}, timeout=300)
    assert local.returncode == 0, local.stderr[-3000:]
    assert epochs(tmp_path / "s3") == epochs(tmp_path / "local")
    read = sorted(i for r in epochs(tmp_path / "s3") for batch in r["0"] for i in batch)
    assert read == list(range(46))


RUN = ["stage=finetune", "stage.pretrain_mm_mlp_adapter=null", "training.max_steps=6", "training.save_steps=3",
       "training.logging_steps=1", "training.per_device_train_batch_size=2", "training.save_total_limit=2",
       "training.dataloader_num_workers=2", "eval.enable=false", "data.stream.shuffle_buffer=6"]


def run_helper(run_dir: Path, cache: Path, log: Path, *overrides: str, kill_at: int = 0):
    return torchrun(str(HELPERS / "stream_steps.py"), f"run_dir={run_dir}", f"paths.cache_dir={cache}", *RUN,
                    *overrides, env={"KILL_AT_STEP": str(kill_at), "STEP_LOG": str(log)})


def steps(log: Path) -> dict[int, list]:
    """{step: [rank 0's indices, rank 1's]} from a run's log (a later line for a step replaces an earlier one)."""
    out: dict[int, list] = {}
    for rank in (0, 1):
        for line in (log / f"steps-{rank}.jsonl").read_text().splitlines():
            step, idx = json.loads(line)
            out.setdefault(step, [None, None])[rank] = idx
    return out


@pytest.mark.parametrize("packing", [False, True])
def test_two_process_kill_and_resume_trains_the_same_samples_in_the_same_steps(shards, tmp_path, packing):
    cache, data = tmp_path / "cache", [f"data.stream.shards={shards / 'sh'}", f"training.packing={packing}"]
    whole = run_helper(tmp_path / "whole", cache, tmp_path / "log-whole", *data)
    assert whole.returncode == 0, whole.stderr[-4000:]
    killed = run_helper(tmp_path / "resumed", cache, tmp_path / "log-killed", *data, kill_at=4)
    assert killed.returncode != 0 and (tmp_path / "resumed" / "checkpoint-3").is_dir(), killed.stderr[-4000:]
    record = json.loads((tmp_path / "resumed" / "checkpoint-3" / "run_record.json").read_text())
    assert record["data"]["stream"]["micro_batches"] == 3 and record["data"]["stream"]["epoch"] == 0
    resumed = run_helper(tmp_path / "resumed", cache, tmp_path / "log-resumed", *data,
                         "training.resume_from_checkpoint=auto")
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert "checkpoint-3" in resumed.stderr and "resuming epoch 0 after 3 micro-batches" in resumed.stderr

    want = steps(tmp_path / "log-whole")
    assert sorted(want) == [1, 2, 3, 4, 5, 6]
    got = {**{s: v for s, v in steps(tmp_path / "log-killed").items() if s <= 3}, **steps(tmp_path / "log-resumed")}
    assert got == want  # the same samples on the same rank at the same step
    trained = [i for s in range(1, 7) for rank in want[s] for i in rank]
    if packing:  # packed rows: more samples than rows, but within an epoch none twice
        epoch = [i for s in range(1, 7) for rank in want[s] for i in rank][:46]
        assert len(epoch) == len(set(epoch)) and len(trained) > 24
    else:
        assert len(trained) == len(set(trained)) == 24  # 6 steps x 2 ranks x batch 2, all different (12 a rank < 23)
    consumed = {i for s in (1, 2, 3) for rank in want[s] for i in rank}
    read = {int(x) for f in (tmp_path / "log-resumed").glob("read-*.txt") for x in f.read_text().split()}
    assert read and not read & consumed  # the resumed run read no sample its checkpoint had trained on
    losses = [json.loads((tmp_path / d / "metrics.json").read_text())["train_loss"] for d in ("whole", "resumed")]
    assert losses[1] == pytest.approx(losses[0], rel=1e-6)
