"""Several nodes: which process of which node writes what into the run directory, and the check
that every process starts, or resumes, the same run at the same step.

Two layouts of ``training.output_dir`` (README "Several nodes: shared or node-local run directory"):

- shared (``training.save_on_each_node=false``, the default): one directory every node sees (NFS,
  Lustre, GPFS, ...). Global rank 0 holds the run lock, writes ``run.json``, each checkpoint's
  shared files and the final model; every rank adds its own per-rank files (``rng_state_<rank>.pth``,
  ZeRO partitions) to the checkpoint being staged, which rank 0 then renames into place.
- node-local (``training.save_on_each_node=true``, Hugging Face's own field): each node has its own
  directory at the same path. Each node's local rank 0 locks its copy and writes its ``run.json``,
  checkpoints (with its node's per-rank files; DeepSpeed's ``use_node_local_storage``) and the final
  model.

``agree_on_run`` runs on every rank right after the run directory is claimed: every rank takes rank
0's run id (a new run's id is drawn on rank 0 only), a shared directory must show every rank rank 0's
``run.json`` (else the directory is node-local and the error says so), and every rank must have
chosen the same checkpoint to resume: a node whose directory lacks it stops the run on every node
with a message naming each node's choice, never a silent restart from step 0 on that node.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from llava_hydra.train.checkpoints import RUN_FILE, CheckpointError, RunDirError, claim_run_dir, record_run

SHARED_DIR_WAIT_S = 30.0  # how long a node waits to see rank 0's run.json (NFS caches directory listings)
LOCAL_LAYOUT = "training.save_on_each_node=true"


@dataclass(frozen=True)
class Roles:
    """What one process writes into the run directory."""

    locks: bool  # holds <run dir>/.run.lock and writes run.json
    saves: bool  # writes checkpoints' shared files (weights, optimizer, trainer state, record, manifest) and the final model


def roles(save_on_each_node: bool, rank: int, local_rank: int) -> Roles:
    """Shared directory: global rank 0 locks and saves. Node-local: each node's local rank 0 does."""
    writer = local_rank == 0 if save_on_each_node else rank == 0
    return Roles(locks=writer, saves=writer)


def this_process() -> tuple[int, int]:
    """(global rank, local rank) from the launcher's environment (0, 0 when not launched)."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))


def node_of_this_process() -> int:
    """This process's node (torchrun's ``GROUP_RANK``; else rank // processes per node)."""
    if "GROUP_RANK" in os.environ:
        return int(os.environ["GROUP_RANK"])
    per_node = int(os.environ.get("LOCAL_WORLD_SIZE", "1")) or 1
    return int(os.environ.get("RANK", "0")) // per_node


def _seen_run_id(run_dir: Path, wanted: str, wait_s: float) -> str | None:
    """The run id in ``run_dir``/run.json, waiting up to ``wait_s`` for it to be ``wanted``."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            seen = json.loads((run_dir / RUN_FILE).read_text()).get("run_id")
        except (FileNotFoundError, ValueError):
            seen = None
        if seen == wanted or time.monotonic() >= deadline:
            return seen
        time.sleep(0.5)


def disagreement(reports: list[dict], save_on_each_node: bool) -> str | None:
    """Why the ranks' ``reports`` (one per rank, rank order: node, host, run_dir, resume, seen_run_id,
    run_id) cannot run as one run, or None. Rank 0's run id and checkpoint are the run's."""
    first = reports[0]
    if not save_on_each_node:
        blind = [r for r in reports if r["seen_run_id"] != first["run_id"]]
        if blind:
            who = ", ".join(f"node {r['node']} ({r['host']}: {r['run_dir']})" for r in blind)
            return (f"training.output_dir is not one directory shared by every node: {who} does not see rank 0's "
                    f"{RUN_FILE} (run {first['run_id']}, node {first['node']} ({first['host']}): {first['run_dir']}). "
                    f"Checkpoints would be written on node {first['node']} only and could not be resumed. Put the "
                    f"run directory on a filesystem every node mounts, or give each node its own with "
                    f"{LOCAL_LAYOUT} (each node then writes its own copy)")
    choices = {r["resume"] for r in reports}
    if len(choices) > 1:
        lines = "\n  ".join(f"node {r['node']} rank {r['rank']} ({r['host']}): "
                            f"{r['resume'] or 'no intact checkpoint'} in {r['run_dir']}" for r in reports)
        named = sorted(c for c in choices if c)
        return (f"the nodes would resume from different checkpoints (a node whose run directory lacks the "
                f"checkpoint would start again from step 0):\n  {lines}\n"
                f"make the same checkpoint present on every node (copy {named[-1] if named else 'it'} into each "
                f"node's run directory), or name one every node has: training.resume_from_checkpoint=<run dir>/"
                f"checkpoint-N")
    return None


def claim_on_every_node(run_dir: str, spec: dict, request, *, save_on_each_node: bool, overwrite: bool,
                        allow_spec_change: bool) -> tuple[str | None, str]:
    """``claim_run_dir`` on every rank, the lock and run.json by this layout's writers (``roles``), then
    ``agree_on_run``: a rank that cannot claim its directory stops every rank with its message."""
    rank, local_rank = this_process()
    mine = roles(save_on_each_node, rank, local_rank)
    try:  # node-local copies write run.json once the nodes agree (a failed start must not rewrite it)
        resume, run_id = claim_run_dir(run_dir, spec, request, is_main=mine.locks, overwrite=overwrite,
                                       allow_spec_change=allow_spec_change, record=not save_on_each_node)
    except (RunDirError, CheckpointError) as e:
        return agree_on_run(run_dir, None, None, save_on_each_node, error=e)
    resume, run_id = agree_on_run(run_dir, resume, run_id, save_on_each_node)
    if save_on_each_node and mine.locks:
        record_run(run_dir, run_id, resume)
    return resume, run_id


def agree_on_run(run_dir: str, resume: str | None, run_id: str | None, save_on_each_node: bool,
                 error: Exception | None = None) -> tuple[str | None, str]:
    """Every rank: check that all ranks run one run from one step (``disagreement``) and return
    (checkpoint to resume, rank 0's run id); ``error``: this rank could not claim its directory, which
    every rank raises. One process: returned as given."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() <= 1:
        if error is not None:
            raise error
        return resume, run_id
    rank = dist.get_rank()
    ids: list = [run_id]
    dist.broadcast_object_list(ids, src=0)  # after rank 0 wrote run.json (claim_run_dir)
    if error is not None or ids[0] is None:
        seen = None
    elif rank == 0 or save_on_each_node:
        seen = ids[0]
    else:
        seen = _seen_run_id(Path(run_dir), ids[0], SHARED_DIR_WAIT_S)
    mine = {"rank": rank, "node": node_of_this_process(), "host": socket.gethostname(),
            "run_dir": str(Path(run_dir).resolve()), "resume": Path(resume).name if resume else None,
            "seen_run_id": seen, "run_id": ids[0], "error": None if error is None else str(error)}
    reports: list = [None] * dist.get_world_size()
    dist.all_gather_object(reports, mine)
    failed = [r for r in reports if r["error"]]
    if failed:
        first = failed[0]
        hint = (f"\n(with {LOCAL_LAYOUT} each node locks its own training.output_dir: if the nodes share one "
                f"directory, leave training.save_on_each_node=false)"
                if save_on_each_node and "in use by another run" in first["error"] else "")
        if error is not None:
            raise type(error)(f"{error}{hint}") from None
        raise RunDirError(f"node {first['node']} rank {first['rank']} ({first['host']}) cannot use its run "
                          f"directory:\n{first['error']}{hint}")
    if problem := disagreement(reports, save_on_each_node):
        raise CheckpointError(problem)
    return resume, ids[0]


def write_on_every_node(model) -> None:
    """Under ``save_on_each_node``: let each node's writer save the model. transformers 5's
    ``save_pretrained`` writes on global rank 0 only, whatever ``is_main_process`` says
    (``should_save_on_this_rank``), so node 1's checkpoints would hold no weights and could not resume."""
    for module in model.modules():
        if hasattr(module, "should_save_on_this_rank"):
            module.should_save_on_this_rank = lambda is_main_process: is_main_process


def complete_node_copy(checkpoint: str) -> None:
    """A DeepSpeed checkpoint staged on a node-local writer other than rank 0: add the ``latest`` file
    (its tag) that DeepSpeed writes on global rank 0 only, without which that node could not resume it."""
    tags = [p.name for p in Path(checkpoint).glob("global_step*") if p.is_dir()]
    latest = Path(checkpoint) / "latest"
    if len(tags) == 1 and not latest.exists():
        latest.write_text(tags[0])
