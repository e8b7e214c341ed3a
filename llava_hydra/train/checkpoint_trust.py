"""Which checkpoints a run may trust, and what a failed checkpoint write says.

- ``nonfinite_problem``: a safetensors file whose tensors hold NaN or infinity is damaged (a
  run that went NaN, or a file overwritten); ``llava_hydra.train.checkpoints`` skips such a
  checkpoint under ``resume_from_checkpoint=auto`` with a warning naming the file and tensor, and
  refuses an explicit path to one. The scan reads every tensor once, one at a time (memory: twice
  the largest tensor), taking max(|x|) (NaN propagates through max, so it is finite iff every value
  is). Cost: the file read from disk plus ~1.5 GiB/s of CPU on one thread (measured, bf16); a
  projector's or adapter's milliseconds, a 7B model's 13.5 GB bf16 ``model.safetensors`` about
  10 s from the page cache, more from a cold network disk. Only safetensors files are scanned:
  pickled files (``optimizer.pt``, DeepSpeed's ``global_step*/*.pt``) are not opened here.
- The run's own list of what it wrote: after every checkpoint lands, rank 0 adds its name and
  the sha256 of its manifest to ``<run dir>/run.json`` (``checkpoints``). ``auto`` resumes only
  a ``checkpoint-N`` listed there with the same manifest: a directory planted in the run
  directory, copied from another run, or written by a run before this list existed is skipped
  with a warning and never opened (an explicit path is the user's own decision). The digest
  covers the manifest (every file's name and size), not the files' contents: hashing a 7B
  ZeRO-3 checkpoint (~80 GB of optimizer state) would cost minutes per save. So the list guards
  against directories this run did not write, not against someone who can rewrite the run's
  own files: that is the file system's permissions' job (README, Security).
- ``save_errors_named``: an OSError/RuntimeError while a checkpoint is written (a full disk
  makes torch's zip writer say ``unexpected pos``) becomes ``CheckpointWriteError`` naming
  ENOSPC and the free space when the disk is full (errno, message, or under 1 GiB / 1% free),
  else the error and the path; the staging directory is removed so the space comes back.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)

WRITTEN = "checkpoints"  # run.json's key: [{"name": "checkpoint-N", "manifest_sha256": ...}]
LOW_FREE = 1 << 30  # below this (or 1% of the disk) free, a failed write is called a full disk


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written (a full disk, named as such)."""


# -- non-finite weights ----------------------------------------------------------------------

def nonfinite_problem(f: str | os.PathLike) -> str | None:
    """``tensor 'x' holds NaN or infinite values`` for the first such tensor of a safetensors file, else None."""
    import torch
    from safetensors import safe_open

    with safe_open(str(f), framework="pt") as fh:
        for key in fh.keys():
            t = fh.get_tensor(key)
            if t.is_floating_point() and t.numel() and not torch.isfinite(t.abs().amax()):  # amax keeps NaN
                bad = int((~torch.isfinite(t)).sum())
                return f"tensor {key!r} holds {bad} NaN or infinite values of {t.numel()}"
    return None


# -- the run's list of the checkpoints it wrote ----------------------------------------------

def manifest_digest(checkpoint: str | os.PathLike, manifest: str) -> str | None:
    try:
        return hashlib.sha256((Path(checkpoint) / manifest).read_bytes()).hexdigest()
    except OSError:
        return None


def note_written(run_file: str | os.PathLike, checkpoint: str | os.PathLike, manifest: str) -> None:
    """Add ``checkpoint`` (just renamed into place) to run.json's list, dropping entries whose
    directory is gone (rotated); written to a temporary file and renamed."""
    run_file, checkpoint = Path(run_file), Path(checkpoint)
    try:
        record = json.loads(run_file.read_text())
    except (OSError, ValueError):
        record = {}
    entries = [e for e in record.get(WRITTEN, []) if e.get("name") != checkpoint.name
               and (run_file.parent / e.get("name", "")).is_dir()]
    entries.append({"name": checkpoint.name, "manifest_sha256": manifest_digest(checkpoint, manifest)})
    record[WRITTEN] = entries
    tmp = run_file.with_name(run_file.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(record, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, run_file)


def unlisted_problem(run_file: str | os.PathLike, checkpoint: str | os.PathLike, manifest: str) -> str | None:
    """Why ``checkpoint`` is not one this run wrote (by run.json's list), or None if it is."""
    run_file, checkpoint = Path(run_file), Path(checkpoint)
    try:
        entries = json.loads(run_file.read_text()).get(WRITTEN)
    except (OSError, ValueError):
        entries = None
    if entries is None:
        return (f"{run_file} does not list the checkpoints this run wrote (missing, or from a run before such "
                f"lists); pass the checkpoint's path as training.resume_from_checkpoint if you trust it")
    entry = next((e for e in entries if e.get("name") == checkpoint.name), None)
    if entry is None:
        return f"not written by this run ({run_file} does not list it); it is not opened"
    digest = manifest_digest(checkpoint, manifest)
    if digest is None:
        return None  # no manifest: damaged, which the manifest check reports (and never resumes)
    if entry.get("manifest_sha256") != digest:
        return f"its {manifest} is not the one this run wrote ({run_file} records another); it is not opened"
    return None


def listed_entries(checkpoint: str | os.PathLike, manifest: str) -> list[dict]:
    """run.json's list entry for a checkpoint being resumed (kept when run.json is rewritten)."""
    return [{"name": Path(checkpoint).name, "manifest_sha256": manifest_digest(checkpoint, manifest)}]


# -- a failed write --------------------------------------------------------------------------

def _errnos(e: BaseException) -> set:
    found = set()
    while e is not None:
        found.add(getattr(e, "errno", None))
        e = e.__cause__ or e.__context__
    return found


def _free_bytes(path: Path) -> tuple[int, int] | None:
    for p in [path, *path.parents]:
        if p.exists():
            try:
                usage = shutil.disk_usage(p)
            except OSError:
                return None
            return usage.free, usage.total
    return None


def describe_save_failure(e: BaseException, path: str | os.PathLike) -> str:
    path = Path(path)
    space = _free_bytes(path)
    free = f"{space[0] / 2**30:.2f} GiB free of {space[1] / 2**30:.1f} GiB" if space else "free space unknown"
    full = (bool(_errnos(e) & {errno.ENOSPC, errno.EDQUOT}) or "no space left" in str(e).lower()
            or (space is not None and (space[0] < LOW_FREE or space[0] < space[1] / 100)))
    if full:
        return (f"no space left on device (ENOSPC) while writing checkpoint {path}: {free} on its disk "
                f"({type(e).__name__}: {e}). The previous checkpoint is intact; free space, lower "
                f"training.save_total_limit or move training.output_dir, then resume with "
                f"training.resume_from_checkpoint=auto")
    return f"writing checkpoint {path} failed: {type(e).__name__}: {e} ({free} on its disk)"


@contextmanager
def save_errors_named(path: str | os.PathLike, staging: str | os.PathLike | None = None):
    """Around a checkpoint write: errors become ``CheckpointWriteError`` (see module docstring)."""
    try:
        yield
    except (OSError, RuntimeError) as e:
        if isinstance(e, CheckpointWriteError):
            raise
        message = describe_save_failure(e, path)  # before the staging files go: they hold the space
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        log.error(message)
        raise CheckpointWriteError(message) from e
