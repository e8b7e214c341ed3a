"""The run as the trackers in ``training.report_to`` (wandb, TensorBoard, MLflow) file it.

transformers' callbacks send the Trainer's logs (loss, the learning rate of every trained part,
held-out accuracy during training). This module adds what they do not know:

- the run's name: ``training.run_name``, else ``<model>/<stage>`` plus a sweep job's swept
  overrides; the project ``tracking.project``; a sweep's jobs grouped under the sweep
  directory's name (wandb ``group``, an MLflow tag);
- the resolved spec as the run's config, with the learning rate of each trained part;
- files under the run directory: ``<run dir>/wandb``, ``<run dir>/tensorboard``, ``<run dir>/mlflow.db``
  and ``mlartifacts``
  (unless ``WANDB_DIR`` / ``TENSORBOARD_LOGGING_DIR`` / ``MLFLOW_TRACKING_URI`` say otherwise);
- at the end, the final metrics (the run's summary) and ``metrics.json`` itself.

A resumed run continues its wandb run (the wandb id is the run directory's run id).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from transformers import TrainerCallback

from llava_hydra.model.llava import OWN_LR


def reporters(report_to) -> list[str]:
    names = [report_to] if isinstance(report_to, str) else list(report_to or [])
    if "all" in names:
        from transformers.integrations import get_available_reporting_integrations

        return get_available_reporting_integrations()
    return [n for n in names if n != "none"]


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


GROUP_ENV = "LLAVA_HYDRA_TRACKER_GROUP"  # a sweep job's group, for the workers it launches (outside Hydra)


def sweep_job() -> tuple[str | None, list[str]]:
    """(group, swept overrides) of a multirun job: the sweep directory's name and the job's
    overrides of the keys the sweep varies (all of its overrides where those are not known).
    (None, []) for a single run."""
    from hydra.core.hydra_config import HydraConfig

    from llava_hydra.commands.sweep import SWEEP_KEYS_ENV, in_multirun, sweep_root

    if not in_multirun():  # a worker of a sweep job's launcher.nproc_per_node gets its group from the job
        return os.environ.get(GROUP_ENV) or None, []
    hydra_cfg = HydraConfig.get()
    overrides = list(hydra_cfg.overrides.task)
    keys = [k for k in os.environ.get(SWEEP_KEYS_ENV, "").split(",") if k]
    swept = [o for o in overrides if _key(o) in keys] if keys else overrides
    return sweep_root(hydra_cfg).name, swept


def run_name(cfg: DictConfig) -> str:
    if cfg.training.get("run_name"):
        return cfg.training.run_name
    _, swept = sweep_job()
    return " ".join([f"{cfg.model.name}/{cfg.stage.name}", *swept])


def learning_rates(cfg: DictConfig) -> dict[str, float]:
    """The peak learning rate of each trained part (as LLaVATrainer logs them: learning_rate/<part>)."""
    rates = {}
    for part in cfg.stage.trainable:
        own = cfg.training.get(OWN_LR[part]) if part in OWN_LR else None
        rates[part] = cfg.training.learning_rate if own is None else own
    return rates


def _numbers(metrics: dict) -> dict[str, float]:
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


class Trackers(TrainerCallback):
    """Opens the trackers' run before training (rank 0), closes it with the final metrics."""

    def __init__(self, cfg: DictConfig, spec: dict, out_dir: Path, run_id: str | None):
        self.names = reporters(cfg.training.report_to)
        self.out_dir = Path(out_dir).resolve()
        self.group, _ = sweep_job()
        self.name = run_name(cfg)
        self.project = cfg.tracking.project
        self.spec = spec
        self.config = {**spec, "learning_rates": learning_rates(cfg), "run_id": run_id}
        self.run_id = run_id
        self.tensorboard = None  # transformers' TensorBoardCallback, once attached

    def start(self, trainer) -> None:
        """Attach to ``trainer`` and open the runs (the Trainer's callbacks then log into them)."""
        if not self.names:
            return
        from transformers.integrations import TensorBoardCallback

        for cb in trainer.callback_handler.callbacks:
            if isinstance(cb, TensorBoardCallback):
                self.tensorboard = cb
                if not os.environ.get("TENSORBOARD_LOGGING_DIR"):
                    cb.logging_dir = str(self.out_dir / "tensorboard")
        trainer.add_callback(self)
        if not trainer.is_world_process_zero():
            return
        if "wandb" in self.names:
            import wandb

            if wandb.run is not None:  # left open by a job of this sweep that failed
                wandb.finish(exit_code=1)
            self.out_dir.mkdir(parents=True, exist_ok=True)
            wandb.init(project=self.project, name=self.name, group=self.group, config=self.config,
                       dir=os.environ.get("WANDB_DIR") or str(self.out_dir), id=self.run_id, resume="allow",
                       job_type=self.spec["stage"]["name"])
        if "mlflow" in self.names:
            import mlflow

            if mlflow.active_run() is not None:
                mlflow.end_run(status="FAILED")
            if not os.environ.get("MLFLOW_TRACKING_URI"):  # a database of this run, its artifacts beside it
                self.out_dir.mkdir(parents=True, exist_ok=True)
                mlflow.set_tracking_uri(f"sqlite:///{self.out_dir / 'mlflow.db'}")
                if mlflow.get_experiment_by_name(self.project) is None:
                    mlflow.create_experiment(self.project, artifact_location=(self.out_dir / "mlartifacts").as_uri())
            mlflow.set_experiment(self.project)
            mlflow.start_run(run_name=self.name, tags={"group": self.group} if self.group else None)
            mlflow.log_dict(self.spec, "spec.json")
            mlflow.log_params({f"learning_rate/{p}": lr for p, lr in self.config["learning_rates"].items()})

    def on_train_begin(self, args, state, control, **kwargs):
        writer = self.tensorboard.tb_writer if self.tensorboard is not None else None
        if state.is_world_process_zero and writer is not None:
            writer.add_text("spec", "```\n" + OmegaConf.to_yaml(OmegaConf.create(self.config)) + "```")

    def finish(self, trainer, metrics: dict, metrics_file: Path) -> None:
        """The final metrics into each run's summary, metrics.json attached; the runs closed.
        (Eval metrics reach the plotted history through ``trainer.log`` before this.)"""
        if not self.names or not trainer.is_world_process_zero():
            return
        numbers = _numbers(metrics)
        if "wandb" in self.names:
            import wandb

            if wandb.run is not None:
                wandb.run.summary.update(numbers)
                wandb.save(str(metrics_file), base_path=str(metrics_file.parent), policy="now")
                wandb.finish()
        if self.tensorboard is not None:
            if self.tensorboard.tb_writer is None:
                self.tensorboard._init_summary_writer(trainer.args)
            self.tensorboard.tb_writer.add_text("metrics", "```\n" + json.dumps(metrics, indent=1) + "\n```",
                                                trainer.state.global_step)
            self.tensorboard.tb_writer.close()
            self.tensorboard.tb_writer = None
        if "mlflow" in self.names:
            import mlflow

            if mlflow.active_run() is not None:
                mlflow.log_metrics(numbers, step=trainer.state.global_step)
                mlflow.log_artifact(str(metrics_file))
                mlflow.end_run()
