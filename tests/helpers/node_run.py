"""One rank of a two-node test: run the embedded default with the given overrides (as
``python -m llava_hydra`` does: compose, then the runner) and append, for every optimizer step
this rank takes, a line ``{"rank", "node", "step", "ids"}`` to ``$STEPS_OUT/rank<R>.jsonl``: a
digest of the micro-batch's token ids, so two runs' per-rank sample order can be compared.

``KILL_AT_STEP=N`` with ``KILL_NODE=K``: node K's process SIGKILLs itself once step N is done (a
node failure); ``RAISE_AT_STEP=N`` with ``RAISE_NODE=K``: it raises instead; ``STEP_SLEEP=S``: every
step waits S seconds first (time for a test to signal a node mid-run)."""

import hashlib
import json
import os
import signal
import sys
import time
from pathlib import Path

from hydra import compose, initialize_config_module

from llava_hydra.commands.runner import run
from llava_hydra.config.distributed import end_process_group, failure_reported_to_launcher
from llava_hydra.config.schema import register_configs
from llava_hydra.train.trainer import LLaVATrainer

NODE, RANK = int(os.environ.get("GROUP_RANK", "0")), int(os.environ.get("RANK", "0"))
kill_at = int(os.environ.get("KILL_AT_STEP", "0")) if int(os.environ.get("KILL_NODE", "-1")) == NODE else 0
raise_at = int(os.environ.get("RAISE_AT_STEP", "0")) if int(os.environ.get("RAISE_NODE", "-1")) == NODE else 0
steps_out = os.environ.get("STEPS_OUT")
step_sleep = float(os.environ.get("STEP_SLEEP", "0"))
original = LLaVATrainer.training_step


def training_step(self, model, inputs, *args, **kwargs):
    step = self.state.global_step
    if kill_at and step == kill_at:  # step N is done (and saved, if it was a save step)
        os.kill(os.getpid(), signal.SIGKILL)
    if raise_at and step == raise_at:
        Path(steps_out or ".", "raised_at").write_text(str(time.time()))
        raise RuntimeError(f"node {NODE} raised at step {step} on purpose")
    time.sleep(step_sleep)  # time for a test to signal a node mid-run
    if steps_out:
        digest = hashlib.sha256(inputs["input_ids"].cpu().numpy().tobytes()).hexdigest()[:16]
        with open(Path(steps_out) / f"rank{RANK}.jsonl", "a") as f:
            f.write(json.dumps({"rank": RANK, "node": NODE, "step": step + 1, "ids": digest}) + "\n")
    return original(self, model, inputs, *args, **kwargs)


LLaVATrainer.training_step = training_step
register_configs()
with initialize_config_module("llava_hydra.conf", version_base="1.3"):
    spec = compose("config", overrides=sys.argv[1:])
try:
    with failure_reported_to_launcher():
        run(spec)
finally:
    end_process_group()
