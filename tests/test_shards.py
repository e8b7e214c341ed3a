"""Shards (llava_hydra.data.shards, .stream, .stream_plan), one process: the split arithmetic
written out, the conversion round trip (a shard's samples are the JSON path's, tensor for tensor),
ranks x workers covering an epoch once, and a mid-epoch resume that skips what was consumed.
Two processes, the S3 server and kill-and-resume training: tests/test_shards_slow.py (slow)."""

from __future__ import annotations

import json
import tarfile

import numpy as np
import pytest
import torch
from torch.utils.data._utils import worker as worker_mod

import stand_ins as testing
from llava_hydra.data.dataset import LazySupervisedDataset
from llava_hydra.data.shards import INDEX, ShardError, convert
from llava_hydra.data.stream import ShardStream
from llava_hydra.data.stream_plan import batch_sizes, buffer_order, rank_batches, rank_plan, steps_per_rank
from llava_hydra.data.synthetic import generate


def test_split_arithmetic_equal_steps_per_rank_and_nothing_dropped():
    # 10 samples, 2 ranks, batch 2: 5 each, 3 micro-batches of 2, 2, 1
    a, b = rank_plan(10, 2, 0, 2), rank_plan(10, 2, 1, 2)
    assert (a.start, a.count, a.sizes, b.start, b.count, b.sizes) == (0, 5, [2, 2, 1], 5, 5, [2, 2, 1])
    # 9 samples: rank 1 has 4, still 3 micro-batches (2, 1, 1), nothing repeated or dropped
    a, b = rank_plan(9, 2, 0, 2), rank_plan(9, 2, 1, 2)
    assert (a.count, a.sizes, b.start, b.count, b.sizes, b.padding) == (5, [2, 2, 1], 5, 4, [2, 1, 1], 0)
    # batch 1, 3 samples, 2 ranks: rank 1 must make 2 steps from 1 sample: it repeats it once (logged)
    b = rank_plan(3, 2, 1, 1)
    assert (b.count, b.steps, b.sizes, b.padding, [b.seq_index(i) for i in range(2)]) == (1, 2, [1, 1], 1, [2, 2])
    assert steps_per_rank(1000, 8, 16) == 8 and batch_sizes(120, 8, 16) == [16] * 7 + [8]
    # workers take groups round robin: worker 0 micro-batches 0 and 2 (samples 0-1 and 4), worker 1 batch 1
    w0, w1 = rank_plan(10, 2, 0, 2).worker(0, 2), rank_plan(10, 2, 0, 2).worker(1, 2)
    assert (w0.start, w0.count, w0.groups, w0.group_ids) == (0, 3, [[2], [1]], [0, 2])
    assert (w1.start, w1.count, w1.groups, w1.group_ids) == (3, 2, [[2]], [1])
    # gradient accumulation 2 with length grouping: a worker makes whole steps
    g = rank_plan(18, 1, 0, 2, group=2)  # 9 micro-batches: 5 steps, the last of one
    assert (g.worker(0, 2).groups, g.worker(1, 2).groups) == ([[2, 2], [2, 2], [2]], [[2, 2], [2, 2]])
    with pytest.raises(ValueError, match="rank 2 would have none"):
        rank_plan(2, 3, 2, 4)


def test_shuffle_buffer_emits_each_item_once_after_reading_it_holding_at_most_k():
    assert buffer_order(5, 1, np.random.default_rng(0)).tolist() == [0, 1, 2, 3, 4]
    out = buffer_order(50, 4, np.random.default_rng(0)).tolist()
    assert sorted(out) == list(range(50)) and out != list(range(50))
    assert all(item <= t + 3 for t, item in enumerate(out))  # read (t + k items so far) before it leaves
    assert buffer_order(50, 4, np.random.default_rng(0)).tolist() == out  # a function of the seed


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """13 synthetic records (10 with an image, 3 text-only) + one two-image record, as JSON + folder."""
    root = tmp_path_factory.mktemp("shards")
    generate(root, 10, 3, 0, 0)
    records = json.loads((root / "qa.json").read_text())
    records.append({"id": "two", "image": ["train_00000.png", "train_00001.png"], "conversations": [
        {"from": "human", "value": "<image>\n<image>\nSame shape?"}, {"from": "gpt", "value": "No."}]})
    (root / "qa.json").write_text(json.dumps(records))
    return root


def encoder(data, bpe400, records=None):
    return LazySupervisedDataset(data / "qa.json", bpe400, testing.clip_processor(), "v1", image_folder=data / "images",
                                 image_aspect_ratio="pad", num_image_tokens=4, records=records)


def stream(url, data, bpe400, **kw):
    return ShardStream(url, encoder(data, bpe400, records={}), lambda samples: samples, **kw)


def samples_of(groups):
    return [s for group in groups for batch in group for s in batch]


def test_conversion_round_trip_gives_the_json_paths_samples(data, bpe400, tmp_path):
    index = convert(data / "qa.json", data / "images", tmp_path / "sh", samples_per_shard=4)
    assert [s["samples"] for s in index["shards"]] == [4, 4, 4, 2] and index["samples"] == 14
    with tarfile.open(tmp_path / "sh" / "shard-000003.tar") as tar:  # webdataset members: <key>.json, <key>.img<j>.<ext>
        assert tar.getnames() == ["000000012.json", "000000013.json", "000000013.img0.png", "000000013.img1.png"]
    reference = encoder(data, bpe400)
    got = samples_of(stream(tmp_path / "sh", data, bpe400, batch_size=3, shuffle_buffer=3))
    assert sorted(s["index"] for s in got) == list(range(14))
    for s in got:
        want = reference.build(s["index"])
        assert torch.equal(s["input_ids"], want["input_ids"]) and torch.equal(s["labels"], want["labels"])
        assert ("pixel_values" in s) == ("pixel_values" in want)
        if "pixel_values" in want:
            assert torch.equal(s["pixel_values"], want["pixel_values"])
    assert got[[s["index"] for s in got].index(13)]["pixel_values"].shape[0] == 2  # both images of the two-image record


def test_conversion_names_a_bad_record_or_lists_it_when_skipping(data, tmp_path):
    records = json.loads((data / "qa.json").read_text())
    records[2] = {**records[2], "image": "gone.png"} if "image" in records[2] else records[2]
    records[5] = {"id": "x", "conversations": []}
    records[7] = {"id": "v", "video": "clip.mp4", "conversations": [  # shards carry images: a video record
        {"from": "human", "value": "<image>\nWhat happens?"}, {"from": "gpt", "value": "Nothing."}]}  # is not text
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(records))
    with pytest.raises(ShardError, match=r"bad.json: sample (2|5): "):
        convert(bad, data / "images", tmp_path / "a")
    index = convert(bad, data / "images", tmp_path / "b", on_bad_sample="skip")
    assert {5, 7} <= {s["index"] for s in index["skipped"]} and index["samples"] == 14 - len(index["skipped"])
    assert "shards carry images, not videos" in [s for s in index["skipped"] if s["index"] == 7][0]["problem"]
    assert json.loads((tmp_path / "b" / INDEX).read_text())["skipped"] == index["skipped"]


def as_worker(w: int, n: int):
    return worker_mod.WorkerInfo(id=w, num_workers=n, seed=0, dataset=None)


def test_two_ranks_two_workers_read_every_sample_once_in_equal_steps(data, bpe400, tmp_path, monkeypatch):
    convert(data / "qa.json", data / "images", tmp_path / "sh", samples_per_shard=3)
    seen, steps = [], []
    for rank in (0, 1):
        mine = 0
        for w in (0, 1):
            monkeypatch.setattr(worker_mod, "_worker_info", as_worker(w, 2))
            groups = list(stream(tmp_path / "sh", data, bpe400, batch_size=2, rank=rank, world=2, shuffle_buffer=4))
            mine += sum(len(g) for g in groups)
            seen += [s["index"] for s in samples_of(groups)]
        steps.append(mine)
    assert sorted(seen) == list(range(14)) and steps == [4, 4]  # 7 samples a rank: batches 2, 2, 2, 1
    # ... and what they read is what the plan says without reading (bench_sampler measures the plan)
    monkeypatch.setattr(worker_mod, "_worker_info", None)
    counts = [3, 3, 3, 3, 2]
    for rank in (0, 1):
        want = rank_batches(counts, 0, 0, rank_plan(14, 2, rank, 2), 2, 4)
        got = round_robin(stream(tmp_path / "sh", data, bpe400, batch_size=2, rank=rank, world=2, shuffle_buffer=4),
                          2, monkeypatch)
        assert got == want
    # grouped (2 micro-batches a step, sorted inside it): each step holds the plan's samples
    grouped = stream(tmp_path / "sh", data, bpe400, batch_size=2, rank=1, world=2, shuffle_buffer=4, group=2,
                     group_by_length=True)
    got = round_robin(grouped, 2, monkeypatch)
    want = rank_batches(counts, 0, 0, rank_plan(14, 2, 1, 2, group=2), 2, 4)
    assert [sorted(got[k] + got[k + 1]) for k in (0, 2)] == [sorted(want[k] + want[k + 1]) for k in (0, 2)]
    assert [len(b) for b in got] == [2, 2, 2, 1]


def round_robin(ds, workers: int, monkeypatch) -> list[list[int]]:
    """The micro-batches' sample indices in the order a DataLoader with ``workers`` workers yields them."""
    parts = []
    for w in range(workers):
        monkeypatch.setattr(worker_mod, "_worker_info", as_worker(w, workers))
        parts.append([[[s["index"] for s in batch] for batch in group] for group in ds])
    out = []  # one group (a DataLoader item) from each worker in turn, its micro-batches in order
    for t in range(max(map(len, parts))):
        out += [batch for p in parts if t < len(p) for batch in p[t]]
    return out


@pytest.mark.parametrize("workers", [1, 2])
def test_resume_mid_epoch_continues_the_same_batches_without_reopening_consumed_shards(data, bpe400, tmp_path,
                                                                                       monkeypatch, workers):
    convert(data / "qa.json", data / "images", tmp_path / "sh", samples_per_shard=2)
    whole = stream(tmp_path / "sh", data, bpe400, batch_size=2, shuffle_buffer=2, seed=5)
    whole.set_epoch(1)
    full = round_robin(whole, workers, monkeypatch)
    assert len(full) == 7 and sorted(sum(full, [])) == list(range(14))
    resumed = stream(tmp_path / "sh", data, bpe400, batch_size=2, shuffle_buffer=2, seed=5)
    resumed.set_epoch(1)
    resumed.resume_at(3)
    assert round_robin(resumed, workers, monkeypatch) == full[3:]
    assert len(resumed.opened) < len(whole.opened)  # the shards of the 6 consumed samples stay closed


def test_a_checkpoint_of_a_stream_read_by_other_worker_counts_is_refused(data, bpe400, tmp_path, monkeypatch):
    """Workers split each rank's part of the epoch, so their count decides which samples a step sees:
    a resume with another ``dataloader_num_workers`` is refused, and a stream read by more workers than
    it was built for stops instead of silently reading another order."""
    from types import SimpleNamespace

    from llava_hydra.train.checkpoints import RUN_RECORD, CheckpointError
    from llava_hydra.train.stream_loader import StreamTraining

    convert(data / "qa.json", data / "images", tmp_path / "sh", samples_per_shard=2)
    two = stream(tmp_path / "sh", data, bpe400, batch_size=2, shuffle_buffer=2, workers=2)
    assert two.key()["workers"] == 2
    assert stream(tmp_path / "sh", data, bpe400, batch_size=2, shuffle_buffer=2, workers=0).key()["workers"] == 1
    ckpt = tmp_path / "checkpoint-3"
    ckpt.mkdir()
    (ckpt / RUN_RECORD).write_text(json.dumps({"stream": {"epoch": 0, "micro_batches": 3, "key": two.key()}}))

    class Resuming(StreamTraining):
        def __init__(self, ds, workers):
            self.train_dataset, self._stream_resume_from = ds, str(ckpt)
            self.args = SimpleNamespace(dataloader_num_workers=workers, dataloader_pin_memory=False,
                                        dataloader_prefetch_factor=None, dataloader_multiprocessing_context=None)

    one = stream(tmp_path / "sh", data, bpe400, batch_size=2, shuffle_buffer=2, workers=1)
    with pytest.raises(CheckpointError, match=r"workers: \{'workers': 2\} then, \{'workers': 1\} now"):
        Resuming(one, 1).get_resumed_dataloader(None, 3)
    assert Resuming(two, 2).get_resumed_dataloader(None, 3).dataset.start_step == 3
    monkeypatch.setattr(worker_mod, "_worker_info", as_worker(0, 3))
    with pytest.raises(RuntimeError, match="built for 2 DataLoader workers .* read by 3"):
        next(iter(two))


def test_stream_keys_written_before_the_worker_count_still_resume():
    from llava_hydra.train.stream_loader import older_key

    new = {"samples": 14, "workers": 2, "packing": {"capacity": 64}}
    assert older_key(new, 2) == new
    packed_before = {"samples": 14, "packing": {"workers": 2, "capacity": 64}}  # packed: under "packing"
    assert older_key(packed_before, 1) == {"samples": 14, "packing": {"capacity": 64}, "workers": 2}
    assert older_key({"samples": 14}, 3) == {"samples": 14, "workers": 3}  # unpacked: not recorded
