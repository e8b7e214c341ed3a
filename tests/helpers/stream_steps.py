"""run_and_die.py for a streamed run: the same (KILL_AT_STEP=N kills the process after step N),
and each micro-batch's sample indices (the records' indices in the source file) are logged with
the rank and step to STEP_LOG/steps-<rank>.jsonl, and every sample a DataLoader worker reads to
STEP_LOG/read-<pid>.txt, so a test can compare steps across runs and see what a resumed run read."""

import json
import os
import runpy
from pathlib import Path

import torch

from llava_hydra.data.dataset import DataCollator
from llava_hydra.data.stream import ShardStream
from llava_hydra.sampling.packing import PackedCollator
from llava_hydra.train.trainer import LLaVATrainer

log_dir = Path(os.environ["STEP_LOG"])
log_dir.mkdir(parents=True, exist_ok=True)
collate, encode, step = DataCollator.__call__, ShardStream.encode, LLaVATrainer.training_step


def collate_with_indices(self, samples):
    return {**collate(self, samples), "sample_index": torch.tensor([s.get("index", -1) for s in samples])}


packed_collate = PackedCollator.__call__


def packed_with_indices(self, rows):  # a packed stream's rows carry their samples' keys (sampling.packed_stream)
    return {**packed_collate(self, rows), "sample_index": torch.cat([r["index"] for r in rows])}


def encode_logged(self, item):
    with open(log_dir / f"read-{os.getpid()}.txt", "a") as f:
        f.write(f"{item[1]}\n")
    return encode(self, item)


def training_step(self, model, inputs, *args, **kwargs):
    rank = int(os.environ.get("RANK", 0))
    with open(log_dir / f"steps-{rank}.jsonl", "a") as f:
        f.write(json.dumps([self.state.global_step + 1, inputs.pop("sample_index").tolist()]) + "\n")
    return step(self, model, inputs, *args, **kwargs)


DataCollator.__call__, ShardStream.encode, LLaVATrainer.training_step = collate_with_indices, encode_logged, training_step
PackedCollator.__call__ = packed_with_indices
runpy.run_path(str(Path(__file__).parent / "run_and_die.py"), run_name="__main__")
