"""Run directories and the checkpoints in them: who owns them, whether they are whole, and
which spec they were written under.

A run directory holds one run. ``claim_run_dir`` (called before any weights load) takes a
lock on it (``fcntl.flock`` on ``.run.lock``: the kernel drops it when the process dies, so a
killed run never leaves it stuck), refuses a new run where another run left checkpoints or
its final output, and picks the checkpoint to resume from (``training.resume_from_checkpoint``:
a path, or ``auto``/``true``: the latest intact one).

Every checkpoint carries ``run_record.json`` (the run's id, the resolved spec it was written
under and the sum of the training losses so far) and, written last and renamed into place
with it, ``checkpoint_manifest.json`` (every file with its size). A checkpoint is intact when
its manifest is there and every file it lists has that size (safetensors files also have a
readable header). Resuming under a spec that differs outside the run's bookkeeping keys
(``RESUMABLE_CHANGES``) is refused with the keys named unless
``training.resume_allow_spec_change=true``.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import socket
import struct
import time
import uuid
from pathlib import Path

from llava_hydra.train.checkpoint_trust import listed_entries, nonfinite_problem, unlisted_problem

log = logging.getLogger(__name__)

MANIFEST = "checkpoint_manifest.json"
RUN_RECORD = "run_record.json"
RUN_FILE = "run.json"  # <run dir>/run.json: the id of the run that owns the directory
LOCK_FILE = ".run.lock"
STAGING_DIR = ".checkpoint-staging"
# what a finished run leaves in its run directory (besides checkpoint-N/)
FINAL_OUTPUTS = ("mm_projector.safetensors", "model.safetensors", "model.safetensors.index.json",
                 "adapter_model.safetensors", "metrics.json")
# keys that may change when a run is resumed: where it writes, how often it saves/logs, what it
# reports; everything else (model, data, stage, LoRA, DeepSpeed, optimizer, schedule, seeds) must match
RESUMABLE_CHANGES = ("run_dir", "data.preset_path", "paths.", "eval.", "launcher.", "tracking.", "training.output_dir",
                     "training.resume_from_checkpoint", "training.resume_allow_spec_change",
                     "training.overwrite_output_dir", "training.save_steps",
                     "training.save_total_limit", "training.save_on_each_node", "training.save_strategy", "training.logging_steps",
                     "training.report_to", "training.run_name", "training.disable_tqdm",
                     "training.dataloader_num_workers", "training.per_device_eval_batch_size",
                     "training.eval_strategy", "training.save_every_minutes", "training.checkpoint_on_signals",
                     "training.on_nonfinite")
HOW_TO_RESUME = "training.resume_from_checkpoint=auto"


class RunDirError(RuntimeError):
    """A run directory that this run may not use as asked."""


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be resumed (damaged, or written under another spec)."""


# -- manifest --------------------------------------------------------------------------------

def write_checkpoint_record(path: str | os.PathLike, run_id: str | None, spec: dict | None,
                            train_loss_sum: float, data: dict | None = None) -> None:
    """Write run_record.json (with ``data``: the data files' digests, train.data_tie), then the
    manifest of every file in the checkpoint (sizes), each flushed to disk; called on the staging
    directory before it is renamed into place."""
    path = Path(path)
    _write_json(path / RUN_RECORD, {"run_id": run_id, "spec": spec, "train_loss_sum": train_loss_sum,
                                    **({"data": data} if data else {})})
    files = {}
    for f in sorted(path.rglob("*")):
        if f.is_file() and f.name != MANIFEST:
            files[f.relative_to(path).as_posix()] = f.stat().st_size
    _write_json(path / MANIFEST, {"format": 1, "files": files})


def _write_json(path: Path, obj) -> None:
    with open(path, "w") as f:
        json.dump(obj, f, indent=1, default=str)
        f.flush()
        os.fsync(f.fileno())


def checkpoint_problem(path: str | os.PathLike) -> str | None:
    """Why ``path`` cannot be resumed (naming the file), or None if it is intact."""
    path = Path(path)
    if not path.is_dir():
        return f"{path} is not a directory"
    try:
        files = json.loads((path / MANIFEST).read_text())["files"]
    except FileNotFoundError:
        return f"{path / MANIFEST} is missing (the checkpoint was not completely written)"
    except (ValueError, KeyError) as e:
        return f"{path / MANIFEST} is unreadable ({e})"
    for name, size in files.items():
        f = path / name
        if not f.is_file():
            return f"{f} is missing"
        if f.stat().st_size != size:
            return f"{f} has {f.stat().st_size} bytes, the manifest says {size} (truncated or overwritten)"
        if f.suffix == ".safetensors" and (bad := _safetensors_problem(f)):
            return f"{f}: {bad}"
    for name in files:  # after the cheap checks: reads the weights (llava_hydra.train.checkpoint_trust)
        if name.endswith(".safetensors") and (bad := nonfinite_problem(path / name)):
            return f"{path / name}: {bad}"
    return None


def _safetensors_problem(f: Path) -> str | None:
    size = f.stat().st_size
    with open(f, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            return "no safetensors header"
        (n,) = struct.unpack("<Q", head)
        if 8 + n > size:
            return "safetensors header runs past the end of the file"
        try:
            header = json.loads(fh.read(n))
        except ValueError:
            return "unreadable safetensors header"
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    return None if 8 + n + end == size else f"tensors end at byte {8 + n + end}, the file has {size}"


def read_record(path: str | os.PathLike) -> dict:
    p = Path(path) / RUN_RECORD
    return json.loads(p.read_text()) if p.is_file() else {}


# -- choosing the checkpoint to resume -------------------------------------------------------

def numbered_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """checkpoint-N directories of a run directory, latest first."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = [(int(p.name.split("-", 1)[1]), p) for p in run_dir.iterdir()
             if p.name.startswith("checkpoint-") and p.name.split("-", 1)[1].isdigit() and p.is_dir()]
    return [p for _, p in sorted(found, reverse=True)]


def wants_resume(request) -> bool:
    return request is not None and request is not False and str(request).lower() not in ("false", "none", "null", "")


def find_resume_checkpoint(run_dir: str | os.PathLike, request) -> str | None:
    """``training.resume_from_checkpoint``: a path (an error if it is not an intact checkpoint),
    true/auto (the latest intact checkpoint in the run directory, skipping damaged ones with a
    warning that names the file; an error if all are damaged) or false/null."""
    if not wants_resume(request):
        return None
    if str(request).lower() not in ("true", "auto"):
        if problem := checkpoint_problem(request):
            raise CheckpointError(f"training.resume_from_checkpoint={request}: cannot resume: {problem}")
        return str(request)
    damaged = []
    for path in numbered_checkpoints(run_dir):
        if unlisted := unlisted_problem(Path(run_dir) / RUN_FILE, path, MANIFEST):  # never opened
            log.warning("skipping checkpoint %s: %s", path, unlisted)
            continue
        if problem := checkpoint_problem(path):
            log.warning("skipping damaged checkpoint %s: %s", path, problem)
            damaged.append(problem)
            continue
        log.info("resuming from %s", path)
        return str(path)
    if damaged:
        raise CheckpointError(
            f"training.resume_from_checkpoint={request}: every checkpoint in {run_dir} is damaged:\n  "
            + "\n  ".join(damaged) + "\nstart this run over with training.overwrite_output_dir=true, or move it aside")
    log.info("resume_from_checkpoint=%s: no checkpoint in %s, starting from scratch", request, run_dir)
    return None


# -- the spec a checkpoint was written under -------------------------------------------------

def flatten(node, prefix: str = "") -> dict[str, object]:
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out if out or not prefix else {prefix[:-1]: {}}
    return {prefix[:-1]: node}


def spec_differences(saved: dict, current: dict) -> list[str]:
    """``key: saved -> current`` for every key outside RESUMABLE_CHANGES that differs."""
    a, b = flatten(saved), flatten(current)
    diffs = []
    for key in sorted(a.keys() | b.keys()):
        if any(key == r or (r.endswith(".") and key.startswith(r)) for r in RESUMABLE_CHANGES):
            continue
        if a.get(key, "<unset>") != b.get(key, "<unset>"):
            diffs.append(f"{key}: {a.get(key, '<unset>')!r} -> {b.get(key, '<unset>')!r}")
    return diffs


def check_resume_spec(checkpoint: str, spec: dict, allow_change: bool) -> None:
    saved = read_record(checkpoint).get("spec")
    if saved is None:
        raise CheckpointError(f"{checkpoint} records no spec ({RUN_RECORD}); resume it with "
                              f"training.resume_allow_spec_change=true if you know it was written under this one")
    diffs = spec_differences(saved, spec)
    if not diffs:
        return
    listing = "\n  ".join(diffs)
    if allow_change:
        log.warning("resuming %s under a changed spec (training.resume_allow_spec_change=true):\n  %s",
                    checkpoint, listing)
        return
    raise CheckpointError(
        f"{checkpoint} was written under another spec; resuming it under this one would continue a different "
        f"run. Differing keys (checkpoint -> now):\n  {listing}\nrun with the checkpoint's values, start a new run "
        f"in another training.output_dir, or force it with training.resume_allow_spec_change=true")


# -- the run directory -----------------------------------------------------------------------

_held_locks: dict[str, int] = {}


def lock_run_dir(run_dir: str | os.PathLike) -> None:
    """Hold an exclusive flock on <run dir>/.run.lock until this process ends or starts its next
    run (runs in one process, such as a sweep's jobs, are sequential: the earlier run's lock goes).
    Refused while another process holds it."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    key = str(run_dir.resolve())
    while _held_locks:
        os.close(_held_locks.popitem()[1])
    fd = os.open(run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "unknown process"
        os.close(fd)
        raise RunDirError(f"{run_dir} is in use by another run ({holder}); wait for it to finish, or start "
                          f"this run elsewhere (training.output_dir=... or paths.output_root=...)") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n"
              .encode(), 0)
    _held_locks[key] = fd


def existing_run(run_dir: str | os.PathLike) -> list[str]:
    """What an earlier run left in ``run_dir``: its checkpoints and final outputs."""
    run_dir = Path(run_dir)
    found = [p.name for p in reversed(numbered_checkpoints(run_dir))]
    found += [name for name in FINAL_OUTPUTS if (run_dir / name).exists()]
    return found


def claim_run_dir(run_dir: str, spec: dict, request, *, is_main: bool, overwrite: bool = False,
                  allow_spec_change: bool = False, record: bool = True) -> tuple[str | None, str]:
    """Make ``run_dir`` this run's, before anything heavy: lock it (main process), refuse it if
    another run's checkpoints or outputs are there and this run does not resume them, and pick
    the checkpoint to resume (spec-checked). Returns (checkpoint or None, run id). ``record=False``:
    run.json is left to the caller (``record_run``; several nodes agree on the run first: train.nodes)."""
    if is_main:
        lock_run_dir(run_dir)
    left = existing_run(run_dir)
    owner = _read_run_file(run_dir) or next((read_record(p) for p in numbered_checkpoints(run_dir)), {})
    if left and overwrite:
        if is_main:
            log.warning("training.overwrite_output_dir=true: deleting the earlier run's %s in %s",
                        ", ".join(left), run_dir)
            for name in [*left, STAGING_DIR, RUN_FILE]:
                p = Path(run_dir) / name
                shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
        left, owner = [], {}
    checkpoint = find_resume_checkpoint(run_dir, request) if wants_resume(request) else None
    inside = checkpoint is not None and Path(checkpoint).resolve().parent == Path(run_dir).resolve()
    if left and not inside:
        shown = ", ".join(left if len(left) <= 6 else [*left[:3], "...", *left[-2:]])
        who = ""
        if owner.get("run_id"):
            who = f" (run {owner['run_id']}" + (f", started {owner['started']}" if owner.get("started") else "") + ")"
        why = ("it has no intact checkpoint to resume" if wants_resume(request) and checkpoint is None
               else "this run would write its checkpoints among them" if checkpoint
               else "a new run would overwrite or rotate them away")
        raise RunDirError(
            f"{run_dir} already holds another run{who}: {shown}; {why}.\n"
            f"  continue that run:         add {HOW_TO_RESUME}\n"
            f"  start a new run elsewhere: add training.output_dir=<new dir> (or paths.output_root=<new root>)\n"
            f"  replace it (deletes its checkpoints and outputs): add training.overwrite_output_dir=true")
    if checkpoint is not None:
        check_resume_spec(checkpoint, spec, allow_spec_change)
        run_id = read_record(checkpoint).get("run_id") or owner.get("run_id") or _new_run_id()
    else:
        run_id = _new_run_id()
    if is_main and record:
        record_run(run_dir, run_id, checkpoint)
    return checkpoint, run_id


def record_run(run_dir: str, run_id: str, checkpoint: str | None) -> None:
    """Write run.json naming ``run_id`` (with the resumed checkpoint as its list when it is in
    ``run_dir``), unless it or the latest checkpoint already names that run."""
    owner = _read_run_file(run_dir) or next((read_record(p) for p in numbered_checkpoints(run_dir)), {})
    inside = checkpoint is not None and Path(checkpoint).resolve().parent == Path(run_dir).resolve()
    if not owner or owner.get("run_id") != run_id:
        _write_json(Path(run_dir) / RUN_FILE, {"run_id": run_id, "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                                               "checkpoints": listed_entries(checkpoint, MANIFEST) if inside else []})


def _new_run_id() -> str:
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}"


def _read_run_file(run_dir) -> dict:
    try:
        return json.loads((Path(run_dir) / RUN_FILE).read_text())
    except (FileNotFoundError, ValueError):
        return {}
