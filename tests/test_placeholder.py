"""The placeholder pass (llava_hydra.model.placeholder), one process: a training micro-batch
without images runs the vision tower and projector once on a zero image and changes nothing
else: the same loss and the same gradients to the bit, a zero gradient (not none) for the tower
and projector; no extra pass with images, in eval mode, or when nothing of the tower learns."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

from llava_hydra.model.placeholder import run_tower_on_text_only

IMAGE_TOKEN = 63


@pytest.fixture(scope="module")
def plain():
    torch.manual_seed(0)
    vision = CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                              image_size=32, patch_size=8)
    text = LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                       num_key_value_heads=2, vocab_size=64)
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_id=IMAGE_TOKEN, image_seq_length=16,
                         vision_feature_layer=-2)
    return LlavaForConditionalGeneration._from_config(config).train()


def tower_calls(model) -> list:
    calls = []
    model.model.vision_tower.register_forward_hook(lambda *_: calls.append(1))
    return calls


def text_batch() -> dict:
    ids = torch.tensor([[1, 5, 9, 12, 40, 41, 2], [1, 7, 8, 30, 2, 0, 0]])
    labels = ids.masked_fill(ids == 0, -100)
    return {"input_ids": ids, "attention_mask": (ids != 0).long(), "labels": labels}


def loss_and_grads(model, batch):
    model.zero_grad(set_to_none=True)
    loss = model(**batch).loss
    loss.backward()
    return loss.detach(), {n: p.grad for n, p in model.named_parameters()}


def test_a_text_only_batch_gets_the_same_loss_and_gradients_and_a_zero_tower_gradient(plain):
    patched = copy.deepcopy(plain)
    run_tower_on_text_only(patched)
    calls = tower_calls(patched)
    loss, grads = loss_and_grads(plain, text_batch())
    patched_loss, patched_grads = loss_and_grads(patched, text_batch())
    assert len(calls) == 1
    assert torch.equal(patched_loss, loss)
    zeroed = 0
    for name, grad in grads.items():
        if grad is not None:
            assert torch.equal(patched_grads[name], grad), name
        elif "vision_tower" in name or "multi_modal_projector" in name:
            if patched_grads[name] is not None:  # layers after the selected one get none either way
                assert not patched_grads[name].any(), name
                zeroed += 1
        else:
            assert patched_grads[name] is None, name
    assert zeroed >= 4 and all(patched_grads[f"model.multi_modal_projector.{k}"] is not None
                               for k in ("linear_1.weight", "linear_2.weight"))


def test_no_placeholder_with_images_in_eval_or_when_the_tower_side_is_frozen(plain):
    patched = copy.deepcopy(plain)
    run_tower_on_text_only(patched)
    calls = tower_calls(patched)
    ids = torch.tensor([[1, *[IMAGE_TOKEN] * 16, 5, 9, 2]])
    patched(input_ids=ids, pixel_values=torch.zeros(1, 3, 32, 32), labels=ids)
    assert len(calls) == 1  # the image's own pass, nothing extra
    with torch.no_grad():
        patched.eval()(**text_batch())
    assert len(calls) == 1
    patched.train()
    patched.model.vision_tower.requires_grad_(False)
    patched.model.multi_modal_projector.requires_grad_(False)
    patched(**text_batch())  # one process, nothing of the tower side learns: no collective to match
    assert len(calls) == 1
