"""Sampler benchmark: time to order one epoch, padding waste, rank balance.

A 665K-sample length mix shaped like LLaVA-1.5's mix665k is generated with a fixed seed (no
download): ~625K image samples of 576 image tokens plus lognormal text (median ~150 tokens)
and 40K text-only samples (ShareGPT-like, lognormal median ~600, up to 2048). Lengths are
signed as LLaVA's ``modality_lengths`` (text-only negative).

    .venv/bin/python bench/bench_sampler.py            # writes bench/results/sampler.json

Columns: seconds to produce the epoch's index list (best of --repeats); padding waste = pad
tokens / all tokens when each per-device batch is padded to its own longest sample; rank
imbalance = per step, the slowest rank's padded tokens over the ranks' mean, averaged over
steps (and its worst step); mixed = per-device batches holding both modalities.

Packing rows (``training.packing``): samples are bin-packed into sequences of --capacity tokens
(``llava_hydra.packing.pack_lengths``), the bins ordered by the balanced grouped sampler, and a
per-device batch is that many packed rows: about as many tokens as --batch-size samples, or
one row. Seconds include packing; the columns are then over rows, not samples.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from llava_hydra.packing import pack_lengths
from llava_hydra.sampler import LengthGroupedSampler


def mix665k_like(n_image: int = 625_000, n_text: int = 40_000, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    image_text = torch.exp(torch.log(torch.tensor(150.0)) + 0.7 * torch.randn(n_image, generator=g))
    image = 576 + image_text.clamp(8, 2048 - 576).round().long()
    text = torch.exp(torch.log(torch.tensor(600.0)) + 0.8 * torch.randn(n_text, generator=g))
    text = text.clamp(20, 2048).round().long()
    lengths = torch.cat([image, -text])
    return lengths[torch.randperm(len(lengths), generator=g)]


def measure(order: torch.Tensor, lengths: torch.Tensor, batch_size: int, world_size: int) -> dict:
    n = len(order)
    full = n // (batch_size * world_size) * batch_size * world_size
    batch = lengths[order[:full]].view(-1, batch_size)  # full steps only; the tail is < 1 step
    tokens = batch.abs()
    padded = tokens.max(dim=1).values * batch_size  # per-device batch padded to its own max
    pad_waste = 1 - tokens.sum().item() / padded.sum().item()
    per_rank = padded.view(-1, world_size).double()
    imbalance = per_rank.max(dim=1).values / per_rank.mean(dim=1)
    all_batches = lengths[order].split(batch_size)
    mixed = sum(int((b > 0).any() and (b < 0).any()) for b in all_batches)
    return {"pad_waste": pad_waste, "rank_imbalance_mean": imbalance.mean().item(),
            "rank_imbalance_worst": imbalance.max().item(), "mixed_batches": mixed}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--world-size", type=int, default=8, help="ranks x gradient accumulation steps")
    ap.add_argument("--batch-size", type=int, default=16, help="per-device batch")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--capacity", type=int, default=2048, help="packing: model_max_length")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "sampler.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)  # a shared machine; and what one dataloader process gets

    lengths = mix665k_like(seed=args.seed)
    as_list = lengths.tolist()  # what the dataset hands over
    bs, ws = args.batch_size, args.world_size
    methods = {
        "random (plain shuffle)": lambda: torch.randperm(len(lengths), generator=torch.Generator().manual_seed(1)),
        "llava": LengthGroupedSampler(bs, ws, as_list, group_by_modality=True, mode="llava", seed=1).order,
        "balanced": LengthGroupedSampler(bs, ws, as_list, group_by_modality=True, seed=1).order,
        "balanced, pool=64": LengthGroupedSampler(bs, ws, as_list, group_by_modality=True, seed=1, pool=64).order,
    }
    cap = args.capacity
    rows_per_device = max(1, round(bs * lengths.abs().clamp(max=cap).double().mean().item() / cap))
    packed = {}  # name -> (bin lengths, rows per device), filled by the timed function

    def packing(name, rows):
        def order_fn():
            bins = pack_lengths(as_list, cap, seed=1)
            bin_lengths = [(1 if as_list[b[0]] > 0 else -1) * sum(min(abs(as_list[i]), cap) for i in b) for b in bins]
            packed[name] = (torch.tensor(bin_lengths), rows)
            return LengthGroupedSampler(rows, ws, bin_lengths, group_by_modality=True, seed=1).order()
        return order_fn

    for rows_ in (rows_per_device, 1):
        name = f"packing, {rows_} row{'s' if rows_ > 1 else ''}"
        methods[name] = packing(name, rows_)
    rows = []
    for name, order_fn in methods.items():
        seconds = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            order = order_fn()
            order.tolist()  # the sampler's __iter__ hands out Python ints
            seconds.append(time.perf_counter() - start)
        units, batch = packed.get(name, (lengths, bs))
        assert torch.equal(order.sort().values, torch.arange(len(units))), name
        row = {"method": name, "seconds": min(seconds), "batch_size": batch, **measure(order, units, batch, ws)}
        if name in packed:
            row.update(rows=len(units), fill=units.abs().sum().item() / (len(units) * cap))
        rows.append(row)

    print(f"{len(lengths)} samples ({int((lengths < 0).sum())} text-only), "
          f"world_size {ws}, batch {bs}, torch threads 1; packing into {cap}-token rows")
    header = f"{'method':<24}{'batch':>6}{'seconds':>9}{'pad waste':>11}{'rank imbal.':>13}{'worst step':>12}{'mixed':>7}"
    print(header + "\n" + "-" * len(header))
    for r in rows:
        print(f"{r['method']:<24}{r['batch_size']:>6}{r['seconds']:>9.3f}{r['pad_waste']:>11.2%}{r['rank_imbalance_mean']:>13.4f}"
              f"{r['rank_imbalance_worst']:>12.4f}{r['mixed_batches']:>7d}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for r in rows:
        if "fill" in r:
            print(f"{r['method']}: {r['rows']} rows, {r['fill']:.2%} of their {cap} tokens filled")
    out.write_text(json.dumps({"samples": len(lengths), "text_only": int((lengths < 0).sum()),
                               "world_size": ws, "batch_size": bs, "capacity": cap, "torch_threads": 1,
                               "rows": rows}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
