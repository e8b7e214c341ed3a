"""LLaVATrainer's arguments: choices checked up front, LLaVA's zero3_offload hole closed."""

from __future__ import annotations

import pytest

from llava_hydra.trainer import LlavaTrainingArguments

ZERO2_WITH_OPTIMIZER = {"zero_optimization": {"stage": 2}, "train_micro_batch_size_per_gpu": "auto",
                        "optimizer": {"type": "AdamW", "params": {"lr": "auto"}}}


def test_deepspeed_optimizer_would_drop_the_projector_rate(tmp_path):
    with pytest.raises(ValueError, match="mm_projector_lr=2e-05"):
        LlavaTrainingArguments(output_dir=str(tmp_path), mm_projector_lr=2e-5, deepspeed=ZERO2_WITH_OPTIMIZER)


def test_unknown_length_grouping_is_refused(tmp_path):
    with pytest.raises(ValueError, match="length_grouping"):
        LlavaTrainingArguments(output_dir=str(tmp_path), length_grouping="sorted")


def test_recipe_zero3_offload_keeps_the_projector_rate(compose_spec):
    from omegaconf import OmegaConf

    cfg = compose_spec("stage=finetune", "model=vicuna7b", "deepspeed=zero3_offload", "lora=lora")
    assert "optimizer" not in OmegaConf.to_container(cfg.deepspeed) and cfg.training.mm_projector_lr == 2e-5
