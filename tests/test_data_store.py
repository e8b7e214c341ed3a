"""The record store: the same records and encoded samples as the plain loader (JSON, JSONL,
bad lines, non-object records), reused on a second run, rebuilt for a changed file, built once
when two processes start at once."""

from __future__ import annotations

import json
import multiprocessing as mp

import pytest

import stand_ins as testing
from llava_hydra.data import store
from llava_hydra.data.dataset import BadSampleError, LazySupervisedDataset
from llava_hydra.data.records import load_records

GOOD = [{"id": "a", "conversations": [{"from": "human", "value": "Hi there"}, {"from": "gpt", "value": "Hello ü"}]},
        {"id": "b", "conversations": [{"from": "human", "value": "Two plus two?"}, {"from": "gpt", "value": "Four."}]}]


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return testing.bpe_tokenizer(tmp_path_factory.mktemp("tok") / "bpe")


def write_jsonl(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return path


def test_json_records_equal_the_loader_and_nonobjects_stay_in_place(tmp_path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps([GOOD[0], 7, GOOD[1]]))
    got, digest = store.open_records(path, tmp_path / "cache")
    assert len(got) == 3 and list(got) == load_records(path)[0] and digest == load_records(path)[1]
    assert got[0] == GOOD[0] and got[2]["id"] == "b"
    assert got[1] == {"_not_an_object": "record is a int, not an object"}


def test_jsonl_bad_line_is_kept_with_skip_and_raises_without(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [json.dumps(GOOD[0]), "{oops", json.dumps(GOOD[1])])
    got, _ = store.open_records(path, tmp_path / "cache", skip_bad_lines=True)
    assert [r.get("id") for r in got] == ["a", None, "b"]
    assert got[1]["_bad_line"].startswith(f"{path}: line 2 is not valid JSON")
    with pytest.raises(BadSampleError, match="line 2 is not valid JSON"):
        store.open_records(path, tmp_path / "cache")


@pytest.mark.parametrize("policy", ["raise", "skip"])
def test_samples_and_errors_equal_the_list_path(tmp_path, tok, policy):
    path = write_jsonl(tmp_path / "d.jsonl", [json.dumps(GOOD[0]), json.dumps({"id": "c", "conversations": []}),
                                              json.dumps(GOOD[1])])

    def make(cache):
        return LazySupervisedDataset(path, tok, testing.clip_processor(), "v1", on_bad_sample=policy,
                                     cache_dir=cache)
    plain, stored = make(None), make(tmp_path / "cache")
    assert isinstance(stored.records, store.RecordStore) and len(stored) == len(plain) == 3
    for i in (0, 2):
        a, b = plain[i], stored[i]
        assert a["input_ids"].tolist() == b["input_ids"].tolist() and a["labels"].tolist() == b["labels"].tolist()
    if policy == "raise":
        with pytest.raises(BadSampleError, match=r"d\.jsonl: sample 1 \(id='c'\): 'conversations' is empty"):
            stored[1]
    else:
        assert stored[1]["input_ids"].tolist() == plain[1]["input_ids"].tolist() == plain[0]["input_ids"].tolist()


def test_second_run_reuses_and_changed_file_rebuilds(tmp_path, monkeypatch):
    path = tmp_path / "d.json"
    path.write_text(json.dumps(GOOD))
    cache = tmp_path / "cache"
    built = []
    real = store._build
    monkeypatch.setattr(store, "_build", lambda *a: (built.append(a[0]), real(*a)))
    store.open_records(path, cache)
    store.open_records(path, cache)
    assert len(built) == 1
    path.write_text(json.dumps(GOOD[:1]))
    got, _ = store.open_records(path, cache)
    assert len(built) == 2 and len(got) == 1 and got[0]["id"] == "a"


def _open(path, cache, counter, barrier, out):
    real = store._build

    def counting(*a):
        with counter.get_lock():
            counter.value += 1
        return real(*a)
    store._build = counting
    barrier.wait()  # both start at once
    got, _ = store.open_records(path, cache)
    (out).write_text(json.dumps([r["id"] for r in got]))


def test_two_processes_at_once_build_it_once(tmp_path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps([{**GOOD[k % 2], "id": str(k)} for k in range(2000)]))
    ctx = mp.get_context("fork")
    counter, barrier = ctx.Value("i", 0), ctx.Barrier(2)
    procs = [ctx.Process(target=_open, args=(path, tmp_path / "cache", counter, barrier, tmp_path / f"{k}.out"))
             for k in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0]
    assert counter.value == 1
    expected = [str(k) for k in range(2000)]
    assert [json.loads((tmp_path / f"{k}.out").read_text()) for k in range(2)] == [expected, expected]
    assert [p.name for p in (tmp_path / "cache" / "records").iterdir() if p.name.endswith(".tmp")] == []


def test_parallel_length_pass_equals_one_process(tmp_path, tok):
    from llava_hydra.data import lengths

    recs = [{**GOOD[k % 2], "id": k} for k in range(30)]
    recs[7] = {"id": 7, "conversations": []}
    path = tmp_path / "d.json"
    path.write_text(json.dumps(recs))
    ds = LazySupervisedDataset(path, tok, testing.clip_processor(), "v1", on_bad_sample="skip",
                               cache_dir=tmp_path / "cache")
    full = lengths.compute(len(ds), ds._prepare_for_lengths, tok, 5, 2048, batch_size=4, num_proc=1)
    limit = int(sorted(full.tokens[full.tokens > 0])[10])  # some records are longer: their first label is found
    one = lengths.compute(len(ds), ds._prepare_for_lengths, tok, 5, limit, batch_size=4, num_proc=1)
    two = lengths.compute(len(ds), ds._prepare_for_lengths, tok, 5, limit, batch_size=4, num_proc=2)
    assert one.tokens.tolist() == two.tokens.tolist() == full.tokens.tolist()
    assert one.first_label.tolist() == two.first_label.tolist() and sum(one.first_label >= 0) >= 5
    assert list(two.problems) == [7] and two.problems[7][1] == "'conversations' is empty"
    assert min(one.tokens[:7]) > 0


def test_warm_open_reads_the_remembered_digest_and_a_changed_stat_rehashes(tmp_path, monkeypatch):
    import hashlib
    import os

    path = tmp_path / "d.json"
    path.write_text(json.dumps(GOOD))
    hashed = []
    real = store._hash_file
    monkeypatch.setattr(store, "_hash_file", lambda p: (hashed.append(p), real(p))[1])
    store.open_records(path, tmp_path / "cache")
    store.open_records(path, tmp_path / "cache")
    assert len(hashed) == 2  # just written (ctime now): not remembered, a same-size rewrite could follow
    monkeypatch.setattr(store, "RACY_NS", -10**12)  # as if the file had been written a while ago
    _, first = store.open_records(path, tmp_path / "cache")
    _, again = store.open_records(path, tmp_path / "cache")
    assert first == again == hashlib.sha256(path.read_bytes()).hexdigest() and len(hashed) == 3
    before = path.stat()
    same_size = json.dumps(GOOD).replace('"a"', '"z"')  # same length, other content
    path.write_text(same_size)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))  # even with the old mtime back: ctime moved
    assert path.stat().st_mtime_ns == before.st_mtime_ns and path.stat().st_size == before.st_size
    got, digest = store.open_records(path, tmp_path / "cache")
    assert len(hashed) == 4 and digest == hashlib.sha256(same_size.encode()).hexdigest() and got[0]["id"] == "z"


def test_has_image_column_counts_modalities_without_decoding(tmp_path, monkeypatch):
    recs = [{**GOOD[0], "image": "a.jpg"}, GOOD[1], 5, {**GOOD[1], "image": ["x.jpg", "y.jpg"]},
            {**GOOD[0], "image": ""}]
    path = tmp_path / "d.json"
    path.write_text(json.dumps(recs))
    got, _ = store.open_records(path, tmp_path / "cache")
    monkeypatch.setattr(store.json, "loads", lambda *a, **k: pytest.fail("a record was decoded"))
    assert store.has_image(got).tolist() == [True, False, False, True, False]
    monkeypatch.undo()
    assert store.has_image(load_records(path)[0]).tolist() == [True, False, False, True, False]


def test_records_across_many_arrow_chunks(tmp_path):
    path = tmp_path / "d.jsonl"
    write_jsonl(path, [json.dumps({**GOOD[k % 2], "id": f"r{k}", "pad": "é" * (k % 7)}) for k in range(2500)])
    got, _ = store.open_records(path, tmp_path / "cache")
    assert len(got._offsets) > 1  # several record batches in the file: indexing crosses them
    assert [got[k]["id"] for k in (0, 999, 1000, 1001, 2499, -1)] == ["r0", "r999", "r1000", "r1001", "r2499", "r2499"]
    assert got[1234] == {**GOOD[0], "id": "r1234", "pad": "é" * (1234 % 7)}
    with pytest.raises(IndexError, match="record 2500 out of range"):
        got[2500]
