"""LLaVATrainer's arguments: choices checked up front, LLaVA's zero3_offload hole closed."""

from __future__ import annotations

import pytest

from llava_hydra.train.trainer import LlavaTrainingArguments

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


def test_best_checkpoint_is_the_renamed_directory_and_survives_rotation(compose_spec, tmp_path):
    """Checkpoints are written into a staging directory and renamed: Trainer's record of the best
    checkpoint must name checkpoint-N in the run directory (in memory and in the saved
    trainer_state.json), so load_best_model_at_end finds it and rotation keeps it."""
    import json

    from llava_hydra.model import build_model
    from llava_hydra.train.trainer import LLaVATrainer

    model, _, _ = build_model(compose_spec(f"paths.cache_dir={tmp_path / 'cache'}"))
    run_dir = tmp_path / "run"
    args = LlavaTrainingArguments(output_dir=str(run_dir), save_strategy="steps", save_steps=1, save_total_limit=1,
                                  save_only_model=True, report_to=[], use_cpu=True)
    trainer = LLaVATrainer(model=model, args=args, save_projector_only=True)
    trainer.state.global_step = trainer.state.best_global_step = 2
    trainer._save_checkpoint(trainer.model, None)
    best = str(run_dir / "checkpoint-2")
    assert trainer.state.best_model_checkpoint == best
    assert json.loads((run_dir / "checkpoint-2" / "trainer_state.json").read_text())["best_model_checkpoint"] == best
    trainer.state.global_step = 4  # a later checkpoint that is not the best: rotation keeps the best one
    trainer._save_checkpoint(trainer.model, None)
    assert sorted(p.name for p in run_dir.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    assert trainer.state.best_model_checkpoint == best
    assert not (run_dir / ".checkpoint-staging").exists()
