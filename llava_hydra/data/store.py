"""The record store: a data file's records in a memory-mapped Arrow table (Hugging Face
``datasets``), built once per file content and shared read-only by every rank and worker.

Owns building, locating and reading the store. Each record is one row of a ``record`` column
holding the record as a JSON string, exactly what :func:`records.load_records` returns for it
(bad JSONL lines and non-object records as their placeholder dicts, so indices stay
line-aligned). Reading record ``i`` decodes that one string: no process holds the whole list
of dicts, and the Arrow pages are shared through the page cache instead of copied per process.

The store lives at ``<cache_dir>/records/<key>`` where the key is the sha256 of the file's
bytes plus whether bad lines are kept (``on_bad_sample=skip``). One process builds it under
a file lock into a temporary folder and renames it into place; others wait on the lock and
then open the finished store, so processes starting at once build it once.
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

from llava_hydra.data.records import load_records

log = logging.getLogger(__name__)

FORMAT = 1  # bump when what is stored changes
COLUMN = "record"


def file_digest(path: str | Path) -> str:
    """sha256 of the file's bytes, read in chunks (the length cache uses the same digest)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {path}")
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            h.update(block)
    return h.hexdigest()


class RecordStore:
    """Sequence of records (dicts) read from the store by index."""

    def __init__(self, folder: str | Path):
        import datasets

        self.folder = Path(folder)
        self._table = datasets.load_from_disk(str(self.folder)).data  # memory-mapped Arrow table
        self._column = self._table.column(COLUMN)

    def __len__(self) -> int:
        return self._table.num_rows

    def __getitem__(self, i: int) -> dict:
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"record {i} out of range ({n} records)")
        return json.loads(self._column[i].as_py())

    def __iter__(self):
        return (self[i] for i in range(len(self)))


def _build(path: Path, skip_bad_lines: bool, final: Path) -> None:
    import datasets

    records, _ = load_records(path, skip_bad_lines=skip_bad_lines)
    rows = [json.dumps(r, ensure_ascii=False) for r in records]
    del records
    tmp = final.with_name(f"{final.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    datasets.Dataset.from_dict({COLUMN: rows}).save_to_disk(str(tmp))
    os.replace(tmp, final)


def open_records(path: str | Path, cache_dir: str | Path, skip_bad_lines: bool = False) -> tuple[RecordStore, str]:
    """(store of the file's records, sha256 of its bytes): built on first use, then only opened.
    A bad JSONL line without ``skip_bad_lines`` raises BadSampleError as load_records does."""
    path = Path(path)
    digest = file_digest(path)
    key = hashlib.sha256(json.dumps([FORMAT, digest, bool(skip_bad_lines)]).encode()).hexdigest()[:32]
    root = Path(cache_dir) / "records"
    final = root / key
    if not final.is_dir():
        root.mkdir(parents=True, exist_ok=True)
        with open(root / f"{key}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes (or the process dies)
            if not final.is_dir():  # another process may have built it while this one waited
                started = time.time()
                _build(path, skip_bad_lines, final)
                log.info("record store for %s built in %.1fs: %s", path, time.time() - started, final)
    return RecordStore(final), digest
