"""LLaVATrainer: Hugging Face's Trainer with LLaVA's three customisations.

1. The train sampler groups samples by modality and length (``group_by_modality_length``).
2. The optimizer gets separate parameter groups for the projector (``mm_projector_lr``) and
   the vision tower (``vision_tower_lr``), found from the model's structure.
3. Checkpoints of a projector-only stage hold the projector, not the frozen LLM (and resume
   under DeepSpeed from engine state saved without the frozen weights).
4. Checkpoints land atomically with a run record and a manifest (``llava_hydra.train.checkpoints``);
   the reported train loss is the mean over the whole run, across resumes.
5. Every logged step carries the learning rate of each trained part (``learning_rate/llm``,
   ``/mm_projector``, ``/vision_tower``); ``learning_rate`` is the rate of ``training.learning_rate``'s
   group (the Trainer's would be the first group's: the projector's when it has its own rate).
   Progress is shown by ``llava_hydra.train.progress.RunLog`` (bar + log lines) instead of printed dicts.
6. Every optimizer step is guarded (``llava_hydra.train.guards``): NaN stops it, a stop signal or
   ``save_every_minutes`` saves it, all ranks agreeing; a failed save names a full disk.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass

import torch
from transformers import Trainer, TrainingArguments

from llava_hydra.model.families import is_llava_outer
from llava_hydra.train.checkpoint_trust import note_written, save_errors_named
from llava_hydra.train.fsdp2 import Fsdp2Engine, full_tensors
from llava_hydra.train.guards import GuardedSteps
from llava_hydra.train.nodes import complete_node_copy
from llava_hydra.train.checkpoints import MANIFEST, RUN_FILE, STAGING_DIR, read_record, write_checkpoint_record
from llava_hydra.model.llava import OWN_LR
from llava_hydra.model.projector import PROJECTOR_FILE, projector_state
from llava_hydra.train.param_groups import parameter_groups, part_groups
from llava_hydra.sampling.sampler import LengthGroupedSampler
from llava_hydra.train.source_loss import SourceLoss
from llava_hydra.train.stream_loader import StreamTraining  # a ShardStream's loader, resume, position
from llava_hydra.config.validate import check_choice

log = logging.getLogger(__name__)


@dataclass
class LlavaTrainingArguments(TrainingArguments):
    mm_projector_lr: float | None = None
    vision_tower_lr: float | None = None
    group_by_modality_length: bool = False
    length_grouping: str = "random_steps"
    length_grouping_pool: int | None = None
    save_every_minutes: float | None = None  # llava_hydra.train.guards
    checkpoint_on_signals: list[str] | None = None  # llava_hydra.train.preemption
    on_nonfinite: str = "stop"

    def __post_init__(self):
        check_choice("training.length_grouping", self.length_grouping)
        check_choice("training.on_nonfinite", self.on_nonfinite)
        ds = self.deepspeed
        if isinstance(ds, str) and os.path.isfile(ds):
            with open(ds) as f:
                ds = json.load(f)
        own_rates = {k: getattr(self, k) for k in OWN_LR.values() if getattr(self, k) is not None}
        if isinstance(ds, dict) and "optimizer" in ds and own_rates:
            raise ValueError(
                f"the DeepSpeed config defines its own optimizer, which would train every parameter at one "
                f"rate and silently drop {', '.join(f'training.{k}={v}' for k, v in own_rates.items())}; remove "
                f"its 'optimizer' block (our deepspeed=zero3_offload has none) or unset those rates")
        super().__post_init__()


class LLaVATrainer(StreamTraining, GuardedSteps, SourceLoss, Fsdp2Engine, Trainer):  # SourceLoss: loss/<source>, tokens/<source> of a mixture
    def __init__(self, *args, save_projector_only: bool = False, held_out_eval=None, run_id: str | None = None,
                 run_spec: dict | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.save_projector_only = save_projector_only
        self.held_out_eval = held_out_eval  # model -> {"eval_accuracy": ...}: what evaluate() runs
        self.run_id = run_id  # recorded in every checkpoint with the spec (llava_hydra.train.checkpoints)
        self.run_spec = run_spec
        self.resumed_loss_sum = 0.0
        self.part_groups: dict[str, int] = {}  # set by create_optimizer
        self.base_group: int | None = None  # the group at training.learning_rate
        self.logged_rates: dict[str, float] = {}
        from transformers.trainer_callback import PrinterCallback, ProgressCallback

        from llava_hydra.train.progress import RunLog

        self.remove_callback(PrinterCallback)
        self.remove_callback(ProgressCallback)
        self.add_callback(RunLog(bar=not self.args.disable_tqdm))
        from llava_hydra.train.guards import StepGuard

        self.guard = StepGuard(self.args.on_nonfinite, self.args.save_every_minutes, self.args.checkpoint_on_signals,
                               deepspeed=self.is_deepspeed_enabled, loss_scaling=self.args.fp16)
        self.add_callback(self.guard)  # finite steps, stop signals, time-based saves: agreed by all ranks

    def _get_learning_rate(self) -> float:
        """The rate of training.learning_rate's group, noting every part's rate for ``log``."""
        first = super()._get_learning_rate()
        if not self.part_groups:  # an optimizer not made by create_optimizer (DeepSpeed's own)
            return first
        groups = self.optimizer.param_groups
        self.logged_rates = {part: float(groups[i]["lr"]) for part, i in self.part_groups.items()}
        return first if self.base_group is None else float(groups[self.base_group]["lr"])

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "learning_rate" in logs:
            logs.update({f"learning_rate/{part}": lr for part, lr in self.logged_rates.items()})
        super().log(logs, start_time)

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval"):
        """With ``held_out_eval`` (eval.steps): greedy answers to the held-out questions, logged to
        the trackers and returned for ``metric_for_best_model``; else the Trainer's own."""
        if self.held_out_eval is None:
            return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)
        with self.accelerator.autocast():  # as training computes: bf16/fp16 over fp32 trainable weights
            answers = self.held_out_eval(self.model)
        metrics = {k: v for k, v in answers.items() if isinstance(v, (int, float))}
        self.model.train()
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics

    def _get_train_sampler(self, train_dataset=None):
        """Packed rows: the packing's own sampler (re-packs every epoch, random steps of rows
        balanced by real tokens). Otherwise the grouped sampler when asked, else the Trainer's."""
        from llava_hydra.sampling.packing import PackedDataset

        dataset = train_dataset if train_dataset is not None else self.train_dataset
        step_world = self.args.world_size * self.args.gradient_accumulation_steps  # one megabatch = one step
        if isinstance(dataset, PackedDataset):
            return dataset.sampler(self.args.train_batch_size, step_world)
        if not self.args.group_by_modality_length:
            return super()._get_train_sampler(dataset)
        return LengthGroupedSampler(
            self.args.train_batch_size,
            world_size=step_world,
            lengths=dataset.modality_lengths,
            group_by_modality=True,
            mode=self.args.length_grouping,
            seed=self.args.data_seed if self.args.data_seed is not None else self.args.seed,
            pool=self.args.length_grouping_pool,
        )

    def create_optimizer(self, model=None):
        opt_model = self.model if model is None else model
        if self.optimizer is None:
            groups = parameter_groups(opt_model, set(self.get_decay_parameter_names(opt_model)),
                                      self.args.weight_decay, **{k: getattr(self.args, k) for k in OWN_LR.values()})
            for g in groups:
                log.info("optimizer group %s: %d tensors, lr %s, weight decay %s", g["name"], len(g["params"]),
                         g.get("lr", self.args.learning_rate), g["weight_decay"])
            self.part_groups = part_groups(opt_model, groups)
            self.base_group = next((i for i, g in enumerate(groups) if g["name"].startswith("base_")), None)
            optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
            self.optimizer = optimizer_cls(groups, **optimizer_kwargs)
        return self.optimizer

    # -- checkpoints ---------------------------------------------------------------------------

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False):
        """Projector-only stages write the projector alone, gathered from ZeRO-3 partitions on
        every rank (a collective) and written by rank 0: never the frozen LLM."""
        if not self.save_projector_only:
            return super().save_model(output_dir, _internal_call)
        output_dir = output_dir or self.args.output_dir
        state = gathered_projector_state(self.accelerator.unwrap_model(self.model))
        if self.args.should_save:
            from safetensors.torch import save_file

            os.makedirs(output_dir, exist_ok=True)
            save_file(state, os.path.join(output_dir, PROJECTOR_FILE), metadata={"format": "pt"})
            self.accelerator.unwrap_model(self.model).config.save_pretrained(output_dir)
            with open(os.path.join(output_dir, "training_args.json"), "w") as f:
                json.dump(self.args.to_dict(), f, indent=1, default=str)

    def _save_checkpoint(self, model, trial):
        """Write the checkpoint into a staging directory with its run record (run id, spec,
        loss sum) and manifest, then rename it into place, so a run killed while saving leaves
        the previous checkpoint intact and a damaged one is recognised by its manifest."""
        from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints

        run_dir = self._get_output_dir(trial=trial)
        staging = os.path.join(run_dir, STAGING_DIR)
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        loss_sum = self.train_loss_sum()  # a collective: every rank
        if self.args.should_save:
            shutil.rmtree(staging, ignore_errors=True)
        self.accelerator.wait_for_everyone()
        limit, self.args.save_total_limit = self.args.save_total_limit, None  # rotate after the rename
        self._get_output_dir = lambda trial=None: staging
        try:
            with save_errors_named(os.path.join(staging, name), staging):  # a full disk named as such
                super()._save_checkpoint(model, trial)
        finally:
            del self._get_output_dir
            self.args.save_total_limit = limit
        self.accelerator.wait_for_everyone()
        final = os.path.join(run_dir, name)
        self._point_best_checkpoint_at(run_dir, staging)
        if self.args.should_save:
            staged = os.path.join(staging, name)
            with save_errors_named(staged, staging):
                self.state.save_to_json(os.path.join(staged, "trainer_state.json"))  # with the final best path
                complete_node_copy(staged)  # node-local copies under DeepSpeed (train.nodes)
                write_checkpoint_record(staged, self.run_id, self.run_spec, loss_sum, getattr(self, "run_data", None))
            if os.path.exists(final):  # re-saving a step after a resume: replace it
                shutil.rmtree(final)
            os.replace(staged, final)
            note_written(os.path.join(run_dir, RUN_FILE), final, MANIFEST)  # what auto may resume
            shutil.rmtree(staging, ignore_errors=True)
            rotate_checkpoints(output_dir=run_dir, save_total_limit=limit,
                               best_model_checkpoint=self.state.best_model_checkpoint, use_mtime=False)
        self.accelerator.wait_for_everyone()

    def _point_best_checkpoint_at(self, run_dir: str, staging: str) -> None:
        """Trainer records the best checkpoint under the directory it saved into (staging, which
        is gone after the rename): point it at checkpoint-N in the run directory."""
        best = self.state.best_model_checkpoint
        if best is not None and os.path.dirname(os.path.normpath(best)) == os.path.normpath(staging):
            self.state.best_model_checkpoint = os.path.join(run_dir, os.path.basename(os.path.normpath(best)))

    def train_loss_sum(self) -> float:
        """The sum of the per-step training losses so far, this run's earlier processes included
        (Trainer keeps only this process's: logged windows + the part not yet logged)."""
        from transformers.trainer_pt_utils import nested_gather

        pending = getattr(self, "_tr_loss", None)
        if pending is not None:
            pending = nested_gather(pending.detach().clone(), self.args.parallel_mode).mean().item()
        return self.resumed_loss_sum + getattr(self, "_total_loss_scalar", 0.0) + (pending or 0.0)

    def train(self, resume_from_checkpoint=None, **kwargs):
        """Trainer.train; train_loss is the mean over every step of the run, including the steps
        before a resume (Trainer's own averages only the steps of this call). Zero steps is an error."""
        from transformers.trainer_utils import TrainOutput

        self.resumed_loss_sum = 0.0
        if isinstance(resume_from_checkpoint, str):
            self.resumed_loss_sum = float(read_record(resume_from_checkpoint).get("train_loss_sum") or 0.0)
        self.guard.start()  # stop signals noted from here (llava_hydra.train.preemption)
        try:
            out = super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)
        finally:
            self.guard.signals.restore()
        self.guard.finish(self.state.global_step)  # after a stop signal: hands it on (exit 128 + signal)
        if self.state.global_step == 0:
            raise ValueError(f"training ran zero optimizer steps (training.num_train_epochs="
                             f"{self.args.num_train_epochs}, training.max_steps={self.args.max_steps}, "
                             f"{len(self.train_dataset)} training rows): nothing was trained, nothing is saved")
        steps_now = self.state.global_step - self._initial_global_step
        mean = (self.resumed_loss_sum + out.training_loss * steps_now) / self.state.global_step
        return TrainOutput(out.global_step, mean, {**out.metrics, "train_loss": mean})

    def _prepare_for_training(self, max_steps, train_dataloader, resume_from_checkpoint):
        """Stage 1 under DeepSpeed saves its engine state without the frozen LLM and vision tower
        (exclude_frozen_parameters=True: a 7B model's checkpoint stays megabytes). Trainer would
        load that with a strict module load, which fails on the missing frozen weights: load it
        non-strictly instead. The frozen weights are already in place from the model's own files;
        the checkpoint was written under this spec (checked before loading, llava_hydra.train.checkpoints),
        so it holds every trainable weight, and ZeRO restores them from its fp32 partitions."""
        if not (resume_from_checkpoint and self.is_deepspeed_enabled and self.save_projector_only):
            return super()._prepare_for_training(max_steps, train_dataloader, resume_from_checkpoint)
        from transformers.integrations.deepspeed import deepspeed_load_checkpoint

        model, train_dataloader = super()._prepare_for_training(max_steps, train_dataloader, None)
        deepspeed_load_checkpoint(self.model_wrapped, resume_from_checkpoint, load_module_strict=False)
        self._load_optimizer_and_scheduler(resume_from_checkpoint)
        self._load_scaler(resume_from_checkpoint)
        return model, train_dataloader

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        if self.is_deepspeed_enabled and self.save_projector_only:
            # DeepSpeed's own checkpoint would hold the whole frozen model
            from accelerate.utils import DeepSpeedSchedulerWrapper
            from transformers.trainer import SCHEDULER_NAME

            self.model_wrapped.save_checkpoint(output_dir, exclude_frozen_parameters=True)
            if self.args.should_save and not isinstance(self.lr_scheduler, DeepSpeedSchedulerWrapper):
                torch.save(self.lr_scheduler.state_dict(), os.path.join(output_dir, SCHEDULER_NAME))  # as Trainer does
            return
        super()._save_optimizer_and_scheduler(output_dir)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None):
        target = self.accelerator.unwrap_model(model if model is not None else self.model)
        if self.save_projector_only:
            from llava_hydra.model.projector import load_projector

            return load_projector(target, os.path.join(resume_from_checkpoint, PROJECTOR_FILE))
        if not is_llava_outer(target):  # PEFT-wrapped: adapter checkpoints (any family: LLaVA-NeXT, OneVision too)
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        # save_pretrained writes Llava under its legacy key names, which Trainer's own
        # load_state_dict(strict=False) would silently skip (resuming from the initial weights);
        # from_pretrained applies the renaming, and a strict copy proves every weight arrived.
        reloaded = type(target).from_pretrained(resume_from_checkpoint, dtype=target.dtype)
        target.load_state_dict(reloaded.state_dict(), strict=True)
        del reloaded


def gathered_projector_state(model) -> dict[str, torch.Tensor]:
    """The projector's weights, gathered first when ZeRO-3 or FSDP2 has sharded them (all ranks call this)."""
    params = list(model.model.multi_modal_projector.parameters())
    if any(hasattr(p, "ds_id") for p in params):
        import deepspeed

        with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
            return projector_state(model)
    return full_tensors(projector_state(model))  # FSDP2: DTensor shards gathered whole
