"""One place per concept: the part table (model.llava.PARTS) that freezing, LoRA, the optimizer's
groups and the trackers read; one process-group start; each config rule checked by one function."""

from __future__ import annotations

import pytest
from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

from llava_hydra.config.schema import CHOICES
from llava_hydra.model.llava import OWN_LR, PARTS, trainable_modules
from llava_hydra.model.lora import whole_modules
from llava_hydra.train.param_groups import parameter_groups, part_by_param


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


# -- each config rule checked by one function, wherever the value arrives --------------------------

def refusal(fn) -> str:
    with pytest.raises(ValueError) as e:
        fn()
    return str(e.value)


def test_length_grouping_is_refused_by_the_same_line_everywhere(compose_spec, tmp_path):
    from llava_hydra.sampling.sampler import LengthGroupedSampler
    from llava_hydra.train.trainer import LlavaTrainingArguments
    from llava_hydra.config.validate import validate

    line = ("training.length_grouping='balanced': not one of random_steps, llava, sorted_steps "
            "('balanced' is now called 'sorted_steps'; it changes what each step averages)")
    assert line in refusal(lambda: validate(compose_spec("training.length_grouping=balanced"), local_paths=False))
    assert refusal(lambda: LlavaTrainingArguments(output_dir=str(tmp_path), length_grouping="balanced")) == line
    assert refusal(lambda: LengthGroupedSampler(2, 2, [1, 2], mode="balanced")) == line


def test_select_feature_is_refused_by_the_same_line_everywhere(compose_spec):
    from llava_hydra.data.image_tokens import select_strategy
    from llava_hydra.model import build_model
    from llava_hydra.config.validate import validate

    line = "model.mm_vision_select_feature='cls': not one of patch, cls_patch (did you mean 'cls_patch'?)"
    spec = compose_spec("model.mm_vision_select_feature=cls")
    assert line in refusal(lambda: validate(spec, local_paths=False))
    assert refusal(lambda: build_model(spec)) == line  # before anything is loaded
    assert refusal(lambda: select_strategy("cls", has_cls=True)) == line
    assert "SigLIP" in refusal(lambda: select_strategy("cls_patch", has_cls=False))  # its own rule, kept


@pytest.mark.parametrize("fill, problem", [(0.0, "training.packing_fill=0.0: must be in (0, 1]"),
                                           (1.5, "training.packing_fill=1.5: must be in (0, 1]"),
                                           (-0.2, "training.packing_fill=-0.2: must be in (0, 1]")])
def test_a_packing_fill_outside_0_1_is_named_by_key(compose_spec, fill, problem):
    from llava_hydra.sampling.packing_rows import pack_rows
    from llava_hydra.config.validate import SpecError, validate

    with pytest.raises(SpecError) as e:
        validate(compose_spec(f"training.packing_fill={fill}"), local_paths=False)
    assert str(e.value).splitlines()[1:] == [f"  {problem}"]
    assert refusal(lambda: pack_rows([10, 20, -5], 64, fill=fill)) == problem


def test_a_fill_of_one_is_allowed():
    from llava_hydra.config.validate import in_range

    assert [in_range(v, "(0, 1]") for v in (0, 1e-9, 0.86, 1, 1.01)] == [False, True, True, True, False]
    assert [in_range(v, "[0, 1)") for v in (0, 1)] == [True, False]
