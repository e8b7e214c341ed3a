"""The command line before Hydra sees it: launcher flags taken off, non-zero ranks quiet."""

from __future__ import annotations

import os

from llava_hydra.__main__ import quiet_non_zero_rank, take_local_rank


def test_local_rank_in_both_spellings_goes_to_the_environment(monkeypatch):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert take_local_rank(["--local_rank=3", "stage=finetune"]) == ["stage=finetune"]
    assert os.environ["LOCAL_RANK"] == "3"
    monkeypatch.delenv("LOCAL_RANK")
    assert take_local_rank(["stage=finetune", "--local-rank", "1", "model=tiny"]) == ["stage=finetune", "model=tiny"]
    assert os.environ["LOCAL_RANK"] == "1"
    assert take_local_rank(["stage=finetune"]) == ["stage=finetune"]  # --no_local_rank: nothing to take


def test_only_rank_zero_writes_hydra_files(monkeypatch):
    monkeypatch.setenv("RANK", "0")
    assert quiet_non_zero_rank(["a=1"]) == ["a=1"]
    monkeypatch.setenv("RANK", "1")
    assert quiet_non_zero_rank(["a=1"]) == ["a=1", "hydra.output_subdir=null", "hydra/job_logging=stdout"]
