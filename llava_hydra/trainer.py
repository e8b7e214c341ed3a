"""LLaVATrainer: Hugging Face's Trainer with LLaVA's three customisations.

1. The train sampler groups samples by modality and length (``group_by_modality_length``).
2. The optimizer gets separate parameter groups for the projector (``mm_projector_lr``) and
   the vision tower (``vision_tower_lr``), found from the model's structure.
3. Checkpoints of a projector-only stage hold the projector, not the frozen LLM.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass

import torch
from transformers import Trainer, TrainingArguments

from llava_hydra.model import PROJECTOR_FILE, projector_state
from llava_hydra.sampler import LengthGroupedSampler

log = logging.getLogger(__name__)


@dataclass
class LlavaTrainingArguments(TrainingArguments):
    mm_projector_lr: float | None = None
    vision_tower_lr: float | None = None
    group_by_modality_length: bool = False


def _llava_core(model):
    """The LlavaModel inside ``model`` (found by type, so PEFT or DeepSpeed wrapping is fine)."""
    from transformers.models.llava.modeling_llava import LlavaModel

    for module in model.modules():
        if isinstance(module, LlavaModel):
            return module
    raise TypeError(f"{type(model).__name__} contains no LlavaModel")


def parameter_groups(model, decay_names: set[str], weight_decay: float,
                     mm_projector_lr: float | None = None, vision_tower_lr: float | None = None) -> list[dict]:
    """Optimizer groups: (part, decay) for each trainable part with its own learning rate.

    Parts with no learning rate of their own join the "base" groups at the base rate. Empty
    groups are dropped; frozen parameters appear in none."""
    core = _llava_core(model)
    part_of = {id(p): "mm_projector" for p in core.multi_modal_projector.parameters()}
    part_of.update({id(p): "vision_tower" for p in core.vision_tower.parameters()})
    own_lr = {"mm_projector": mm_projector_lr, "vision_tower": vision_tower_lr}
    groups: dict[tuple[str, bool], dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        part = part_of.get(id(p), "base")
        if own_lr.get(part) is None:
            part = "base"
        decay = name in decay_names
        group = groups.setdefault((part, decay), {"params": [], "weight_decay": weight_decay if decay else 0.0,
                                                  "name": f"{part}_{'decay' if decay else 'no_decay'}"})
        if part != "base":
            group["lr"] = own_lr[part]
        group["params"].append(p)
    return list(groups.values())


class LLaVATrainer(Trainer):
    def __init__(self, *args, save_projector_only: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.save_projector_only = save_projector_only

    def _get_train_sampler(self, train_dataset=None):
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if not self.args.group_by_modality_length:
            return super()._get_train_sampler(dataset)
        return LengthGroupedSampler(
            self.args.train_batch_size,
            world_size=self.args.world_size * self.args.gradient_accumulation_steps,
            lengths=dataset.modality_lengths,
            group_by_modality=True,
        )

    def create_optimizer(self, model=None):
        opt_model = self.model if model is None else model
        if self.optimizer is None:
            groups = parameter_groups(opt_model, set(self.get_decay_parameter_names(opt_model)),
                                      self.args.weight_decay, self.args.mm_projector_lr, self.args.vision_tower_lr)
            for g in groups:
                log.info("optimizer group %s: %d tensors, lr %s, weight decay %s", g["name"], len(g["params"]),
                         g.get("lr", self.args.learning_rate), g["weight_decay"])
            optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
            self.optimizer = optimizer_cls(groups, **optimizer_kwargs)
        return self.optimizer

    def _save(self, output_dir: str | None = None, state_dict=None):
        if not self.save_projector_only:
            return super()._save(output_dir, state_dict)
        from safetensors.torch import save_file

        output_dir = output_dir or self.args.output_dir
        os.makedirs(output_dir, exist_ok=True)
        model = self.accelerator.unwrap_model(self.model)
        save_file(projector_state(model), os.path.join(output_dir, PROJECTOR_FILE), metadata={"format": "pt"})
        model.config.save_pretrained(output_dir)
        with open(os.path.join(output_dir, "training_args.json"), "w") as f:
            json.dump(self.args.to_dict(), f, indent=1, default=str)
