"""Concurrent sweeps never share a directory: each claims its own (``<time>``, then ``<time>_2``,
...), while the ranks of one multi-process launch all agree on theirs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from llava_hydra.config import sweep_dir

FROZEN = "2026-01-02_03-04-05"


def test_a_second_claim_in_the_same_second_gets_its_own_directory(tmp_path):
    first, second = sweep_dir.claim(tmp_path, FROZEN), sweep_dir.claim(tmp_path, FROZEN)
    assert (first.name, second.name) == (FROZEN, f"{FROZEN}_2") and first.is_dir() and second.is_dir()


def test_a_process_keeps_its_choice_and_ranks_of_one_launch_agree(tmp_path, monkeypatch):
    monkeypatch.setattr(sweep_dir, "_chosen", {})
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    parent = str(tmp_path / "single")
    assert sweep_dir.sweep_dir(parent) == sweep_dir.sweep_dir(parent)  # the sweep and each job: one directory
    assert len(list(Path(parent).iterdir())) == 1
    launch = {"WORLD_SIZE": "2", "MASTER_ADDR": "node1", "MASTER_PORT": "29500", "TORCHELASTIC_RUN_ID": "abc"}
    for k, v in launch.items():
        monkeypatch.setenv(k, v)
    tag = sweep_dir.launch_tag()
    monkeypatch.setenv("RANK", "1")  # another rank of the same launch: the same tag
    assert sweep_dir.launch_tag() == tag and len(tag) == 6
    monkeypatch.setenv("MASTER_PORT", "29501")  # another launch
    assert sweep_dir.launch_tag() != tag
    monkeypatch.setattr(sweep_dir, "_chosen", {})
    ranked = sweep_dir.sweep_dir(str(tmp_path / "ranked"))
    assert Path(ranked).name.endswith(f"_r{sweep_dir.launch_tag()}") and not (tmp_path / "ranked").exists()


def test_two_sweeps_started_in_the_same_second_report_only_their_own_jobs(tmp_path):
    """Two real sweeps at once, their clock frozen to the same second (a sitecustomize on their
    path); each job fails its spec check at once (the cheapest real job), and each summary holds
    its own two jobs."""
    frozen = tmp_path / "frozen_clock"
    frozen.mkdir()
    (frozen / "sitecustomize.py").write_text(
        "import time\n_real = time.strftime\n"
        f"time.strftime = lambda fmt, *a: {FROZEN!r} if fmt == '%Y-%m-%d_%H-%M-%S' else _real(fmt, *a)\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(frozen), os.environ.get("PYTHONPATH", "")])}
    env.pop("WORLD_SIZE", None)
    sweeps = {"a": "training.warmup_ratio=2.0,3.0", "b": "training.warmup_ratio=4.0,5.0"}
    procs = [subprocess.Popen([sys.executable, "-m", "llava_hydra", "-m", f"paths.output_root={tmp_path}",
                               f"paths.cache_dir={tmp_path}/.cache", values], cwd=tmp_path, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for values in sweeps.values()]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [1, 1], outs  # every job failed its spec check, as meant
    root = tmp_path / "multirun" / "tiny" / "pretrain"
    assert sorted(p.name for p in root.iterdir()) == [FROZEN, f"{FROZEN}_2"]
    jobs = sorted(sorted(" ".join(r["overrides"]) for r in json.loads((d / "summary.json").read_text()))
                  for d in root.iterdir())
    assert [[o.split()[-1] for o in j] for j in jobs] == [
        ["training.warmup_ratio=2.0", "training.warmup_ratio=3.0"],
        ["training.warmup_ratio=4.0", "training.warmup_ratio=5.0"]]
