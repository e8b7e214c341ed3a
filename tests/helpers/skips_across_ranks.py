"""Run under torchrun (2 processes, gloo): each rank reads its own half of a data file through
a DataLoader with 2 worker processes, under on_bad_sample=skip, and writes what report() and
report(all_ranks=True) count to <out>/rank<r>.json. Usage: skips_across_ranks.py DATA IMAGES OUT"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

import stand_ins as testing
from llava_hydra.data.dataset import DataCollator, LazySupervisedDataset


def main(data: str, images: str, out: str) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    tok = testing.bpe_tokenizer(Path(out) / f"tok{rank}", vocab_size=300)
    ds = LazySupervisedDataset(data, tok, testing.clip_processor(), "v1", image_folder=images, num_image_tokens=4,
                               on_bad_sample="skip")
    half = len(ds) // world
    mine = list(range(rank * half, (rank + 1) * half))
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(ds, mine), batch_size=2, num_workers=2,
                                         collate_fn=DataCollator(tok.pad_token_id))
    rows = sum(len(batch["input_ids"]) for batch in loader)
    local = ds.report()
    joined = ds.report(all_ranks=True)
    Path(out, f"rank{rank}.json").write_text(json.dumps({
        "rows": rows, "main_process_seen": len(ds._seen), "local": local["skipped"], "all": joined["skipped"],
        "examples": joined["examples"], "by_reason": joined["by_reason"], "pid": os.getpid()}))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:4])
