"""Two "nodes" on this machine: two torchrun launches with ``--nnodes 2 --nproc_per_node 1``, one
rendezvous on a free localhost port, each started in its own session so a test can stop one
node (SIGKILL, SIGTERM) as a node failure or a preemption would. ``static``: README's command
(``--node_rank R --master_addr --master_port``: node R's process is global rank R); ``c10d``:
``--rdzv_backend c10d`` (the rendezvous numbers the nodes in the order it sorts them)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from launching import free_port

NODE_RUN = Path(__file__).parent / "node_run.py"


@dataclass
class Node:
    returncode: int
    stdout: str
    stderr: str
    ended: float  # time.time() when the launch exited


def launch(node_rank: int, port: int, args: list[str], log: Path, cwd: Path, env: dict, rdzv: str) -> subprocess.Popen:
    if rdzv == "static":
        where = [f"--node_rank={node_rank}", "--master_addr=127.0.0.1", f"--master_port={port}"]
    else:
        where = ["--rdzv_backend=c10d", f"--rdzv_endpoint=127.0.0.1:{port}", "--rdzv_id=two-nodes"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1", *where, *args]
    out, err = open(log.with_suffix(".out"), "w"), open(log.with_suffix(".err"), "w")
    return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=err, start_new_session=True)


def two_nodes(args: tuple[list[str], list[str]], tmp: Path, env: tuple[dict, dict] = ({}, {}), rdzv: str = "static",
              timeout: float = 600, on_started=None) -> list[Node]:
    """Run node 0 with ``args[0]`` and node 1 with ``args[1]`` (after the torchrun options: a script
    or ``-m module`` and its arguments) and wait for both. ``on_started(procs)`` runs once both
    launched (to signal one of them)."""
    base = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu"}
    base.setdefault("TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache" / "torch_extensions"))
    port, logs = free_port(), [tmp / f"node{r}-{time.monotonic_ns()}" for r in (0, 1)]
    procs = [launch(r, port, args[r], logs[r], tmp, {**base, **env[r]}, rdzv) for r in (0, 1)]
    ended = [0.0, 0.0]
    try:
        if on_started is not None:
            on_started(procs)
        deadline = time.time() + timeout
        while any(p.poll() is None for p in procs) and time.time() < deadline:
            for r, p in enumerate(procs):
                if p.poll() is not None and not ended[r]:
                    ended[r] = time.time()
            time.sleep(0.2)
    finally:
        for p in procs:
            if p.poll() is None:  # a hung node: stop its whole session, then report it
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
    return [Node(p.returncode, logs[r].with_suffix(".out").read_text(), logs[r].with_suffix(".err").read_text(),
                 ended[r] or time.time()) for r, p in enumerate(procs)]
