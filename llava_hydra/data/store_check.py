"""Whether a record store on disk is still what was built: its files' content record and the
check of a store against it on open.

A store is built into a temporary folder; before it is renamed into place, ``record_content``
writes ``content.json`` beside its files: each file's size and sha256 (hashed from the bytes on
disk), and the record count. Opening a store (``store_problem``) then costs a few ``stat`` calls
when nothing was written since it was last verified: ``content.json`` also keeps the stat
(size, inode, mtime_ns, ctime_ns) each file had when its hash was last checked, and a file whose
stat is unchanged is trusted. A file whose stat changed (any write changes its ctime, which no
user can set back; a copy of the cache changes its inode) is hashed again: the same bytes
verify and their new stat is recorded, a same-size corruption is found. A store whose stat was
taken less than 2 s after its files were last written is hashed again on its next open (a write
within the clock's granularity would leave the stat unchanged: git's "racy" case), so every
store is verified in full at least once after it was built. What this cannot see is a change
that leaves the stat untouched (bit rot under the filesystem): that is the disk's to catch.

A missing, incomplete or damaged store is reported as a problem (a string naming the file), never
raised: the caller rebuilds it with a warning. The ``sizes/`` folder (image sizes filled after the
build by the first AnyRes pass, store_sizes.py) is not part of what was built: its files carry their
own check (npz CRCs and coverage).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

CONTENT = "content.json"
SIZES_DIR = "sizes"  # image sizes filled into a built store later (store_sizes.py), checked on their own
RACY_NS = 2_000_000_000  # a stat taken within 2 s of a file's last write is not trusted later


def _stamp(st: os.stat_result) -> list[int]:
    return [st.st_size, st.st_ino, st.st_mtime_ns, st.st_ctime_ns]


def hash_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            h.update(block)
    return h.hexdigest()


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != CONTENT and not p.name.endswith(".tmp")
                  and p.relative_to(folder).parts[0] != SIZES_DIR)


def record_content(folder: str | Path, rows: int) -> None:
    """Write ``content.json`` for the store just built in ``folder`` (every file's size + sha256)."""
    folder = Path(folder)
    now = time.time_ns()
    files, stamps = {}, {}
    for p in _files(folder):
        name, st = p.relative_to(folder).as_posix(), p.stat()
        files[name], stamps[name] = {"size": st.st_size, "sha256": hash_file(p)}, _stamp(st)
    _write(folder / CONTENT, {"rows": rows, "files": files, "verified": stamps if _settled(stamps, now) else {}})


def _settled(stamps: dict, now: int) -> bool:
    """Whether every file was last written long enough ago for its stat to be trusted later."""
    return all(s[2] < now - RACY_NS and s[3] < now - RACY_NS for s in stamps.values())


def _write(path: Path, obj) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj))
    os.replace(tmp, path)


def store_problem(folder: str | Path) -> str | None:
    """None if the store in ``folder`` is whole and unchanged since it was built; else what is
    wrong, naming the file. Cheap when every file's stat matches its last verification."""
    folder = Path(folder)
    try:
        content = json.loads((folder / CONTENT).read_text())
        files, verified, rows = dict(content["files"]), dict(content.get("verified") or {}), int(content["rows"])
    except FileNotFoundError:
        return f"{folder / CONTENT} is missing (not completely built, or built by an older version)"
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        return f"{folder / CONTENT} is unreadable ({type(e).__name__}: {e})"
    now = time.time_ns()
    stamps, rehashed = {}, False
    for name, want in files.items():
        f = folder / name
        try:
            st = f.stat()
        except OSError:
            return f"{f} is missing"
        if st.st_size != want.get("size"):
            return f"{f} has {st.st_size} bytes, {want.get('size')} when it was built (truncated or overwritten)"
        stamps[name] = _stamp(st)
        if verified.get(name) == stamps[name]:
            continue
        try:
            got = hash_file(f)
        except OSError as e:
            return f"{f} is unreadable ({e})"
        if got != want.get("sha256"):
            return f"{f} is not what was built (its sha256 is {got[:16]}..., {str(want.get('sha256'))[:16]}... " \
                   f"when it was built): overwritten or corrupted"
        rehashed = True
    extra = sorted(set(p.relative_to(folder).as_posix() for p in _files(folder)) - set(files))
    if extra:
        return f"{folder / extra[0]} was not part of the store when it was built"
    if rehashed:  # verified in full: remember the stat, unless a file was written too recently to trust it
        if _settled(stamps, now):
            try:
                _write(folder / CONTENT, {"rows": rows, "files": files, "verified": stamps})
            except OSError:  # a read-only cache: verified again next time
                pass
    return None


def expected_rows(folder: str | Path) -> int:
    return int(json.loads((Path(folder) / CONTENT).read_text())["rows"])
