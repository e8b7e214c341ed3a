"""Start-up latency: ``python -m llava_hydra --cfg job`` and command -> first training step.

Each run is a fresh ``python -m llava_hydra`` subprocess (what a user types), writing under a
temporary directory. "First step" is the moment the Trainer prints the log line of step 1
(``training.logging_steps=1``), read from the streamed output. ``cold``: an empty cache (the
tiny models and the synthetic data are generated first); ``warm``: the same cache again.

    .venv/bin/python bench/bench_startup.py            # writes bench/results/startup.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LOSS_LINE = re.compile(r"""['"]loss['"]\s*:""")


def timed_cfg_job() -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "llava_hydra", "--cfg", "job"], check=True, capture_output=True)
    return time.perf_counter() - start


def time_to_first_step(root: Path) -> tuple[float, float]:
    """(seconds to the first step's log line, seconds to exit) of a one-step run."""
    cmd = [sys.executable, "-m", "llava_hydra", f"paths.output_root={root / 'out'}", f"paths.cache_dir={root / 'cache'}",
           "training.max_steps=1", "training.logging_steps=1", "training.save_strategy=no", "eval.enable=false"]
    start = time.perf_counter()
    first = None
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"}) as proc:
        for line in proc.stdout:
            if first is None and LOSS_LINE.search(line):
                first = time.perf_counter() - start
    total = time.perf_counter() - start
    if proc.returncode != 0 or first is None:
        raise RuntimeError(f"{' '.join(cmd)}: exit {proc.returncode}, first step line {'not ' if first is None else ''}seen")
    return first, total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "startup.json"))
    args = ap.parse_args()

    cfg_job = [timed_cfg_job() for _ in range(args.repeats)]
    rows = [{"what": "--cfg job", "median_s": statistics.median(cfg_job), "min_s": min(cfg_job), "runs": len(cfg_job)}]
    with tempfile.TemporaryDirectory(prefix="bench_startup_") as tmp:
        cold_first, cold_total = time_to_first_step(Path(tmp))
        warm = [time_to_first_step(Path(tmp)) for _ in range(args.repeats)]
    rows.append({"what": "command -> first step (cold cache)", "median_s": cold_first, "min_s": cold_first, "runs": 1,
                 "exit_s": cold_total})
    rows.append({"what": "command -> first step (warm cache)", "median_s": statistics.median(f for f, _ in warm),
                 "min_s": min(f for f, _ in warm), "runs": len(warm),
                 "exit_s": statistics.median(t for _, t in warm)})
    print("python -m llava_hydra (embedded default, stage=pretrain), CPU")
    header = f"{'what':<38}{'median s':>10}{'min s':>8}{'runs':>6}{'exit s':>8}"
    print(header + "\n" + "-" * len(header))
    for r in rows:
        exit_s = f"{r['exit_s']:>8.2f}" if "exit_s" in r else f"{'':>8}"
        print(f"{r['what']:<38}{r['median_s']:>10.2f}{r['min_s']:>8.2f}{r['runs']:>6d}{exit_s}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"rows": rows, "python": sys.version.split()[0]}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
