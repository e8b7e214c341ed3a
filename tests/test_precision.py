"""Mixed precision without DeepSpeed: under training.bf16 the trainable parameters are held in
fp32 (the Trainer's autocast computes in bf16), frozen parts stay bf16; QLoRA keeps its frozen
unquantized parts in bf16 and only adapters (and parts trained whole) in fp32. Under DeepSpeed,
which keeps fp32 master weights itself, the model stays bf16. The dtypes of every part are
read back from ``part_dtypes`` (what build_model logs)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent / "helpers"))
from local_parts import IMAGE_SIZE, NUM_PATCHES, spec_overrides  # noqa: E402

from llava_hydra.model import build_model  # noqa: E402
from llava_hydra.model.precision import part_dtypes  # noqa: E402

BF16, FP32 = "bfloat16 frozen", "float32 trained"


@pytest.fixture
def spec(compose_spec, parts, tmp_path):
    return lambda *overrides: compose_spec(*spec_overrides(parts, tmp_path), "stage=finetune",
                                           "stage.pretrain_mm_mlp_adapter=null", "training.bf16=true", *overrides)


def steps_move_every_trainable_weight(model, tokenizer, steps=3, lr=2e-5):
    """AdamW at LLaVA's finetune lr under CPU bf16 autocast (what the Trainer does): a bf16
    weight would keep most of its values (an update of ~lr is below half a bf16 ulp)."""
    torch.manual_seed(0)
    ids = torch.tensor([[tokenizer.bos_token_id] + [model.config.image_token_index] * NUM_PATCHES + [5, 6, 7, 8]] * 2)
    data = {"input_ids": ids, "labels": ids, "pixel_values": torch.rand(2, 3, IMAGE_SIZE, IMAGE_SIZE)}
    trainable = [p for p in model.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in trainable]
    optimizer = torch.optim.AdamW(trainable, lr=lr)
    for _ in range(steps):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(**data).loss
        assert torch.isfinite(loss)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    unchanged = sum((a == b).sum().item() for a, b in zip(before, trainable))
    total = sum(p.numel() for p in trainable)
    return unchanged / total


def test_bf16_full_finetune_holds_trainable_parts_in_fp32(spec, caplog):
    with caplog.at_level(logging.INFO, logger="llava_hydra.model"):
        model, tokenizer, _ = build_model(spec())
    assert part_dtypes(model) == {"vision_tower": {BF16}, "projector": {FP32}, "embeddings": {FP32},
                                  "llm_body": {FP32}, "norms": {FP32}, "lm_head": {FP32}}
    assert sum("dtypes: " in r.message for r in caplog.records) == 1  # logged once, at build
    assert "vision_tower bfloat16 frozen" in next(r.message for r in caplog.records if "dtypes: " in r.message)
    assert steps_move_every_trainable_weight(model, tokenizer) < 0.01


def test_bf16_stage1_trains_an_fp32_projector_on_a_bf16_model(spec):
    model, _, _ = build_model(spec("stage.trainable=[mm_projector]"))
    assert part_dtypes(model) == {"vision_tower": {BF16}, "projector": {FP32}, "embeddings": {BF16},
                                  "llm_body": {BF16}, "norms": {BF16}, "lm_head": {BF16}}


def test_bf16_lora_keeps_the_base_bf16_and_adapters_fp32(spec):
    model, tokenizer, _ = build_model(spec("lora=lora", "lora.r=4", "lora.alpha=8"))
    assert part_dtypes(model) == {"vision_tower": {BF16}, "projector": {FP32, BF16},  # trained copy + original
                                  "embeddings": {BF16}, "llm_body": {BF16}, "norms": {BF16}, "lm_head": {BF16},
                                  "lora_adapters": {FP32}}
    assert steps_move_every_trainable_weight(model, tokenizer, lr=1e-3) < 0.01  # lora_B starts at 0: lr big enough


def test_bf16_qlora_keeps_unquantized_frozen_parts_in_bf16(spec):
    pytest.importorskip("bitsandbytes")
    model, tokenizer, _ = build_model(spec("lora=qlora", "lora.r=4", "lora.alpha=8"))
    # not prepare_model_for_kbit_training's blanket fp32: tower, embeddings, lm_head, norms stay bf16
    assert part_dtypes(model) == {"vision_tower": {BF16}, "projector": {FP32, BF16}, "embeddings": {BF16},
                                  "llm_body": {"uint8 frozen"}, "norms": {BF16}, "lm_head": {BF16},
                                  "lora_adapters": {FP32}}
    assert steps_move_every_trainable_weight(model, tokenizer, lr=1e-3) < 0.01


def test_under_deepspeed_the_model_stays_bf16(spec):
    """DeepSpeed's bf16 mode keeps fp32 master weights of a bf16 model: nothing to do here."""
    model, _, _ = build_model(spec("deepspeed=zero2"))
    assert part_dtypes(model) == {"vision_tower": {BF16}, "projector": {"bfloat16 trained"},
                                  "embeddings": {"bfloat16 trained"}, "llm_body": {"bfloat16 trained"},
                                  "norms": {"bfloat16 trained"}, "lm_head": {"bfloat16 trained"}}


def test_fp32_default_is_unchanged(spec):
    model, _, _ = build_model(spec("training.bf16=false", "stage.trainable=[mm_projector]"))
    assert part_dtypes(model) == {"vision_tower": {"float32 frozen"}, "projector": {FP32},
                                  "embeddings": {"float32 frozen"}, "llm_body": {"float32 frozen"},
                                  "norms": {"float32 frozen"}, "lm_head": {"float32 frozen"}}


@pytest.mark.e2e
@pytest.mark.parametrize("lora", ["none", "lora"])
def test_bf16_run_trains_fp32_weights_under_the_trainers_autocast(compose_spec, tmp_path, lora):
    """The whole run under training.bf16 on CPU: the Trainer autocasts a model whose trainable
    parameters are fp32 and frozen parts bf16, and the evaluation runs under the same autocast."""
    import json

    from llava_hydra.commands.runner import run

    run(compose_spec("stage=finetune", "stage.pretrain_mm_mlp_adapter=null", "training.bf16=true", "training.use_cpu=true", f"lora={lora}",
                     "lora.r=4", "lora.alpha=8", f"paths.output_root={tmp_path}", f"paths.cache_dir={tmp_path / 'c'}",
                     "data.synthetic.num_images=32", "data.synthetic.num_text_only=8", "data.synthetic.num_eval=4",
                     "training.max_steps=2", "training.per_device_train_batch_size=4", "eval.max_samples=4"))
    run_dir = tmp_path / "tiny" / ("finetune_lora" if lora == "lora" else "finetune")  # LoRA: its own directory
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["train_steps"] == 2 and metrics["eval_samples"] == 4
    assert torch.isfinite(torch.tensor(metrics["train_loss_mean"]))
