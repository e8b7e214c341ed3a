"""The record store and the length cache are checked against what they were built from: a
same-size corruption of the store, an incomplete store and a length cache that covers only part of
the records are rebuilt with a warning (never trusted, never crashed on), an unchanged store is
opened without hashing it, and a data file replaced while it is hashed never files its new records
under the old content's digest."""

from __future__ import annotations

import hashlib
import json
import logging
import os

import numpy as np
import pytest

import stand_ins as testing
from llava_hydra.data import lengths, store, store_check
from llava_hydra.data.dataset import LazySupervisedDataset

RECORDS = [{"id": f"r{k}", "conversations": [{"from": "human", "value": f"Question {k}?"},
                                             {"from": "gpt", "value": f"Hello answer {k}."}]} for k in range(40)]


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return testing.bpe_tokenizer(tmp_path_factory.mktemp("tok") / "bpe")


@pytest.fixture
def data(tmp_path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps(RECORDS))
    return path


def arrow_file(cache):
    (folder,) = [p for p in (cache / "records").iterdir() if p.is_dir()]
    (arrow,) = folder.glob("*.arrow")
    return folder, arrow


def settled(monkeypatch):
    """As if the store had been built a while ago: its verified stat is remembered."""
    monkeypatch.setattr(store_check, "RACY_NS", -10**12)


def test_unchanged_store_is_opened_without_hashing_it(data, tmp_path, monkeypatch):
    settled(monkeypatch)
    cache = tmp_path / "cache"
    store.open_records(data, cache)  # built, then verified in full once
    hashed = []
    real = store_check.hash_file
    monkeypatch.setattr(store_check, "hash_file", lambda p: (hashed.append(p), real(p))[1])
    got, _ = store.open_records(data, cache)
    assert hashed == [] and got[3]["id"] == "r3"


def test_same_size_corruption_of_the_store_is_rebuilt_with_a_warning(data, tmp_path, monkeypatch, caplog):
    settled(monkeypatch)
    cache = tmp_path / "cache"
    store.open_records(data, cache)
    store.open_records(data, cache)  # the verified stat is remembered: the cheap path from here on
    folder, arrow = arrow_file(cache)
    before = arrow.stat()
    raw = arrow.read_bytes()
    assert raw.count(b"Hello answer 7.") == 1
    arrow.write_bytes(raw.replace(b"Hello answer 7.", b"Jello answer 7."))  # same size, other content
    os.utime(arrow, ns=(before.st_atime_ns, before.st_mtime_ns))  # even with its mtime put back
    assert arrow.stat().st_size == before.st_size and arrow.stat().st_mtime_ns == before.st_mtime_ns
    with caplog.at_level(logging.WARNING, logger="llava_hydra.data.store"):
        got, _ = store.open_records(data, cache)
    assert got[7]["conversations"][1]["value"] == "Hello answer 7."
    (warning,) = [r.getMessage() for r in caplog.records if "damaged" in r.getMessage()]
    assert f"{arrow} is not what was built" in warning and "rebuilding it" in warning
    assert not any(p.name.endswith(".tmp") for p in (cache / "records").iterdir())


@pytest.mark.parametrize("damage", ["truncated", "no_content_record", "missing_file"])
def test_incomplete_store_is_rebuilt_with_a_warning(data, tmp_path, caplog, damage):
    cache = tmp_path / "cache"
    store.open_records(data, cache)
    folder, arrow = arrow_file(cache)
    if damage == "truncated":
        arrow.write_bytes(arrow.read_bytes()[: arrow.stat().st_size // 2])
        expected = f"{arrow} has"
    elif damage == "no_content_record":  # an interrupted build or an older version's store
        (folder / store_check.CONTENT).unlink()
        expected = f"{folder / store_check.CONTENT} is missing"
    else:
        arrow.unlink()
        expected = f"{arrow} is missing"
    with caplog.at_level(logging.WARNING, logger="llava_hydra.data.store"):
        got, _ = store.open_records(data, cache)
    assert len(got) == 40 and got[39]["id"] == "r39"
    assert any(expected in r.getMessage() and "rebuilding" in r.getMessage() for r in caplog.records)
    caplog.clear()
    store.open_records(data, cache)  # the rebuilt store is trusted
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_data_file_replaced_after_hashing_is_filed_under_what_was_read(data, tmp_path, monkeypatch):
    """The file is swapped for new content right after it was hashed, before the store is built:
    the store holds the new records under the new content's digest, and the old content, put
    back, gets its own records (a store filed under the old digest would hand out the new ones)."""
    cache = tmp_path / "cache"
    old, new = data.read_bytes(), json.dumps(RECORDS[:5]).encode()
    real = store._hash_file

    def hash_then_replace(path, *a):
        result = real(path, *a)
        (tmp_path / "swap").write_bytes(new)
        os.replace(tmp_path / "swap", path)  # replaced, as an editor or rsync does
        return result
    monkeypatch.setattr(store, "_hash_file", hash_then_replace)
    got, digest = store.open_records(data, cache)
    assert digest == hashlib.sha256(new).hexdigest() and len(got) == 5
    monkeypatch.setattr(store, "_hash_file", real)
    (tmp_path / "swap").write_bytes(old)
    os.replace(tmp_path / "swap", data)
    got, digest = store.open_records(data, cache)
    assert digest == hashlib.sha256(old).hexdigest() and len(got) == 40


def test_data_file_replaced_while_being_hashed_is_hashed_again(data, tmp_path, monkeypatch, caplog):
    """Swapped in the middle of hashing: the digest returned (and remembered) is that of the file
    now there, never the one that was being read."""
    new = json.dumps(RECORDS[:3]).encode()
    real_sha = hashlib.sha256
    swapped = []

    class Swapping:
        def __init__(self, h):
            self.h = h

        def update(self, block):
            if not swapped:
                swapped.append(True)
                (tmp_path / "swap").write_bytes(new)
                os.replace(tmp_path / "swap", data)
            self.h.update(block)

        def hexdigest(self):
            return self.h.hexdigest()
    monkeypatch.setattr(hashlib, "sha256", lambda *a: Swapping(real_sha(*a)))
    with caplog.at_level(logging.WARNING, logger="llava_hydra.data.store"):
        digest = store.file_digest(data, tmp_path / "cache")
    monkeypatch.setattr(hashlib, "sha256", real_sha)
    assert swapped and digest == real_sha(new).hexdigest()
    assert any("changed while it was being hashed" in r.getMessage() for r in caplog.records)
    got, digest = store.open_records(data, tmp_path / "cache")
    assert len(got) == 3 and digest == real_sha(new).hexdigest()


def make(data, tok, cache):
    return LazySupervisedDataset(data, tok, testing.clip_processor(), "v1", cache_dir=cache)


def test_length_cache_covering_part_of_the_records_is_recomputed(data, tok, tmp_path, caplog):
    cache = tmp_path / "cache"
    full = make(data, tok, cache).length_table()
    (file,) = (cache / "lengths").glob("*.npz")
    half = lengths.LengthTable(full.tokens[:20], full.first_label[:20], full.has_image[:20], {})
    lengths.save(half, file)  # readable, and covers records 0-19 only
    with caplog.at_level(logging.WARNING, logger="llava_hydra.data.lengths"):
        again = make(data, tok, cache).length_table()
    assert len(again.tokens) == 40 and again.tokens.tolist() == full.tokens.tolist()
    assert any("covers 20 of the 40 records" in r.getMessage() and "recomputing" in r.getMessage()
               for r in caplog.records)
    assert len(lengths.load(file).tokens) == 40  # rewritten whole


def test_same_size_corruption_of_the_length_cache_is_recomputed(data, tok, tmp_path, caplog):
    cache = tmp_path / "cache"
    full = make(data, tok, cache).length_table()
    (file,) = (cache / "lengths").glob("*.npz")
    raw = bytearray(file.read_bytes())
    tokens_at = raw.index(full.tokens[:8].tobytes())  # the token counts inside the zip member
    raw[tokens_at] ^= 0x7F
    file.write_bytes(bytes(raw))
    with caplog.at_level(logging.WARNING, logger="llava_hydra.data.lengths"):
        again = make(data, tok, cache).length_table()
    assert np.array_equal(again.tokens, full.tokens)
    assert any("Bad CRC-32" in r.getMessage() for r in caplog.records)


def test_a_damaged_digest_memo_is_not_trusted(data, tmp_path, monkeypatch):
    """The remembered digest (cache_dir/digests/) with one hex digit changed: the file is hashed again."""
    monkeypatch.setattr(store, "RACY_NS", -10**12)  # remembered, as for a file written a while ago
    cache = tmp_path / "cache"
    right = store.file_digest(data, cache)
    (memo,) = (cache / "digests").glob("*.json")
    saved = json.loads(memo.read_text())
    wrong = ("0" if right[0] != "0" else "1") + right[1:]
    memo.write_text(json.dumps({**saved, "sha256": wrong}))  # same size
    assert store.file_digest(data, cache) == right == hashlib.sha256(data.read_bytes()).hexdigest()
