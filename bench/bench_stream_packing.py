"""Packed stream plan (llava_hydra.sampling.stream_packing) on the mix665k-like lengths of
bench_sampler.py: micro-batches a rank, rows, row fill and the plan's cost, against map-style
packing's row count of the same samples. No I/O (the rows are a function of the lengths).

    .venv/bin/python bench/bench_stream_packing.py 625000 40000     # image samples, text-only samples
"""
import sys
import time

sys.path.insert(0, "bench")
from bench_sampler import mix665k_like
from llava_hydra.sampling.stream_packing import PackedStreamPlan, rank_rows
lengths = mix665k_like(*map(int, sys.argv[1:3])).tolist()
n = len(lengths); counts = [1000] * (n // 1000) + ([n % 1000] if n % 1000 else [])
t = time.time()
plan = PackedStreamPlan(lengths, counts, world=8, batch=1, group=1, workers=4, buffer=1000, capacity=2048)
t1 = time.time() - t
t = time.time(); rows = [r for b in rank_rows(plan, 0, 0) for r in b]; t2 = time.time() - t
real = sum(min(abs(lengths[i]), 2048) for r in rows for i in r)
print(f"{n} samples, 8 ranks x 4 workers, buffer 1000, 2048-token rows, 1 row per micro-batch: "
      f"{plan.steps} micro-batches a rank, rank 0 {len(rows)} rows, {sum(map(len, rows))} samples, "
      f"row fill {real / (len(rows) * 2048):.3f}; plan {t1:.1f} s (all ranks' counts), rank 0's rows {t2:.1f} s")
from llava_hydra.sampling.packing_rows import pack_rows
c = pack_rows(lengths, 2048)[1]
print(f"map-style packing of the same samples: {sum(c)} rows, {sum(c) / 8:.0f} a rank")
