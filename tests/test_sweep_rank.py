"""A sweep (-m) launched under torchrun runs in every rank: its summary is printed once, by rank 0."""

from __future__ import annotations

import pytest

from llava_hydra.commands.sweep import SweepSummary, print_summary


@pytest.mark.parametrize("rank", ["0", "1"])
def test_the_sweep_summary_is_printed_by_rank_0_only(tmp_path, monkeypatch, capsys, rank):
    (tmp_path / "summary.md").write_text("| job | status |\n|---|---|\n| 0 | ok |\n")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", rank)
    callback = SweepSummary()
    callback.sweep_dir = tmp_path
    callback.on_multirun_end(config=None)  # the end of the multirun
    print_summary(tmp_path)  # what atexit prints when a job failed and Hydra raised
    table = f"\nsweep summary ({tmp_path}/summary.{{md,csv,json}}):\n| job | status |\n|---|---|\n| 0 | ok |\n\n"
    assert capsys.readouterr().out == (table * 2 if rank == "0" else "")
