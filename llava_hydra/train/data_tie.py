"""What ties a run's checkpoints and steps to its data: the data's content digest recorded in
every checkpoint and checked on resume, and the epoch handed to the dataset (whose ``skip``
substitutes are drawn per epoch).

Every checkpoint's ``run_record.json`` carries ``data``: for the training file and, when the run
evaluates, the held-out file, its path and the sha256 of the bytes the dataset was built from
(``LazySupervisedDataset.data_digest``; images are not hashed: a changed image file is not
seen). Resuming a checkpoint whose recorded digest differs from the data now is refused with the
changed file named, unless ``training.resume_allow_spec_change=true`` (then a warning). It is
checked twice: before the model loads, from the files' digests (``store.file_digest``,
remembered per file version, so cheap after the first run), and after the datasets are built,
from the digests of the bytes they were built from. A checkpoint written before digests were
recorded resumes with a warning that its data cannot be checked.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

from transformers import TrainerCallback

from llava_hydra.train.checkpoints import CheckpointError, read_record

log = logging.getLogger(__name__)

ROLES = {"train": "training data file", "eval": "held-out eval data file"}


def data_record(**datasets) -> dict[str, dict]:
    """{role: {"path", "sha256"}} of the datasets given by role (None ones left out); a mixture
    (data.mixture_dataset.MixtureDataset) gives one entry per source, ``<role>/<source name>``."""
    out = {}
    for role, ds in datasets.items():
        if ds is None:
            continue
        parts = zip([f"{role}/{n}" for n in ds.names], ds.datasets) if hasattr(ds, "datasets") else [(role, ds)]
        out.update({key: {"path": str(Path(part.data_path).resolve()), "sha256": part.data_digest}
                    for key, part in parts})
    return out


def file_record(cache_dir, **paths) -> dict[str, dict]:
    """The same from the files themselves (their digest remembered per file version under cache_dir)."""
    from llava_hydra.data.store import file_digest

    return {role: {"path": str(Path(p).resolve()), "sha256": file_digest(p, cache_dir)}
            for role, p in paths.items() if p}


def data_changes(saved: dict, current: dict) -> list[str]:
    """One line per data file whose content differs from the checkpoint's record."""
    out = []
    for role in sorted(saved.keys() & current.keys()):
        was, now = saved[role], current[role]
        if was.get("sha256") != now.get("sha256"):
            moved = "" if was.get("path") == now.get("path") else f" (then {was.get('path')})"
            out.append(f"{ROLES.get(role, role)} {now['path']}{moved} changed since the checkpoint was written "
                       f"(sha256 {str(was.get('sha256'))[:16]}... then, {str(now.get('sha256'))[:16]}... now)")
    return out


def check_resume_data(checkpoint: str | None, current: dict, allow_change: bool) -> None:
    """Refuse to resume ``checkpoint`` on data other than it was trained on (CheckpointError naming
    the changed file); with ``allow_change`` only warn."""
    if checkpoint is None:
        return
    saved = read_record(checkpoint).get("data")
    if not saved:
        log.warning("%s records no data digest (written by an older version): the data it was trained on "
                    "cannot be checked", checkpoint)
        return
    changes = data_changes(saved, current)
    if not changes:
        return
    listing = "\n  ".join(changes)
    if allow_change:
        log.warning("resuming %s on changed data (training.resume_allow_spec_change=true):\n  %s", checkpoint, listing)
        return
    raise CheckpointError(
        f"{checkpoint} was trained on other data; resuming it would continue the run on different samples:\n  "
        f"{listing}\nput the data back, start a new run in another training.output_dir, or force it with "
        f"training.resume_allow_spec_change=true")


class EpochToDataset(TrainerCallback):
    """Hands the epoch to the dataset at the start of each epoch (before its DataLoader workers
    start), so its ``skip`` substitutes are drawn per epoch. ``state.epoch`` is the epoch count
    so far (fractional in a resumed epoch): its floor is the epoch about to run."""

    def __init__(self, dataset):
        self.dataset = dataset

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.dataset.set_epoch(math.floor((state.epoch or 0) + 1e-9))
