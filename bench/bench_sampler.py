"""Sampler benchmark: what each step order costs (padding, waiting ranks) and what it changes
(how far a step is from a random draw of the data).

A 665K-sample length mix shaped like LLaVA-1.5's mix665k is generated with a fixed seed (no
download): ~625K image samples of 576 image tokens plus lognormal text (median ~150 tokens)
and 40K text-only samples (ShareGPT-like, lognormal median ~600, up to 2048). Lengths are
signed as LLaVA's ``modality_lengths`` (text-only negative).

    .venv/bin/python bench/bench_sampler.py            # writes bench/results/sampler.json

A step is ``--world-size`` ranks x one per-device batch (no gradient accumulation). Columns:
- seconds: time to produce the epoch's index list (best of --repeats; packing included);
- pad waste: pad tokens / all tokens, each per-device batch padded to its own longest member;
- step eff.: real tokens of a step / (ranks x padded tokens of the slowest rank), summed over
  full steps: the share of a synchronous step's wall-clock doing useful work;
- rank imbal.: per step, the slowest rank's padded tokens over the ranks' mean (mean, worst);
- fairness img / txt: per modality, the std over steps of a step's mean sample length (all the
  samples of the step's batches, across ranks), over the same std for random steps of that
  modality holding the same numbers of samples (step s of the reference has as many as step s
  measured; packing's steps hold a varying number): 1.0 is a random draw, LLaVA's objective;
- mixed: per-device batches holding both modalities.

Packing rows (``training.packing``): ``llava_hydra.sampling.packing_rows.packed_epoch``, what
``PackedSampler`` yields: every step a random draw of samples packed into that step's
--capacity-token rows, dealt to ranks by real tokens. A per-device batch is that many rows:
about as many tokens as --batch-size samples, or one row. Pad waste, step efficiency and rank
imbalance are then over rows; fairness over the samples in the rows. Its seconds are one
epoch's, as the sampler spends them; the row counts (``pack_rows``, ``step_counts``: once per
run) are timed apart.

Packed stream rows (``training.packing`` with ``data.stream.shards``): what ``PackedShardStream``
yields (``llava_hydra.sampling.stream_packing.rank_rows``, no I/O): shards of 1,000 samples, 4
workers a rank, each packing inside its 1,000-sample buffer. A worker's last micro-batches may hold
fewer rows; the columns are over the steps where every rank's micro-batch is full (the rest are
counted and printed). Its seconds are every rank's plan, which the stream spends spread over its
ranks and workers.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from llava_hydra.data.stream_plan import rank_batches, rank_plan
from llava_hydra.sampling.packing_rows import FILL, bin_lengths, pack_rows, packed_epoch, step_counts
from llava_hydra.sampling.sampler import LengthGroupedSampler
from llava_hydra.sampling.stream_packing import PackedStreamPlan, rank_rows


def mix665k_like(n_image: int = 625_000, n_text: int = 40_000, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    image_text = torch.exp(torch.log(torch.tensor(150.0)) + 0.7 * torch.randn(n_image, generator=g))
    image = 576 + image_text.clamp(8, 2048 - 576).round().long()
    text = torch.exp(torch.log(torch.tensor(600.0)) + 0.8 * torch.randn(n_text, generator=g))
    text = text.clamp(20, 2048).round().long()
    lengths = torch.cat([image, -text])
    return lengths[torch.randperm(len(lengths), generator=g)]


def stream_order(lengths: torch.Tensor, bs: int, ws: int, group: int = 1, workers: int = 4, buffer: int = 1000,
                 shard: int = 1000) -> torch.Tensor:
    """What ShardStream hands out (data.stream_plan.rank_batches, no I/O): shards of ``shard`` samples in
    file order, ``workers`` workers a rank, a ``buffer`` shuffle buffer; with ``group`` > 1 each
    optimizer step's ``group`` micro-batches of a rank sorted by modality and length (group_by_length).
    Laid out one optimizer step after another, ranks in order, each rank's micro-batches in order."""
    n = len(lengths)
    counts = [shard] * (n // shard) + ([n % shard] if n % shard else [])
    as_list = lengths.tolist()
    key = (lambda i: (as_list[i] < 0, -abs(as_list[i]))) if group > 1 else None
    ranks = [rank_batches(counts, 1, 0, rank_plan(n, ws, r, bs, group), workers, buffer, key) for r in range(ws)]
    order = []
    for s in range(0, len(ranks[0]), group):
        for r in range(ws):
            for b in ranks[r][s:s + group]:
                order += b
    return torch.tensor(order)


def packed_stream_order(lengths: list[int], cap: int, rows: int, ws: int, fill: float, group: int = 1,
                        workers: int = 4, buffer: int = 1000, shard: int = 1000
                        ) -> tuple[list[list[int]], torch.Tensor, int]:
    """What PackedShardStream hands out: (rows as sample ids, the order of the steps whose every
    micro-batch holds ``rows`` rows -- one optimizer step after another, ranks in order, each rank's
    ``group`` micro-batches in order --, steps left out)."""
    n = len(lengths)
    counts = [shard] * (n // shard) + ([n % shard] if n % shard else [])
    plan = PackedStreamPlan(lengths, counts, ws, rows, group, workers, buffer, cap, seed=1, fill=fill)
    ranks = [rank_rows(plan, 0, r) for r in range(ws)]
    bins = [row for rank in ranks for batch in rank for row in batch]
    ids = sorted(i for row in bins for i in row)
    assert ids == list(range(n)), "a packed stream epoch must hold every sample once"
    first, at = [], 0  # each micro-batch's first row in ``bins``
    for rank in ranks:
        for batch in rank:
            first.append(at)
            at += len(batch)
    # (steps, ranks x group) micro-batches, laid out step by step
    first = torch.tensor(first).view(ws, -1, group).permute(1, 0, 2).reshape(-1, ws * group)
    sizes = torch.tensor([[len(b) for b in rank] for rank in ranks]).view(ws, -1, group).permute(1, 0, 2)
    full = (sizes.reshape(-1, ws * group) == rows).all(dim=1)
    order = (first[full].unsqueeze(-1) + torch.arange(rows)).reshape(-1)
    return bins, order, int((~full).sum())


def step_mean_std(tokens: torch.Tensor, counts: torch.Tensor) -> float:
    """Std over steps of (sample tokens of the step / samples in the step)."""
    return (tokens.double() / counts.double()).std().item()


def random_step_std(lengths: torch.Tensor, modality: int, counts: torch.Tensor, seeds=range(123, 128)) -> float:
    """The reference: random steps of one modality holding ``counts[s]`` samples each (step s of the
    measured order has as many samples as reference step s: a std of a mean shrinks with more
    samples). The std over steps of their mean sample length, averaged over ``seeds``."""
    pool = lengths[(lengths > 0) if modality > 0 else (lengths < 0)].abs().double()
    step_of = torch.repeat_interleave(torch.arange(len(counts)), counts)
    stds = []
    for seed in seeds:
        drawn = pool[torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed))[:len(step_of)]]
        sums = torch.zeros(len(counts), dtype=torch.float64).index_add_(0, step_of, drawn)
        stds.append((sums / counts).std().item())
    return sum(stds) / len(stds)


def measure(order: torch.Tensor, units: torch.Tensor, batch_size: int, world_size: int,
            lengths: torch.Tensor, members: list[list[int]] | None = None) -> dict:
    """``units`` are the ordered things' signed lengths (samples, or rows with ``members`` their
    sample indices); ``lengths`` the samples' signed lengths."""
    size = batch_size * world_size
    full = len(order) // size * size  # full steps only; the tail is < 1 step
    batch = units[order[:full]].view(-1, batch_size)
    tokens = batch.abs()
    padded = tokens.max(dim=1).values * batch_size  # per-device batch padded to its own max
    pad_waste = 1 - tokens.sum().item() / padded.sum().item()
    per_rank = padded.view(-1, world_size).double()
    imbalance = per_rank.max(dim=1).values / per_rank.mean(dim=1)
    efficiency = tokens.sum().item() / (world_size * per_rank.max(dim=1).values.sum().item())
    all_batches = units[order].split(batch_size)
    mixed = sum(int((b > 0).any() and (b < 0).any()) for b in all_batches)
    # fairness: each full, single-modality step's mean sample length
    step_units = order[:full].view(-1, size)
    signs = units[step_units].sign()
    pure = (signs == signs[:, :1]).all(dim=1)
    if members is None:
        step_tokens, step_count = units[step_units].abs().sum(dim=1), torch.full((len(step_units),), size)
    else:
        count_of = torch.tensor([len(m) for m in members])
        step_tokens, step_count = units[step_units].abs().sum(dim=1), count_of[step_units].sum(dim=1)
    fairness = {}
    for name, sign in (("image", 1), ("text", -1)):
        keep = pure & (signs[:, 0] == sign)
        if keep.sum() < 20:  # a plain shuffle has almost no single-modality steps
            fairness[name] = float("nan")
            continue
        fairness[name] = step_mean_std(step_tokens[keep], step_count[keep]) / random_step_std(lengths, sign,
                                                                                             step_count[keep])
    return {"pad_waste": pad_waste, "step_efficiency": efficiency, "rank_imbalance_mean": imbalance.mean().item(),
            "rank_imbalance_worst": imbalance.max().item(), "fairness_image": fairness["image"],
            "fairness_text": fairness["text"], "mixed_batches": mixed}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--world-size", type=int, default=8, help="ranks (one per-device batch each per step)")
    ap.add_argument("--batch-size", type=int, default=16, help="per-device batch")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--capacity", type=int, default=2048, help="packing: model_max_length")
    ap.add_argument("--fill", type=float, default=FILL, help="packing: target real share of a row")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "sampler.json"))
    ap.add_argument("--only", default=None, help="only the methods whose name holds this text (e.g. stream)")
    args = ap.parse_args()
    torch.set_num_threads(1)  # a shared machine; and what one dataloader process gets

    lengths = mix665k_like(seed=args.seed)
    as_list = lengths.tolist()  # what the dataset hands over
    bs, ws, cap = args.batch_size, args.world_size, args.capacity

    def grouped(mode, **kw):
        return LengthGroupedSampler(bs, ws, as_list, group_by_modality=True, mode=mode, seed=1, **kw).order

    methods = {
        "random (plain shuffle)": lambda: torch.randperm(len(lengths), generator=torch.Generator().manual_seed(1)),
        "llava (LLaVA's order)": grouped("llava"),
        "random_steps (default)": grouped("random_steps"),
        "sorted_steps (opt-in)": grouped("sorted_steps"),
        "sorted_steps, pool=64": grouped("sorted_steps", pool=64),
        "stream (shards, buffer 1000)": lambda: stream_order(lengths, bs, ws),
        "stream, grouped in step (accum 4)": lambda: stream_order(lengths, bs, ws, group=4),
    }
    step_world = {"stream, grouped in step (accum 4)": ws * 4}  # a step = 4 micro-batches a rank
    if args.only:
        methods = {k: v for k, v in methods.items() if args.only in k}
    rows_per_device = max(1, round(bs * lengths.abs().clamp(max=cap).double().mean().item() / cap))
    start = time.perf_counter()
    packs = not args.only or args.only.startswith("packing")
    _, fill_counts = pack_rows(as_list, cap, 0, args.fill) if packs else (None, None)  # once per run (PackedDataset)
    count_seconds = {"pack_rows": time.perf_counter() - start}
    packed = {}  # name -> (bins, rows per device), filled by the timed function

    def packing(name, rows, fill, counts):
        def order_fn():
            bins, order = packed_epoch(as_list, cap, rows, ws, seed=1, fill=fill, counts=counts)
            packed[name] = (bins, rows)
            return order
        return order_fn

    for rows_ in (rows_per_device, 1) if packs else ():
        name = f"packing, {rows_} row{'s' if rows_ > 1 else ''}"
        start = time.perf_counter()
        counts = step_counts(as_list, cap, rows_ * ws, 0, fill_counts)  # once per run (PackedSampler)
        count_seconds[name] = time.perf_counter() - start
        methods[name] = packing(name, rows_, args.fill, counts)
    stream_rows = {}  # name -> (bins, rows per device, steps left out), filled by the timed function

    def packed_stream(name, rows, group=1):
        def order_fn():
            bins, order, left = packed_stream_order(as_list, cap, rows, ws, args.fill, group)
            stream_rows[name] = (bins, rows, left)
            return order
        return order_fn

    for rows_, group in ((rows_per_device, 1), (1, 1), (1, 4)):
        name = f"packed stream, {rows_} row{'s' if rows_ > 1 else ''}" + (f" (accum {group})" if group > 1 else "")
        if not args.only or args.only in name:
            methods[name] = packed_stream(name, rows_, group)
            step_world[name] = ws * group
    results = []
    for name, order_fn in methods.items():
        seconds = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            order = order_fn()
            order.tolist()  # the sampler's __iter__ hands out Python ints
            seconds.append(time.perf_counter() - start)
        left = None
        if name in packed:
            bins, batch = packed[name]
            units = torch.tensor(bin_lengths(as_list, bins, cap))
        elif name in stream_rows:
            bins, batch, left = stream_rows[name]
            units = torch.tensor(bin_lengths(as_list, bins, cap))
        else:
            bins, batch, units = None, bs, lengths
        if left is None:
            assert torch.equal(order.sort().values, torch.arange(len(units))), name
        row = {"method": name, "seconds": min(seconds), "batch_size": batch,
               **measure(order, units, batch, step_world.get(name, ws), lengths, bins)}
        if bins is not None:
            row.update(rows=len(units), fill=units.abs().sum().item() / (len(units) * cap))
        if left is not None:
            row.update(steps_left_out=left, steps=len(order) // (batch * step_world.get(name, ws)) + left)
        results.append(row)

    print(f"{len(lengths)} samples ({int((lengths < 0).sum())} text-only), "
          f"{ws} ranks x batch {bs}, torch threads 1; packing into {cap}-token rows, fill {args.fill}")
    header = (f"{'method':<24}{'batch':>6}{'seconds':>9}{'pad waste':>11}{'step eff.':>11}{'rank imbal.':>13}"
              f"{'worst step':>12}{'fair img':>10}{'fair txt':>10}{'mixed':>7}")
    print(header + "\n" + "-" * len(header))
    for r in results:
        print(f"{r['method']:<24}{r['batch_size']:>6}{r['seconds']:>9.3f}{r['pad_waste']:>11.2%}"
              f"{r['step_efficiency']:>11.3f}{r['rank_imbalance_mean']:>13.4f}{r['rank_imbalance_worst']:>12.4f}"
              f"{r['fairness_image']:>10.2f}{r['fairness_text']:>10.2f}{r['mixed_batches']:>7d}")
    for r in results:
        if "fill" in r:
            counted = (f"counted once per run in {count_seconds['pack_rows']:.1f} + {count_seconds[r['method']]:.1f} s"
                       if r["method"] in count_seconds else
                       f"{r['steps_left_out']} of {r['steps']} steps left out of the columns (a rank's micro-batch "
                       f"short of {r['batch_size']} rows)")
            print(f"{r['method']}: {r['rows']} rows, {r['fill']:.2%} of their {cap} tokens filled; {counted}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"samples": len(lengths), "text_only": int((lengths < 0).sum()),
                               "world_size": ws, "batch_size": bs, "capacity": cap, "fill": args.fill,
                               "row_count_seconds": count_seconds, "torch_threads": 1,
                               "rows": results}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
