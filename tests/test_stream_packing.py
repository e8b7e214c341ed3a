"""Packing inside a shard stream's shuffle buffer (llava_hydra.sampling.stream_packing,
.packed_stream) and skip's stand-ins in a stream (llava_hydra.data.stream_stand_in), one process:
which sample ids land in which row for a given seed and buffer (written out), rows that are
map-style packing's rows of the same samples, ranks x workers covering an epoch once in equal
steps, and a mid-epoch resume equal to the uninterrupted epoch. Two processes (epoch coverage,
kill-and-resume training): tests/test_shards_slow.py (slow)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch.utils.data._utils import worker as worker_mod

import stand_ins as testing
from llava_hydra.data.dataset import LazySupervisedDataset
from llava_hydra.data.records import BadSampleError
from llava_hydra.data.shards import ShardError, convert, read_index, read_records
from llava_hydra.data.stream import ShardStream
from llava_hydra.data.stream_stand_in import drawn, window
from llava_hydra.data.synthetic import generate
from llava_hydra.sampling.packed_stream import PackedShardStream
from llava_hydra.sampling.packing import pack_samples
from llava_hydra.sampling.stream_packing import PackedStreamPlan, merged_workers, rank_rows

LENGTHS = [60, 30, -20, 45, 50, -70, 25, 40, 35, -30, 55, 20]  # negative: text-only


def test_rows_of_a_tiny_stream_written_out():
    # 3 shards of 4; epoch 0's shard order is 2, 1, 0: the sequence 8 9 10 11 4 5 6 7 0 1 2 3. A buffer
    # of 3 emits it as 10 9 4 5 11 8 6 1 2 3 7 0. Image draw: 10 4 11 8 | 6 1 3 7 | 0, text: 9 5 2.
    plan = PackedStreamPlan(LENGTHS, [4, 4, 4], world=1, batch=2, group=1, workers=1, buffer=3, capacity=100)
    assert plan.steps == 4  # image 360 tokens: ceil(360 / 86) = 5 rows, text 120: 2 rows; 7 rows of 2 a batch
    assert rank_rows(plan, 0, 0) == [
        [[10, 8], [4, 11]],  # the first 4 images out of the buffer, best-fit decreasing into 2 rows (90, 70 tokens)
        [[5, 9], [2]],  # the text step, out once sample 2 has left the buffer (before image 7)
        [[3, 7], [1, 6]],  # the next run of the image draw
        [[0]],  # the image remainder
    ]
    rows = [row for batch in rank_rows(plan, 0, 0) for row in batch]
    assert sorted(i for row in rows for i in row) == list(range(12))
    assert all(sum(abs(LENGTHS[i]) for i in row) <= 100 and len({LENGTHS[i] > 0 for i in row}) == 1 for row in rows)
    assert rank_rows(plan, 1, 0) != rank_rows(plan, 0, 0)  # a new shard order and buffer draw every epoch
    # the DataLoader's round robin over workers, an exhausted one passed over
    assert merged_workers([3, 1, 2]) == [0, 1, 2, 0, 2, 0]


def test_bench_sampler_lays_out_the_packed_streams_steps_as_the_ranks_run_them():
    """bench_sampler's packed-stream rows measure rank_rows laid out step by step: rank 0's group of
    micro-batches, then rank 1's; a step with a short micro-batch is left out of the columns."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parents[1] / "bench"))
    from bench_sampler import packed_stream_order

    lengths = LENGTHS * 4  # 48 samples, 4 shards of 12
    bins, order, left = packed_stream_order(lengths, 100, rows=1, ws=2, fill=0.86, group=2, workers=1, buffer=3,
                                            shard=12)
    plan = PackedStreamPlan(lengths, [12] * 4, world=2, batch=1, group=2, workers=1, buffer=3, capacity=100, seed=1)
    r0, r1 = rank_rows(plan, 0, 0), rank_rows(plan, 0, 1)
    assert len(r0) == len(r1) == 12 and left == 0  # 6 steps of 2 micro-batches a rank, every one a full row
    laid = [bins[i] for i in order.tolist()]
    assert laid[:4] == [r0[0][0], r0[1][0], r1[0][0], r1[1][0]]  # step 1: rank 0's two rows, then rank 1's
    assert laid[4:8] == [r0[2][0], r0[3][0], r1[2][0], r1[3][0]]
    assert sorted(i for row in laid for i in row) == list(range(48))


def test_stand_in_draws_from_the_buffer_window():
    emit = np.array([2, 1, 4, 5, 3, 0, 6, 9, 10, 11, 7, 8])  # buffer_order(12, 3) above
    # when position 4 leaves (t=2) the buffer holds 0 and 3 besides it (read: < 2 + 3; leave later)
    assert window(emit, 2, 3) == [0, 3] and window(np.arange(5), 0, 1) == [] and window(emit, 11, 3) == []
    order = list(drawn(7, 0, ["a", "b", "c", "d"]))
    assert sorted(order) == ["a", "b", "c", "d"] and order == list(drawn(7, 0, ["a", "b", "c", "d"]))
    assert list(drawn(7, 0, [])) == []


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """13 synthetic records (10 with an image, 3 text-only) + one two-image record, in shards of 3."""
    root = tmp_path_factory.mktemp("packed")
    generate(root, 10, 3, 0, 0)
    records = json.loads((root / "qa.json").read_text())
    records.append({"id": "two", "image": ["train_00000.png", "train_00001.png"], "conversations": [
        {"from": "human", "value": "<image>\n<image>\nSame shape?"}, {"from": "gpt", "value": "No."}]})
    (root / "qa.json").write_text(json.dumps(records))
    convert(root / "qa.json", root / "images", root / "sh", samples_per_shard=3)
    return root


def encoder(data, tok, records=None):
    return LazySupervisedDataset(data / "qa.json", tok, testing.clip_processor(), "v1", image_folder=data / "images",
                                 image_aspect_ratio="pad", num_image_tokens=4, model_max_length=300, records=records)


@pytest.fixture(scope="module")
def lengths(data, bpe400):
    name, records = read_records(str(data / "sh"), {}, read_index(str(data / "sh"))[0])
    assert name == "records.jsonl" and [r["id"] for r in records][-1] == "two"
    return encoder(data, bpe400, records).modality_lengths


def packed(data, tok, lengths, **kw):
    kw = {"batch_size": 2, "capacity": 300, "shuffle_buffer": 4, **kw}
    return PackedShardStream(data / "sh", encoder(data, tok, {}), lambda rows: rows, lengths, **kw)


def as_worker(w: int, n: int):
    return worker_mod.WorkerInfo(id=w, num_workers=n, seed=0, dataset=None)


def round_robin(make, workers: int, monkeypatch) -> list[list[dict]]:
    """The micro-batches (lists of packed rows) in the order a DataLoader with ``workers`` workers yields them."""
    parts = []
    for w in range(workers):
        monkeypatch.setattr(worker_mod, "_worker_info", as_worker(w, workers) if workers > 1 else None)
        parts.append(list(make()))
    out = []
    for t in range(max(map(len, parts))):
        out += [batch for p in parts if t < len(p) for batch in p[t]]
    monkeypatch.setattr(worker_mod, "_worker_info", None)
    return out


def keys(batches) -> list[list[list[int]]]:
    return [[r["index"].tolist() for r in batch] for batch in batches]


def test_two_ranks_two_workers_pack_every_sample_once_as_map_style_packs_it(data, bpe400, lengths, monkeypatch):
    seen, steps = [], []
    reference = encoder(data, bpe400)
    for rank in (0, 1):
        make = lambda: packed(data, bpe400, lengths, rank=rank, world=2, workers=2, group=2)  # noqa: E731
        batches = round_robin(make, 2, monkeypatch)
        assert keys(batches) == rank_rows(make().packed, 0, rank)  # what the plan says, computed without reading
        steps.append(len(batches))
        assert len(batches) == len(make())
        for row in (r for batch in batches for r in batch):
            seen += row["index"].tolist()
            want = pack_samples([reference.build(k) for k in row["index"].tolist()])  # map-style's row of them
            for name in ("input_ids", "labels", "position_ids", "sample_lengths"):
                assert torch.equal(row[name], want[name]), name
            assert ("pixel_values" in row) == ("pixel_values" in want)
            if "pixel_values" in want:
                assert torch.equal(row["pixel_values"], want["pixel_values"])
    assert sorted(seen) == list(range(14)) and steps[0] == steps[1]  # each sample once; equal steps
    assert steps[0] % 2 == 0  # whole optimizer steps of 2 micro-batches


@pytest.mark.parametrize("workers", [1, 2])
def test_packed_resume_mid_epoch_continues_the_same_rows_reading_less(data, bpe400, lengths, monkeypatch, workers):
    def make(resume=0):
        s = packed(data, bpe400, lengths, seed=5, workers=workers, batch_size=1)
        s.set_epoch(1)
        s.resume_at(resume)
        return s

    full = keys(round_robin(make, workers, monkeypatch))
    assert sorted(i for b in full for r in b for i in r) == list(range(14))
    read, encode = [], PackedShardStream.encode
    monkeypatch.setattr(PackedShardStream, "encode", lambda self, item: read.append(item[1]) or encode(self, item))
    assert keys(round_robin(lambda: make(4), workers, monkeypatch)) == full[4:]
    # it read exactly the samples of the rows not yet trained: the consumed ones (and their buffer) never again
    assert sorted(read) == sorted(i for b in full[4:] for r in b for i in r)
    with pytest.raises(ValueError, match="planned for 2 DataLoader workers, run with 1"):
        list(packed(data, bpe400, lengths, workers=2))


def test_old_shards_without_records_are_refused_for_packing(data, tmp_path):
    index = read_index(str(data / "sh"))[0]
    with pytest.raises(ShardError, match="no records.jsonl listed"):
        read_records(str(data / "sh"), {}, {k: v for k, v in index.items() if k != "records"})


def test_a_bad_sample_in_a_stream_takes_a_stand_in_from_the_buffer(data, bpe400, monkeypatch):
    encode = ShardStream.encode

    def failing(self, item):
        if item[1] in (4, 5):
            raise BadSampleError("image is broken", "undecodable_image")
        return encode(self, item)

    monkeypatch.setattr(ShardStream, "encode", failing)
    enc = encoder(data, bpe400, {})
    enc.on_bad_sample = "skip"
    s = ShardStream(data / "sh", enc, lambda samples: [x["index"] for x in samples], batch_size=1, shuffle_buffer=5)
    got = [b for group in s for b in group]
    flat = [i for b in got for i in b]
    # 14 micro-batches, 4 and 5 replaced by samples drawn from the buffer (not the sample before them)
    assert len(flat) == 14 and 4 not in flat and 5 not in flat
    assert sorted(set(flat)) == [i for i in range(14) if i not in (4, 5)]
    # the buffer emits 7 11 12 13 6 9 3 4 0 1 2 10 5 8: 4 (step 7) draws 8 from its window (then in the buffer,
    # out at the end), 5 (step 12) has only 8 left beside it: 8 trains 3 times, not the sample before each
    assert flat == [7, 11, 12, 13, 6, 9, 3, 8, 0, 1, 2, 10, 8, 8]
    assert flat[6] != flat[7] and flat[11] != flat[12]  # the previous good sample (3, 10): the old rule
    report = s.report()
    assert report["skipped"] == 2 and report["by_reason"] == {"undecodable_image": 2}


def test_trainer_counts_a_streams_samples_not_its_micro_batches(data, bpe400, lengths):
    from types import SimpleNamespace

    from llava_hydra.train.stream_loader import StreamTraining, stream_loader

    class Trainer:
        def num_examples(self, dataloader):
            return -1  # the Trainer's own rule, for a map-style loader

    class Streaming(StreamTraining, Trainer):
        pass

    s = packed(data, bpe400, lengths)
    args = SimpleNamespace(dataloader_num_workers=0, dataloader_pin_memory=False, dataloader_multiprocessing_context=None)
    loader = stream_loader(s, args)
    assert len(loader) == len(s) < 14 and Streaming().num_examples(loader) == 14  # "Num examples", samples/s
    assert Streaming().num_examples(SimpleNamespace(dataset=[1, 2])) == -1


def test_a_stream_run_generates_no_synthetic_data_it_would_not_read(compose_spec, data, tmp_path):
    from llava_hydra.data.synthetic import eval_data_path, prepare

    cfg = compose_spec("stage=finetune", f"paths.cache_dir={tmp_path / 'cache'}", f"data.stream.shards={data / 'sh'}")
    assert eval_data_path(cfg) is None  # the synthetic held-out set belongs to the synthetic training data
    assert not prepare(cfg) and not (tmp_path / "cache" / "synthetic").exists()


def test_a_bad_sample_in_a_packed_stream_takes_a_stand_in_from_its_group(data, bpe400, lengths, monkeypatch):
    encode = PackedShardStream.encode

    def failing(self, item):
        if item[1] == 4:
            raise BadSampleError("image is broken", "undecodable_image")
        return encode(self, item)

    def epoch(skip: bool):
        s = packed(data, bpe400, lengths)
        s.encoder.on_bad_sample = "skip" if skip else "raise"
        return s, [[r["index"].tolist() for r in batch] for group in s for batch in group]

    _, plain = epoch(False)
    monkeypatch.setattr(PackedShardStream, "encode", failing)
    with pytest.raises(BadSampleError, match="image is broken"):
        epoch(False)
    s, got = epoch(True)
    k = next(k for k, batch in enumerate(plain) if any(4 in row for row in batch))  # group = micro-batch here
    flat = [i for batch in got for row in batch for i in row]
    assert 4 not in flat and len(flat) == 14
    doubled = [i for i in set(flat) if flat.count(i) == 2]
    assert len(doubled) == 1 and doubled[0] in {i for row in plain[k] for i in row}  # drawn from its own group
    assert [b for j, b in enumerate(got) if j != k] == [b for j, b in enumerate(plain) if j != k]
    assert s.report()["by_reason"] == {"undecodable_image": 1}
