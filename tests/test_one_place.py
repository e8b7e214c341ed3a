"""One place per concept: the part table (model.llava.PARTS) that freezing, LoRA, the optimizer's
groups and the trackers read; one process-group start; each config rule checked by one function."""

from __future__ import annotations

import pytest
from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

from llava_hydra.config import CHOICES
from llava_hydra.model.llava import OWN_LR, PARTS, trainable_modules
from llava_hydra.model.lora import whole_modules
from llava_hydra.param_groups import parameter_groups, part_by_param


@pytest.fixture(scope="module")
def llava():
    vision = CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                              image_size=32, patch_size=8)
    text = LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                       num_key_value_heads=2, vocab_size=64)
    return LlavaForConditionalGeneration._from_config(LlavaConfig(vision_config=vision, text_config=text))


def test_the_pre_flight_accepts_exactly_the_parts_of_the_table():
    assert set(CHOICES["stage.trainable"]) == set(PARTS) == {"llm", "mm_projector", "vision_tower"}
    assert OWN_LR == {"mm_projector": "mm_projector_lr", "vision_tower": "vision_tower_lr"}


def test_every_parameter_belongs_to_the_part_that_trains_it(llava):
    part = part_by_param(llava)
    inner = llava.model
    assert {part[id(p)] for p in inner.vision_tower.parameters()} == {"vision_tower"}
    assert {part[id(p)] for p in inner.multi_modal_projector.parameters()} == {"mm_projector"}
    assert {part[id(p)] for p in [*inner.language_model.parameters(), *llava.lm_head.parameters()]} == {"llm"}
    assert len(part) == len(list(llava.parameters()))  # none left out
    assert trainable_modules(llava, ["llm"]) == [inner.language_model, llava.lm_head]
    assert trainable_modules(llava, ["vision_tower", "mm_projector"]) == [inner.vision_tower, inner.multi_modal_projector]


def test_a_rate_no_part_has_is_refused(llava):
    with pytest.raises(TypeError, match="lm_head_lr"):
        parameter_groups(llava, set(), 0.0, lm_head_lr=1e-3)


def test_lora_trains_the_other_parts_whole_by_their_module_names():
    assert whole_modules(["mm_projector", "llm", "vision_tower"]) == ["multi_modal_projector", "vision_tower"]
    assert whole_modules(["llm"]) == []
