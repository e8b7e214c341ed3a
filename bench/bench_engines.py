"""Engine step time and peak memory: DDP, DeepSpeed ZeRO-2, ZeRO-3 and FSDP2 on the same run.

Each engine trains the embedded default's stage 2 (tiny LLaVA, synthetic data, LLM + projector
trained, no stage-1 projector) for --steps optimizer steps under torchrun with --nproc processes
(gloo on CPU; NCCL, one GPU a rank, where there are GPUs), the same data and seed. A callback
times every step on every rank (on_step_begin -> on_step_end: forward, backward, the engine's
reductions, optimizer step); the first --warmup steps are dropped and the table gives the median
over steps of the slowest rank. Peak memory: the largest peak resident set of a rank (CPU,
``ru_maxrss``: the interpreter and libraries included, so at tiny size the engines' own share is
the difference between rows) or ``torch.cuda.max_memory_allocated`` (GPU).

    .venv/bin/python bench/bench_engines.py                    # -> bench/results/engines.json
    .venv/bin/python bench/bench_engines.py --engines fsdp=full deepspeed=zero3 --steps 20

Under torchrun this file is also the worker (``RANK`` and ``BENCH_OUT`` set): it runs the overrides given.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ENGINES = {"DDP": ["deepspeed=none"], "ZeRO-2": ["deepspeed=zero2"], "ZeRO-3": ["deepspeed=zero3"],
           "FSDP2 (full)": ["deepspeed=none", "fsdp=full"]}


def worker(overrides: list[str]) -> None:
    import resource
    import time

    import torch
    from hydra import compose, initialize_config_module
    from transformers import TrainerCallback

    from llava_hydra.commands.runner import run
    from llava_hydra.config.distributed import end_process_group
    from llava_hydra.config.schema import register_configs
    from llava_hydra.train.trainer import LLaVATrainer

    times: list[float] = []

    class StepTimer(TrainerCallback):
        def on_step_begin(self, *a, **k):
            self.t = time.perf_counter()

        def on_step_end(self, *a, **k):
            times.append(time.perf_counter() - self.t)

    original = LLaVATrainer.train

    def train(self, *args, **kwargs):
        self.add_callback(StepTimer())
        return original(self, *args, **kwargs)

    LLaVATrainer.train = train
    register_configs()
    with initialize_config_module("llava_hydra.conf", version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    try:
        run(cfg)
    finally:
        end_process_group()
    gpu = torch.cuda.is_available()
    peak = torch.cuda.max_memory_allocated() if gpu else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    out = Path(os.environ["BENCH_OUT"]) / f"rank{os.environ.get('RANK', '0')}.json"
    out.write_text(json.dumps({"step_s": times, "peak_bytes": peak, "device": "cuda" if gpu else "cpu"}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--engines", nargs="*", default=None, help="override words per engine (default: the four)")
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--batch", type=int, default=4, help="per-device batch")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "engines.json"))
    args = ap.parse_args()
    engines = {w: [w] + (["deepspeed=none"] if w.startswith("fsdp") else []) for w in args.engines} \
        if args.engines else ENGINES
    tmp = Path(tempfile.mkdtemp(prefix="bench_engines_"))
    common = ["stage=finetune", "stage.pretrain_mm_mlp_adapter=null", f"paths.cache_dir={tmp / 'cache'}",
              f"training.max_steps={args.steps}", "training.save_strategy=no", "training.logging_steps=1000",
              f"training.per_device_train_batch_size={args.batch}", "eval.enable=false", "training.disable_tqdm=true"]
    rows = []
    for name, words in engines.items():
        out = tmp / "".join(c if c.isalnum() else "_" for c in name)  # a path Hydra's override parser takes
        out.mkdir()
        env = {**os.environ, "OMP_NUM_THREADS": "1", "BENCH_OUT": str(out)}
        if not _gpu():
            env.setdefault("DS_ACCELERATOR", "cpu")
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={args.nproc}",
               f"--master_port={_free_port()}",
               __file__, "--", *common, f"paths.output_root={out / 'runs'}", *words]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            print(f"{name}: failed\n{done.stderr[-3000:]}", file=sys.stderr)
            continue
        ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(args.nproc)]
        slowest = [max(r["step_s"][i] for r in ranks) for i in range(args.warmup, len(ranks[0]["step_s"]))]
        rows.append({"engine": name, "overrides": " ".join(words), "step_ms": 1000 * statistics.median(slowest),
                     "peak_mib": max(r["peak_bytes"] for r in ranks) / 2 ** 20, "device": ranks[0]["device"]})
    print(f"| engine | overrides | step (ms, median) | peak memory / rank (MiB) | device |\n|---|---|---:|---:|---|")
    for r in rows:
        print(f"| {r['engine']} | `{r['overrides']}` | {r['step_ms']:.0f} | {r['peak_mib']:.0f} | {r['device']} |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"nproc": args.nproc, "steps": args.steps, "warmup": args.warmup,
                                          "per_device_batch": args.batch, "rows": rows}, indent=1))


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _gpu() -> bool:
    import torch

    return torch.cuda.is_available()


if __name__ == "__main__":
    if "RANK" in os.environ and "BENCH_OUT" in os.environ:
        worker([a for a in sys.argv[1:] if a != "--"])
    else:
        main()
