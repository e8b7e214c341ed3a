"""Image sizes kept in the record store (AnyRes: LLaVA-NeXT / OneVision): every image path of every
record with its upright (height, width), read once from the file header (anyres.header_size: an EXIF
rotation of 90/270 degrees swaps them, as decoding does) and then read back by the length pass, each
sample's token runs, truncation, ``data.check`` and the decoded-size check, none of which opens a
header again.

Where: ``<store>/sizes/<key>.npz`` in the record store's folder (store.py), one file per image folder
the store's records were read against (the key: the folder's real path, whether paths may leave it,
and ``FORMAT``), since the same data file may be trained with another folder. Its rows follow the
store's ``images`` column (records in order, each record's paths in tag order): ``sizes`` int32
(paths, 2), and ``problems`` (row -> kind, message) for a path whose header could not be read (a
missing file, an unreadable header, a path leaving the folder): such a record is named with its
file, sample index and problem by the length pass as before (or counted by reason under
``on_bad_sample=skip``).

When: filled by the first AnyRes length pass (``length_key``, before its workers fork; also
``data.check``'s), never at store build: a LLaVA-1.5 run over the same file needs no sizes and pays
nothing for them, and the store is keyed by the data file alone while the sizes depend on the image
folder too. Samples use the sizes once stored, else read their own headers as before (a run without
a length pass -- no grouping, no packing -- does not read every header of the file on its first
sample). The fill takes a file lock
beside it (the store's own pattern): processes starting at once read the headers once, the others
wait and then read the file; the runner's length pass already runs on rank 0 first.

Images replaced on disk after the sizes were stored are not seen by the sizes: a decoded image whose
size is not the stored one is refused with an error saying so (anyres.DecodedSize) rather than
trained with a token run counted for another size. Deleting ``<store>/sizes`` (or the cache) reads
the headers again. The length cache's key holds the sizes' digest, so the length pass and the
samples always count from the same sizes (sizes read again, and different, make a new length pass).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import multiprocessing as mp
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from llava_hydra.data.images import ImageError, ImageSource
from llava_hydra.data.store_check import SIZES_DIR

log = logging.getLogger(__name__)

FORMAT = 1  # bump when what a sizes file holds, or how a size is read from a header, changes
PARALLEL_MIN = 4096  # distinct paths below which the headers are read in this process alone


@dataclass
class StoredSizes:
    """The sizes of a store's image paths: record i's are rows ``offsets[i]:offsets[i + 1]``."""

    sizes: np.ndarray  # int32 (paths, 2): (height, width) upright; (0, 0) where ``problems`` has the row
    offsets: np.ndarray  # int64 (records + 1)
    problems: dict[int, tuple[str, str]] = field(default_factory=dict)  # row -> (kind, message)
    digest: str = ""  # of the sizes and problems: the length cache's key holds it
    # said after a stored problem: it was read once (a file restored since is not seen until re-read)
    stored_note: str = " (as read when the image sizes were stored; delete the record store's sizes/ to read it again)"

    @staticmethod
    def digest_of(sizes: np.ndarray, problems: dict) -> str:
        h = hashlib.sha256(np.ascontiguousarray(sizes, dtype=np.int32).tobytes())
        h.update(_problems_json(problems).encode())
        return h.hexdigest()

    def of(self, i: int, names: list[str]) -> list[tuple[int, int]]:
        """(height, width) of record i's images ``names`` (its paths in tag order); ImageError (its
        kind and message as when the header was read) for one whose header could not be read."""
        lo, hi = int(self.offsets[i]), int(self.offsets[i + 1])
        if hi - lo != len(names):
            raise AssertionError(f"record {i}: {len(names)} image path(s), {hi - lo} in the record store")
        for row in range(lo, hi):
            if row in self.problems:
                kind, message = self.problems[row]
                raise ImageError(message + self.stored_note, kind)
        return [(int(h), int(w)) for h, w in self.sizes[lo:hi].tolist()]


def given_sizes(per_record: list[list], where: str) -> StoredSizes:
    """StoredSizes of records whose sizes were kept elsewhere (a shard folder's image_sizes.jsonl:
    shards.py): record i's images' [height, width], None for one whose header could not be read."""
    counts = [len(s) for s in per_record]
    offsets = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)]).astype(np.int64)
    sizes = np.zeros((int(offsets[-1]), 2), dtype=np.int32)
    problems = {}
    for i, record in enumerate(per_record):
        for j, size in enumerate(record):
            row = int(offsets[i]) + j
            if size is None:
                problems[row] = ("unreadable_image", f"{where}: image {j} of sample {i}: its header could not be "
                                                     f"read when the shards were written")
            else:
                sizes[row] = size
    return StoredSizes(sizes, offsets, problems, StoredSizes.digest_of(sizes, problems), stored_note="")


def of_dataset(ds, fill: bool = True) -> StoredSizes | None:
    """The sizes a LazySupervisedDataset ``ds`` counts its AnyRes runs from: ``ds.sizes_given`` if set
    (kept elsewhere: a shard folder's, packed_stream.py), or its record store's (kept on ``ds`` as
    ``_sizes``; read from the headers if not there yet, unless ``fill`` is False: a sample then reads
    its own headers, as a run without a length pass always did); None for a LLaVA-1.5 rule, records
    without a store (a list, a shard stream's sample) or, without ``fill``, sizes not stored yet."""
    from llava_hydra.data.store import RecordStore

    if not ds.anyres:
        return None
    if getattr(ds, "sizes_given", None) is not None:
        return ds.sizes_given
    if not isinstance(ds.records, RecordStore):
        return None
    if getattr(ds, "_sizes", None) is None or ds._sizes[0] is not ds.records:
        if (found := stored_sizes(ds.records, ds.images, fill)) is None:
            return None
        ds._sizes = (ds.records, found)
    return ds._sizes[1]


def length_key(ds) -> str:
    """What the length cache's key adds for ``ds``'s stored sizes ("" without): their digest, so the
    length pass and the samples count from the same sizes. Called before the pass forks its workers,
    it fills the sizes there."""
    stored = of_dataset(ds)
    return f"/sizes{stored.digest}" if stored is not None else ""


def stored_of(ds, i: int | None, names: list[str], keep: int | None = None) -> list[tuple[int, int]] | None:
    """Record i's images' stored sizes (``of_dataset``, not filled here: the length pass fills them;
    the first ``keep``), None without stored sizes (or without i)."""
    stored = of_dataset(ds, fill=False) if i is not None else None
    return stored.of(i, names)[:keep] if stored is not None else None


def sizes_of(ds, i: int | None, names: list[str]) -> list[tuple[int, int]]:
    """Record i's images' sizes: stored, else read from their headers (anyres.image_size)."""
    from llava_hydra.data.anyres import image_size

    stored = stored_of(ds, i, names)
    return stored if stored is not None else [image_size(ds.images, name) for name in names]


def sizes_key(source: ImageSource) -> str:
    spec = [FORMAT, os.path.realpath(source.folder), bool(source.allow_outside)]
    return hashlib.sha256(json.dumps(spec).encode()).hexdigest()[:32]


def stored_sizes(store, source: ImageSource, fill: bool = True) -> StoredSizes | None:
    """The sizes of ``store``'s (a RecordStore) image paths under ``source``: read from its sizes
    file, or read from the headers and kept there (under a lock: once across processes); None if
    not there and not ``fill``."""
    folder = Path(store.folder) / SIZES_DIR
    path = folder / f"{sizes_key(source)}.npz"
    if not fill and not path.exists():
        return None
    offsets = store.image_offsets()
    if (found := _load(path, offsets, warn=fill)) is not None or not fill:
        return found
    try:
        folder.mkdir(exist_ok=True)
        lock = open(folder / f"{path.stem}.lock", "w")
    except OSError as e:  # a read-only cache: read the headers, keep nothing
        log.warning("cannot keep image sizes in %s (%s): reading every image header in this process", folder, e)
        return _read(store, source, offsets)
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes (or the process dies)
        if (found := _load(path, offsets, warn=False)) is not None:  # another process filled it meanwhile
            return found
        started = time.time()
        sizes = _read(store, source, offsets)
        _save(sizes, path)
        log.info("image sizes of %d image paths read from their headers in %.1fs and kept in %s",
                 len(sizes.sizes), time.time() - started, path)
        return sizes


def _load(path: Path, offsets: np.ndarray, warn: bool) -> StoredSizes | None:
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:  # a damaged member fails its CRC
            sizes, problems = z["sizes"], {int(k): tuple(v) for k, v in json.loads(str(z["problems"])).items()}
            digest = str(z["digest"])
        rows = int(offsets[-1])
        problem = None
        if sizes.shape != (rows, 2):
            problem = f"it holds {sizes.shape[0]} sizes for the store's {rows} image paths"
        elif any(not 0 <= r < rows for r in problems):
            problem = "it lists a problem past the store's image paths"
        elif digest != StoredSizes.digest_of(sizes, problems):
            problem = "its digest is not its content's"
    except Exception as e:  # noqa: BLE001 - zipfile.BadZipFile, OSError, ValueError, KeyError, ...
        problem = f"unreadable ({type(e).__name__}: {e})"
    if problem is None:
        return StoredSizes(sizes, offsets, problems, digest)
    if warn:
        log.warning("image sizes %s are damaged or incomplete: %s; reading the headers again", path, problem)
    return None


def _save(sizes: StoredSizes, path: Path) -> None:
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npz")
    try:
        np.savez(tmp, sizes=sizes.sizes, problems=np.array(_problems_json(sizes.problems)),
                 digest=np.array(sizes.digest))
        os.replace(tmp, path)
    except OSError as e:
        log.warning("cannot keep image sizes in %s (%s): they will be read from the headers again", path, e)


def _read(store, source: ImageSource, offsets: np.ndarray) -> StoredSizes:
    """Each distinct path's header read once (in parallel over the cores when there are many)."""
    _, paths = store.image_paths()
    names = paths.to_pylist()
    distinct = list(dict.fromkeys(names))
    found = dict(zip(distinct, _read_all(source, distinct)))
    sizes = np.zeros((len(names), 2), dtype=np.int32)
    problems = {}
    for row, name in enumerate(names):
        got = found[name]
        if isinstance(got, tuple) and len(got) == 2 and isinstance(got[0], int):
            sizes[row] = got
        else:
            problems[row] = tuple(got)
    return StoredSizes(sizes, offsets, problems, StoredSizes.digest_of(sizes, problems))


def _problems_json(problems: dict) -> str:
    return json.dumps({str(k): list(v) for k, v in sorted(problems.items())})


def _one(source: ImageSource, name: str):
    from llava_hydra.data.anyres import image_size

    try:
        return image_size(source, name)
    except ImageError as e:
        return [e.kind, str(e)]


_JOB = None  # the source and names while a parallel read is under way (inherited by the forked workers)


def _range(lo: int, hi: int) -> list:
    source, names = _JOB
    return [_one(source, name) for name in names[lo:hi]]


def _read_all(source: ImageSource, names: list[str]) -> list:
    procs = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if (procs <= 1 or len(names) < PARALLEL_MIN or mp.current_process().daemon
            or "fork" not in mp.get_all_start_methods()):
        return [_one(source, name) for name in names]
    global _JOB
    step = -(-len(names) // (procs * 4))
    _JOB = (source, names)
    try:
        with mp.get_context("fork").Pool(procs) as pool:
            parts = pool.starmap(_range, [(lo, min(lo + step, len(names))) for lo in range(0, len(names), step)])
    finally:
        _JOB = None
    return [x for part in parts for x in part]
