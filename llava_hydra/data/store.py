"""The record store: a data file's records in a memory-mapped Arrow table (Hugging Face
``datasets``), built once per file content and shared read-only by every rank and worker.

Owns building, locating and reading the store. Each record is one row of a ``record`` column
holding the record as a JSON string, exactly what :func:`records.load_records` returns for it
(bad JSONL lines and non-object records as their placeholder dicts, so indices stay
line-aligned), a ``has_image`` column (the record names an image) so that counting
modalities decodes nothing, and an ``images`` column (the record's image paths, in tag order;
none for a malformed ``image`` field) so that checking where images live decodes nothing either
(``image_paths``). AnyRes runs keep each path's image size beside them, in the store's
``sizes/`` folder (store_sizes.py: filled by the first AnyRes pass, not at build). Reading
record ``i`` slices its bytes straight out of the mapped Arrow buffers (numpy views of the
offsets, no pyarrow scalar per access) and decodes that one string: no process holds the
whole list of dicts, nor per-record Python objects, and the Arrow pages are shared through the
page cache instead of copied per process.

The store lives at ``<cache_dir>/records/<key>`` where the key is the sha256 of the file's
bytes plus whether bad lines are kept (``on_bad_sample=skip``). The sha256 is computed once per
file version: it is remembered under ``<cache_dir>/digests/`` beside the file's path, size,
inode, mtime_ns and ctime_ns (of the open file whose bytes were hashed, checked unchanged after
hashing) and a checksum of the two (a damaged memo is not trusted), and a later run whose stat matches reads it instead of hashing
again (not for a file changed within 2 s of hashing: a same-size rewrite within the clock's
granularity would leave its stat unchanged). One process builds it under
a file lock into a temporary folder and renames it into place; others wait on the lock and
then open the finished store, so processes starting at once build it once.

The store is keyed by the bytes it was built from: the build hashes the very bytes it parses
(records.load_records), and if the file changed after it was hashed (replaced while being
hashed or read) the store is filed under the digest of what was read, never under the earlier
one. A store is checked against what was built on every open (store_check: its files' sizes
and sha256, rehashed only when their stat changed since the last verification); a missing,
incomplete or damaged one is rebuilt with a warning naming the file.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import time
from pathlib import Path

import numpy as np

from llava_hydra.data.records import RecordError, images_of, load_records
from llava_hydra.data.store_check import expected_rows, record_content, store_problem

log = logging.getLogger(__name__)

# bump when what is stored changes (3: has_image as int8; 4: the images column; 5: content.json; 6: a
# sizes/ folder of image sizes filled by the first AnyRes pass, store_sizes.py: a FORMAT 5 check would
# take it for a file not built and rebuild the store, so versions sharing a cache keep apart)
FORMAT = 6
COLUMN = "record"
IMAGE_COLUMN = "has_image"
PATHS_COLUMN = "images"
RACY_NS = 2_000_000_000  # digests of files changed less than 2 s before hashing are not remembered


def file_digest(path: str | Path, cache_dir: str | Path | None = None) -> str:
    """sha256 of the file's bytes, read in chunks (the length cache uses the same digest). With a
    ``cache_dir`` it is remembered with the file's stat and reused while the stat is unchanged."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {path}")
    st = path.stat()
    real = os.path.realpath(path)
    memo = None
    if cache_dir is not None:
        memo = Path(cache_dir) / "digests" / f"{hashlib.sha256(real.encode()).hexdigest()[:32]}.json"
        try:
            saved = json.loads(memo.read_text())
            if saved["stat"] == [real, *_stat(st)] and saved["check"] == _memo_check(saved["stat"], saved["sha256"]):
                return saved["sha256"]  # (a damaged memo fails its check and the file is hashed again)
        except (OSError, ValueError, KeyError, TypeError):
            pass
    hashed_at = time.time_ns()
    digest, st = _hash_file(path)
    # a file modified within RACY_NS of hashing may change again within the filesystem's timestamp
    # granularity without its stat changing (git's "racy" case): such a digest is not remembered
    if memo is not None and st.st_mtime_ns < hashed_at - RACY_NS and st.st_ctime_ns < hashed_at - RACY_NS:
        memo.parent.mkdir(parents=True, exist_ok=True)
        tmp = memo.with_name(f"{memo.name}.{os.getpid()}.tmp")
        stamp = [real, *_stat(st)]
        tmp.write_text(json.dumps({"stat": stamp, "sha256": digest, "check": _memo_check(stamp, digest)}))
        os.replace(tmp, memo)
    return digest


def _memo_check(stamp: list, digest: str) -> str:
    return hashlib.sha256(json.dumps([stamp, digest]).encode()).hexdigest()[:16]


def _stat(st: os.stat_result) -> list[int]:
    return [st.st_size, st.st_ino, st.st_mtime_ns, st.st_ctime_ns]


def _hash_file(path: Path, tries: int = 3) -> tuple[str, os.stat_result]:
    """(sha256, stat of the file hashed): the open file's stat before and after hashing and the
    path's stat after must agree (a file written or replaced meanwhile is hashed again)."""
    for _ in range(tries):
        with open(path, "rb") as f:
            before = os.fstat(f.fileno())
            h = hashlib.sha256()
            for block in iter(lambda: f.read(1 << 24), b""):
                h.update(block)
            after = os.fstat(f.fileno())
        if _stat(before) == _stat(after) == _stat(path.stat()):
            return h.hexdigest(), before
        log.warning("data file %s changed while it was being hashed: hashing it again", path)
    raise RuntimeError(f"data file {path} kept changing while it was being hashed ({tries} tries); "
                       f"let whatever writes it finish, then start again")


def has_image(records) -> np.ndarray:
    """Per record, whether it names an image (bool array): the store's column, or for a list of
    records (no cache_dir) one pass over it."""
    if isinstance(records, RecordStore) or hasattr(records, "has_image"):  # a mixture's records too
        return records.has_image
    return np.array([bool(r.get("image")) if isinstance(r, dict) else False for r in records], dtype=bool)


def image_paths(records) -> tuple[np.ndarray, "pyarrow.Array"]:
    """(index of its record, path) of every image path of every record, in record and tag order:
    from the store's column without decoding a record, or for a list of records one pass over it."""
    import pyarrow as pa

    if isinstance(records, RecordStore):
        return records.image_paths()
    pairs = [(i, path) for i, r in enumerate(records) for path in _paths_of(r)]
    return np.array([i for i, _ in pairs], dtype=np.int64), pa.array([p for _, p in pairs], pa.string())


def _paths_of(record) -> list[str]:
    try:
        return images_of(record)
    except RecordError:  # a malformed 'image' field: the record checks refuse the record itself
        return []


class RecordStore:
    """Sequence of records (dicts) read from the store by index."""

    def __init__(self, folder: str | Path):
        import pyarrow as pa

        self.folder = Path(folder)
        # the Arrow files datasets' save_to_disk wrote, memory-mapped as datasets' load_from_disk maps
        # them (read with pyarrow alone: importing datasets costs seconds on every start)
        files = [f["filename"] for f in json.loads((self.folder / "state.json").read_text())["_data_files"]]
        table = pa.concat_tables([pa.ipc.open_stream(pa.memory_map(str(self.folder / f))).read_all() for f in files])
        self._n = table.num_rows
        self._table = table
        # per chunk: record offsets (a numpy view) and the bytes they index, both in the mapped file
        self._offsets, self._data, starts = [], [], [0]
        for chunk in table.column(COLUMN).chunks:
            _, offsets, data = chunk.buffers()
            wide = str(chunk.type) in ("large_string", "large_utf8")
            self._offsets.append(np.frombuffer(offsets, dtype=np.int64 if wide else np.int32,
                                               count=len(chunk) + 1, offset=chunk.offset * (8 if wide else 4)))
            self._data.append(memoryview(data) if data is not None else memoryview(b""))
            starts.append(starts[-1] + len(chunk))
        self._starts = np.array(starts, dtype=np.int64)

    @property
    def has_image(self) -> np.ndarray:
        # int8 in the file: read as numpy views of the mapped buffers (pyarrow's own conversion imports pandas)
        parts = [np.frombuffer(c.buffers()[1], dtype=np.int8, count=len(c), offset=c.offset)
                 for c in self._table.column(IMAGE_COLUMN).chunks]
        return np.concatenate(parts).astype(bool) if parts else np.zeros(0, dtype=bool)

    def image_paths(self) -> tuple[np.ndarray, "pyarrow.Array"]:
        """(record index, path) of every image path, from the ``images`` column (see image_paths)."""
        import pyarrow as pa
        import pyarrow.compute as pc

        indices, paths, start = [], [], 0
        for chunk in self._table.column(PATHS_COLUMN).chunks:
            indices.append(pc.list_parent_indices(chunk).to_numpy() + start)
            paths.append(pc.list_flatten(chunk))
            start += len(chunk)
        if not paths:
            return np.zeros(0, dtype=np.int64), pa.array([], pa.string())
        return np.concatenate(indices).astype(np.int64), pa.concat_arrays(paths)

    def image_offsets(self) -> np.ndarray:
        """int64 (records + 1): record i's paths are rows ``[i]:[i + 1]`` of ``image_paths()``'s."""
        parts, start = [np.zeros(1, dtype=np.int64)], 0
        for chunk in self._table.column(PATHS_COLUMN).chunks:  # each chunk's list offsets (a view), renumbered
            offsets = chunk.offsets.to_numpy().astype(np.int64)
            parts.append(offsets[1:] - offsets[0] + start)
            start = int(parts[-1][-1]) if len(parts[-1]) else start
        return np.concatenate(parts)

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, i: int) -> dict:
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"record {i} out of range ({n} records)")
        k = int(np.searchsorted(self._starts, i, side="right")) - 1
        offsets, j = self._offsets[k], i - int(self._starts[k])
        return json.loads(str(self._data[k][int(offsets[j]):int(offsets[j + 1])], "utf-8"))

    def __iter__(self):
        return (self[i] for i in range(len(self)))


def _build(path: Path, records: list, final: Path) -> None:
    import datasets
    import pyarrow as pa

    rows = [json.dumps(r, ensure_ascii=False) for r in records]
    images = np.array([bool(r.get("image")) for r in records], dtype=np.int8)
    paths = [_paths_of(r) for r in records]
    tmp = final.with_name(f"{final.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    table = pa.table({COLUMN: pa.array(rows, pa.string()), IMAGE_COLUMN: pa.array(images, pa.int8()),
                      PATHS_COLUMN: pa.array(paths, pa.list_(pa.string()))})  # typed by pyarrow: fast
    datasets.Dataset(table).save_to_disk(str(tmp))
    record_content(tmp, len(rows))  # what was built, for the check on every open (store_check)
    os.replace(tmp, final)


def _key(digest: str, skip_bad_lines: bool) -> str:
    return hashlib.sha256(json.dumps([FORMAT, digest, bool(skip_bad_lines)]).encode()).hexdigest()[:32]


def _verified(final: Path, source: Path, warn: bool = True) -> RecordStore | None:
    """The store in ``final`` if it is there, whole and unchanged since it was built; else None
    (a damaged or incomplete one with a warning naming what is wrong)."""
    if not final.is_dir():
        return None
    problem = store_problem(final)
    if problem is None:
        try:
            store = RecordStore(final)
            if len(store) == expected_rows(final):
                return store
            problem = f"{final} holds {len(store)} records, {expected_rows(final)} when it was built"
        except Exception as e:  # noqa: BLE001 - whatever a damaged Arrow file raises: rebuilt, not crashed on
            problem = f"{final} is unreadable ({type(e).__name__}: {e})"
    if warn:
        log.warning("record store of %s is damaged or incomplete: %s; rebuilding it", source, problem)
    return None


def open_records(path: str | Path, cache_dir: str | Path, skip_bad_lines: bool = False) -> tuple[RecordStore, str]:
    """(store of the file's records, sha256 of the bytes it was built from): built on first use,
    then opened (and checked: a damaged store is rebuilt with a warning). A bad JSONL line
    without ``skip_bad_lines`` raises BadSampleError as load_records does."""
    path = Path(path)
    root = Path(cache_dir) / "records"
    digest = file_digest(path, cache_dir)
    loaded = None  # (records, sha256 of the bytes they were parsed from)
    for _ in range(3):
        final = root / _key(digest, skip_bad_lines)
        if (found := _verified(final, path)) is not None:
            return found, digest
        root.mkdir(parents=True, exist_ok=True)
        with open(root / f"{final.name}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes (or the process dies)
            # another process may have built (or rebuilt) it while this one waited
            if (found := _verified(final, path, warn=False)) is not None:
                return found, digest
            if loaded is None or loaded[1] != digest:
                loaded = load_records(path, skip_bad_lines=skip_bad_lines)  # hashes the bytes it parses
            if loaded[1] == digest:
                if final.exists():  # damaged: moved aside (processes that mapped it keep their pages)
                    aside = final.with_name(f"{final.name}.damaged.{os.getpid()}.tmp")
                    os.replace(final, aside)
                    shutil.rmtree(aside, ignore_errors=True)
                started = time.time()
                _build(path, loaded[0], final)
                log.info("record store for %s built in %.1fs: %s", path, time.time() - started, final)
                return RecordStore(final), digest
        # the file changed between hashing and reading: its store is keyed by what was read
        log.warning("data file %s changed after it was hashed (sha256 %s... then, %s... when read): "
                    "using what was read", path, digest[:12], loaded[1][:12])
        digest = loaded[1]
    raise RuntimeError(f"data file {path} kept changing while it was being read; let whatever writes it "
                       f"finish, then start again")
