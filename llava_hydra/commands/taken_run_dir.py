"""A run directory another run has left, answered before torch is imported.

``python -m llava_hydra`` calls ``run_dir_verdict`` right after the spec's check: where
``training.output_dir`` holds another run's checkpoints or final outputs it answers in a few lines,
offering only the ways out that will work:

- continue it (``training.resume_from_checkpoint=auto``): offered only when the directory holds an
  intact checkpoint written under this spec and the run has not finished;
- a new run beside it (``training.output_dir=<a free directory>``), named concretely;
- replace it (``training.overwrite_output_dir=true``).

``resume_from_checkpoint=auto`` on a finished run (``metrics.json`` written) says so and exits 0,
leaving its metrics alone; on a checkpoint written under another spec it names the differing keys.
Reads only files (``llava_hydra.train.checkpoints``' stdlib helpers), so it answers in a second.
The runner's own claim (lock, the same checks) still runs: this is the early, quiet copy of it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from llava_hydra.train.checkpoints import (HOW_TO_RESUME, RUN_FILE, CheckpointError, check_resume_spec,
                                           existing_run, find_resume_checkpoint, read_record, wants_resume)


def free_dir(taken: Path) -> Path:
    """``<taken>-2`` (``-3``, ...): the first sibling that does not exist."""
    n = 2
    while taken.with_name(f"{taken.name}-{n}").exists():
        n += 1
    return taken.with_name(f"{taken.name}-{n}")


def _finished(out: Path) -> str | None:
    """``metrics.json``'s summary when the run in ``out`` finished, else None."""
    try:
        metrics = json.loads((out / "metrics.json").read_text())
    except (FileNotFoundError, ValueError):
        return None
    keys = ("train_steps", "train_loss", "eval_accuracy", "wall_time_s")
    return ", ".join(f"{k} {metrics[k]:.4g}" if isinstance(metrics[k], float) else f"{k} {metrics[k]}"
                     for k in keys if k in metrics)


def _latest(out: Path):
    """The latest intact checkpoint in ``out`` (None if none); quietly: nothing is resumed here."""
    quiet = logging.getLogger("llava_hydra.train.checkpoints")
    level, quiet.level = quiet.level, logging.ERROR
    try:
        return find_resume_checkpoint(out, "auto")
    except CheckpointError:
        return None  # every checkpoint damaged
    finally:
        quiet.setLevel(level)


def _owner(out: Path, checkpoint) -> str:
    """`` (run <id>, started <time>)`` from run.json or the checkpoint's record, else ""."""
    try:
        owner = json.loads((out / RUN_FILE).read_text())
    except (FileNotFoundError, ValueError):
        owner = read_record(checkpoint) if checkpoint else {}
    if not owner.get("run_id"):
        return ""
    return f" (run {owner['run_id']}" + (f", started {owner['started']}" if owner.get("started") else "") + ")"


def run_dir_verdict(cfg: DictConfig, request) -> tuple[int, str] | None:
    """(exit status, message) when this run cannot start in ``training.output_dir`` as asked (status 0:
    nothing to do: the run it asks to resume has finished); None when it may start (or resume)."""
    out = Path(str(cfg.training.output_dir))
    left = existing_run(out)
    if not left or cfg.training.overwrite_output_dir:
        return None
    finished = _finished(out)
    spec = OmegaConf.to_container(cfg, resolve=True)
    if wants_resume(request):
        explicit = str(request).lower() not in ("auto", "true")
        if finished is not None and not explicit:
            return 0, (f"{out}: that run has finished ({finished}); nothing to resume, metrics.json left as it is. "
                       f"A new run beside it: training.output_dir={free_dir(out)}")
        checkpoint = None if explicit else _latest(out)
        if checkpoint is not None and not cfg.training.resume_allow_spec_change:
            try:
                check_resume_spec(checkpoint, spec, False)
            except CheckpointError as e:
                return 1, f"{e}".replace("another training.output_dir", f"training.output_dir={free_dir(out)}")
        return None  # the runner resumes (or names what is wrong with an explicit checkpoint)
    checkpoint = _latest(out)
    resumable = checkpoint is not None and finished is None
    why_not = ""
    if resumable:
        try:
            check_resume_spec(checkpoint, spec, cfg.training.resume_allow_spec_change)
        except CheckpointError as e:
            resumable = False
            keys = [line.strip().split(":", 1)[0] for line in str(e).splitlines() if line.startswith("  ")]
            shown_keys = ", ".join(keys[:6]) + (", ..." if len(keys) > 6 else "")
            why_not = (f" (continuing it is refused: this spec differs from it in {len(keys)} "
                       f"key{'s' * (len(keys) != 1)}: {shown_keys})" if keys else f" ({str(e).splitlines()[0]})")
    shown = ", ".join(left if len(left) <= 4 else [*left[:2], "...", *left[-2:]])
    owner = _owner(out, checkpoint)
    state = f"a finished run{owner} ({finished})" if finished is not None else f"another run{owner}: {shown}"
    ways = [f"  continue it:           add {HOW_TO_RESUME}"] if resumable else []
    ways += [f"  a new run beside it:   add training.output_dir={free_dir(out)}",
             "  replace it (deletes its checkpoints and outputs): add training.overwrite_output_dir=true"]
    return 1, f"{out} already holds {state}{why_not}.\n" + "\n".join(ways)
