"""Packed rows are re-drawn every epoch under two processes (torchrun, gloo): accelerate
forwards set_epoch to the sampler, not to the dataset, so the sampler must drive the packing."""

from __future__ import annotations

import json
from pathlib import Path

from launching import torchrun

HELPER = Path(__file__).parent / "helpers" / "packed_epochs.py"


def test_two_processes_get_fresh_rows_every_epoch_and_every_sample_once(tmp_path):
    out = tmp_path / "rows.json"
    done = torchrun(str(HELPER), str(out), timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    lengths, epochs = result["lengths"], result["epochs"]
    rows = {}
    for epoch, per_rank in epochs.items():
        assert len(per_rank) == 2 and all(per_rank), "both ranks get rows"
        everything = [row for rank_rows in per_rank for row in rank_rows]
        # every sample in the epoch; accelerate's even_batches repeats at most one batch per rank
        assert sorted({j for row in everything for j in row}) == list(range(len(lengths))), epoch
        distinct = {tuple(r) for r in everything}
        assert sorted(j for row in distinct for j in row) == list(range(len(lengths))), epoch
        assert len(everything) - len(distinct) < 2 * 2  # less than one step (2 rows x 2 ranks)
        for rank_rows in per_rank:
            for row in rank_rows:
                assert sum(abs(lengths[j]) for j in row) <= 128
                assert len({lengths[j] > 0 for j in row}) == 1  # one modality per row
        rows[epoch] = {frozenset(r) for rank_rows in per_rank for r in rank_rows}
    # a fresh packing in epoch 1: most rows of several samples are new
    multi = [r for r in rows["1"] if len(r) > 1]
    assert sum(r not in rows["0"] for r in multi) > 0.5 * len(multi)
