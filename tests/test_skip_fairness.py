"""``data.on_bad_sample=skip`` replaces a bad sample by a good one drawn uniformly (data/stand_in.py),
so a run of bad records does not make the good sample after it train once per bad record.

The bound: 1000 records, 30 of them bad in a row (G = 970 good). Each bad record's stand-in is
an independent uniform draw over the good ones, so a good sample's extra draws in an epoch are
Binomial(30, 1/970): the chance that any good sample gets 3 or more extra is at most
970 * C(30, 3) / 970**3 < 0.5%. So no good sample is trained more than 3 times in an epoch
(itself + 2). The draws are deterministic (a function of index and epoch), so the test cannot
flake; the previous rule (the next good index) trained record 530 31 times.
"""

from __future__ import annotations

import json
from collections import Counter

import pytest
from transformers import TrainerControl, TrainerState, TrainingArguments

import stand_ins as testing
from llava_hydra.data.dataset import LazySupervisedDataset
from llava_hydra.train.data_tie import EpochToDataset
from stand_ins import turns

N, BAD = 1000, range(500, 530)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("skip")
    records = [{"id": f"r{k}", "conversations": turns(f"Question {k}?", f"Answer {k}.")} for k in range(N)]
    for k in BAD:
        records[k] = {"id": f"bad{k}", "conversations": []}
    path = folder / "d.json"
    path.write_text(json.dumps(records))
    return path, testing.bpe_tokenizer(folder / "bpe")


def epoch_counts(ds, epoch: int) -> Counter:
    """How often each record was built in one pass over every index (one sample handed out each)."""
    built = Counter()
    real = ds.build

    def build(j):
        sample = real(j)
        built[j] += 1
        return sample
    ds.build = build
    ds.set_epoch(epoch)
    for i in range(N):
        ds[i]
    ds.build = real
    return built


def stand_ins_of(ds, epoch: int) -> dict[int, int]:
    """Bad index -> the record built in its place."""
    out = {}
    real = ds.build
    ds.set_epoch(epoch)
    for i in BAD:
        got = []
        ds.build = lambda j: (got.append(j), real(j))[1]
        ds[i]
        out[i] = got[-1]  # the last build attempted is the one that succeeded
    ds.build = real
    return out


def make(data, cache=None):
    path, tok = data
    return LazySupervisedDataset(path, tok, testing.clip_processor(), "v1", on_bad_sample="skip", cache_dir=cache)


def test_thirty_bad_in_a_row_train_no_good_sample_more_than_three_times(data):
    ds = make(data)
    built = epoch_counts(ds, 0)
    assert sum(built.values()) == N and not set(built) & set(BAD)  # every step full, no bad sample trained
    assert max(built.values()) <= 3
    assert built[530] <= 3  # the record after the bad run: 31 times under the old rule
    extra = [j for j, c in built.items() if c > 1]
    assert len(extra) >= 25  # spread over many good samples, not piled on a few
    assert ds.report()["skipped"] == 30


def test_stand_ins_are_good_deterministic_and_redrawn_each_epoch(data, tmp_path):
    first = stand_ins_of(make(data), 0)
    assert set(first) == set(BAD) and not set(first.values()) & set(BAD)
    assert stand_ins_of(make(data), 0) == first  # another process (rank, worker) picks the same
    second = stand_ins_of(make(data), 1)
    assert sum(first[i] != second[i] for i in BAD) >= 25  # a new draw in the next epoch
    # found by the length pass before any sample is built: the same stand-ins, and the sampler plans
    # each bad index with its epoch-0 stand-in's length
    known = make(data, tmp_path / "cache")
    lengths = known.modality_lengths
    assert all(lengths[i] == lengths[first[i]] for i in BAD)
    assert stand_ins_of(known, 0) == first


def test_the_trainer_hands_the_epoch_to_the_dataset(data):
    ds = make(data)
    callback = EpochToDataset(ds)
    args = TrainingArguments(output_dir="unused", report_to=[])
    for epoch, expected in ((0.0, 0), (1.0, 1), (1.5, 1), (2.0, 2)):  # 1.5: resumed in the middle of epoch 1
        callback.on_epoch_begin(args, TrainerState(epoch=epoch), TrainerControl())
        assert ds.epoch == expected
