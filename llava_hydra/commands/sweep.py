"""Sweep summary: one row per Hydra multirun job, at the sweep root, as Markdown, CSV and JSON.

A Hydra callback (registered in ``conf/config.yaml``) that, when any job ends, writes that
job's row into its own directory (``job_summary.json``: overrides, status, final train loss,
eval metric, wall time, error) and rebuilds ``summary.{md,csv,json}`` from every job
directory under the sweep root. Rows live on disk rather than in memory, so the summary is
right whether jobs run in this process (the basic launcher) or elsewhere (submitit), and a
failed job is a row marked ``failed``, not a hole: Hydra only raises after every job ran.

At the start of a multirun it notes the swept keys for the jobs' tracker run names
(``llava_hydra.commands.tracking``); at the end rank 0 prints the table and where it is (also when a job
failed, where Hydra raises before its end-of-multirun callback).
"""

from __future__ import annotations

import atexit
import csv
import io
import json
import os
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from llava_hydra.config.distributed import is_main_process
from llava_hydra.config.sweep_dir import register_resolver

register_resolver()  # hydra.sweep.dir's resolver, also in processes a launcher starts for a job (submitit)

ROW_FILE = "job_summary.json"
SWEEP_KEYS_ENV = "LLAVA_HYDRA_SWEEP_KEYS"  # the swept keys, for the jobs' tracker run names
COLUMNS = ("job", "overrides", "status", "train_loss", "eval_accuracy", "wall_time_s", "error")


def job_row(job_return: JobReturn) -> dict[str, Any]:
    hydra_cfg = job_return.hydra_cfg.hydra
    out_dir = Path(hydra_cfg.runtime.output_dir)
    metrics_file = out_dir / "metrics.json"
    metrics = json.loads(metrics_file.read_text()) if metrics_file.exists() else {}
    failed = job_return.status != JobStatus.COMPLETED
    return {
        "job": hydra_cfg.job.num,
        "overrides": list(job_return.overrides or []),
        "status": "failed" if failed else "ok",
        "train_loss": None if failed else metrics.get("train_loss"),
        "eval_accuracy": None if failed else metrics.get("eval_accuracy"),
        "wall_time_s": metrics.get("wall_time_s"),
        "error": f"{type(job_return._return_value).__name__}: {job_return._return_value}" if failed else "",
        "dir": str(out_dir),
    }


def collect(sweep_dir: Path) -> list[dict[str, Any]]:
    rows = [json.loads(p.read_text()) for p in sweep_dir.glob(f"*/{ROW_FILE}")]
    return sorted(rows, key=lambda r: r["job"])


def varying_overrides(rows: list[dict[str, Any]]) -> list[str]:
    """Per row, only the overrides that differ between jobs (all of them for a single job)."""
    common = set.intersection(*(set(r["overrides"]) for r in rows)) if len(rows) > 1 else set()
    return [" ".join(o for o in r["overrides"] if o not in common) for r in rows]


def _markdown(rows: list[dict[str, Any]]) -> str:
    def cell(value: Any) -> str:
        text = "" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)
        return text.replace("|", "\\|").replace("\n", " ")[:200]

    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row, swept in zip(rows, varying_overrides(rows) if rows else []):
        lines.append("| " + " | ".join(cell(swept if c == "overrides" else row.get(c)) for c in COLUMNS) + " |")
    return "\n".join(lines) + "\n"


def _csv(rows: list[dict[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=[*COLUMNS, "dir"])
    writer.writeheader()
    writer.writerows({**r, "overrides": " ".join(r["overrides"])} for r in rows)
    return out.getvalue()


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_summary(sweep_dir: Path) -> list[dict[str, Any]]:
    rows = collect(sweep_dir)
    _write_atomically(sweep_dir / "summary.json", json.dumps(rows, indent=1))
    _write_atomically(sweep_dir / "summary.csv", _csv(rows))
    _write_atomically(sweep_dir / "summary.md", _markdown(rows))
    return rows


def in_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def swept_keys(config: DictConfig) -> list[str]:
    """The keys a multirun varies: its command-line sweeps (a=1,2 / range / choice ...) and an
    Optuna sweeper's search space."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    overrides = OverridesParser.create().parse_overrides(list(config.hydra.overrides.task))
    keys = [o.get_key_element().lstrip("+~") for o in overrides if o.is_sweep_override()]
    params = OmegaConf.select(config, "hydra.sweeper.params") or {}
    return [*keys, *(k for k in params if k not in keys)]


def print_summary(sweep_dir: Path) -> None:
    """The table and where it is, on stdout: once, by rank 0 (under torchrun every rank runs the sweep)."""
    table = sweep_dir / "summary.md"
    if is_main_process() and table.exists():
        print(f"\nsweep summary ({sweep_dir}/summary.{{md,csv,json}}):\n{table.read_text()}", flush=True)


class SweepSummary(Callback):
    """Writes the sweep summary after every multirun job (single runs are left alone) and
    prints it when the multirun ends."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        os.environ[SWEEP_KEYS_ENV] = ",".join(swept_keys(config))
        self.sweep_dir = Path(str(config.hydra.sweep.dir))
        atexit.register(print_summary, self.sweep_dir)  # a failed job: Hydra raises before on_multirun_end

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        atexit.unregister(print_summary)
        print_summary(self.sweep_dir)

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        hydra_cfg = job_return.hydra_cfg.hydra if job_return.hydra_cfg is not None else None
        if hydra_cfg is None or str(hydra_cfg.mode) != "RunMode.MULTIRUN":
            return
        if not is_main_process():
            return
        row = job_row(job_return)
        Path(row["dir"]).mkdir(parents=True, exist_ok=True)
        (Path(row["dir"]) / ROW_FILE).write_text(json.dumps(row, indent=1))
        write_summary(sweep_root(hydra_cfg))


def sweep_root(hydra_cfg: DictConfig) -> Path:
    """The sweep directory: the job's output directory less ``hydra.sweep.subdir`` (the sweep
    dir itself cannot be resolved here, it interpolates the job's own config)."""
    out, sub = Path(hydra_cfg.runtime.output_dir), Path(str(hydra_cfg.sweep.subdir))
    return out.parents[len(sub.parts) - 1] if out.parts[-len(sub.parts):] == sub.parts else out.parent
