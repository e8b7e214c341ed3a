"""Run under torchrun (2 processes, gloo): the packed rows each rank gets in epochs 0 and 1,
through accelerate's prepared DataLoader as the Trainer builds it (sampler from
LLaVATrainer._get_train_sampler's PackedDataset branch, set_epoch on the loader). Rank 0 writes
{epoch: [rows of rank 0, rows of rank 1]} (a row: its sample indices) to argv[1]."""

import json
import sys

import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader

from llava_hydra.sampling.packing import PackedDataset


class Samples(torch.utils.data.Dataset):
    """Sample j: |length j| tokens, all equal to j (so a packed row shows its samples)."""

    def __init__(self, lengths):
        self.modality_lengths = lengths

    def __len__(self):
        return len(self.modality_lengths)

    def __getitem__(self, j):
        ids = torch.full((abs(self.modality_lengths[j]),), j)
        return {"input_ids": ids, "labels": ids.clone()}


def rows_of(batch_rows):
    return [torch.unique_consecutive(r["input_ids"]).tolist() for r in batch_rows]


def main():
    acc = Accelerator(cpu=True)
    g = torch.Generator().manual_seed(0)
    lengths = [int(x) for x in torch.randint(5, 60, (200,), generator=g)]
    lengths = [x if k % 4 else -x for k, x in enumerate(lengths)]  # a quarter text-only
    data = PackedDataset(Samples(lengths), capacity=128, seed=7)
    loader = DataLoader(data, batch_size=2, sampler=data.sampler(2, acc.num_processes), collate_fn=rows_of)
    loader = acc.prepare(loader)
    out = {}
    for epoch in (0, 1):
        loader.set_epoch(epoch)  # what Trainer does at the start of every epoch
        mine = [row for batch in loader for row in batch]
        out[epoch] = acc.gather_for_metrics([mine], use_gather_object=True)
    if acc.is_main_process:
        with open(sys.argv[1], "w") as f:
            json.dump({"lengths": lengths, "epochs": out}, f)
    acc.wait_for_everyone()
    torch.distributed.destroy_process_group()  # a clean exit: gloo aborts a process that skips it


if __name__ == "__main__":
    main()
