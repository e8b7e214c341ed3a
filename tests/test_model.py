"""Model building: unknown parts refused, optimizer groups, gradients under checkpointing
(freezing itself: test_models_assembly.py)."""

from __future__ import annotations

import pytest
import torch

from llava_hydra.model import build_model
from llava_hydra.train.param_groups import parameter_groups


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


def test_unknown_trainable_part_is_an_error(compose_spec, cache):
    with pytest.raises(ValueError, match="lm_only"):
        build_model(compose_spec(f"paths.cache_dir={cache}", "stage.trainable=[lm_only]"))


def test_assembled_model_matches_the_tiny_parts(compose_spec, cache):
    model, tokenizer, _ = build_model(compose_spec(f"paths.cache_dir={cache}"))
    assert model.config.image_token_index == tokenizer.convert_tokens_to_ids("<image>")
    assert model.config.image_seq_length == 16  # 32 px / patch 8 -> 4 x 4 patches, CLS dropped
    assert model.get_input_embeddings().weight.shape[0] == len(tokenizer)
    pixels = torch.zeros(1, 3, 32, 32)
    ids = torch.tensor([[tokenizer.bos_token_id] + [model.config.image_token_index] * 16 + [5, 6]])
    assert model(input_ids=ids, pixel_values=pixels).logits.shape == (1, 19, len(tokenizer))


def test_optimizer_groups_read_back(compose_spec, cache):
    model, _, _ = build_model(compose_spec(f"paths.cache_dir={cache}", "stage=finetune",
                                           "stage.pretrain_mm_mlp_adapter=null"))
    decay = {n for n, p in model.named_parameters() if p.ndim >= 2}
    groups = {g["name"]: g for g in parameter_groups(model, decay, 0.1, mm_projector_lr=2e-5)}
    assert set(groups) == {"base_decay", "base_no_decay", "mm_projector_decay", "mm_projector_no_decay"}
    assert groups["mm_projector_decay"]["lr"] == groups["mm_projector_no_decay"]["lr"] == 2e-5
    assert "lr" not in groups["base_decay"]  # the optimizer's base rate
    assert groups["base_no_decay"]["weight_decay"] == 0.0 and groups["base_decay"]["weight_decay"] == 0.1
    in_groups = [id(p) for g in groups.values() for p in g["params"]]
    assert sorted(in_groups) == sorted(id(p) for p in model.parameters() if p.requires_grad)
    projector = {id(p) for p in model.model.multi_modal_projector.parameters()}
    assert {id(p) for p in groups["mm_projector_decay"]["params"] + groups["mm_projector_no_decay"]["params"]} \
        == projector
    assert len(parameter_groups(model, decay, 0.1)) == 2  # without mm_projector_lr: decay / no decay


def image_batch(model):
    config = model.config
    n, size = config.image_seq_length, config.vision_config.image_size
    ids = torch.tensor([[1] + [config.image_token_index] * n + list(range(5, 25))])
    return {"input_ids": ids, "labels": ids.clone(), "pixel_values": torch.randn(1, 3, size, size)}


@pytest.mark.parametrize("overrides", [[], ["lora=lora", "lora.r=4", "lora.alpha=8"],
                                       ["stage.trainable=[mm_projector,llm,vision_tower]"]],
                         ids=["full", "lora", "vision-trainable"])
def test_checkpointing_keeps_a_frozen_vision_tower_out_of_backward(compose_spec, cache, overrides):
    """Gradient checkpointing (as the Trainer turns it on) hooks the LLM's token embeddings so
    gradients flow, but a frozen vision tower runs forward only; every trainable part learns."""
    spec = compose_spec(f"paths.cache_dir={cache}", "stage=finetune", "stage.pretrain_mm_mlp_adapter=null",
                        "training.gradient_checkpointing=true", *overrides)
    model, _, _ = build_model(spec)
    model.activation_checkpointing_enable()  # what the Trainer calls for activation_checkpointing=true
    model.train()
    tower = next(m for m in model.modules() if type(m).__name__ == "CLIPVisionModel")
    seen = []
    tower.register_forward_hook(lambda module, args, out: seen.append(out.last_hidden_state.requires_grad))
    model(**image_batch(model)).loss.backward()
    assert seen == ["vision_tower" in spec.stage.trainable]
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and {n for n, p in model.named_parameters() if p.grad is not None} == trainable
