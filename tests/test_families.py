"""model.family: the spec's fields and their checks, the family -> transformers class registry used
by assembly and processor saving, and the tiny AnyRes model (model=tiny_next) built from it."""

from __future__ import annotations

import pytest
import torch

from llava_hydra.config.validate import SpecError, validate


@pytest.fixture
def spec(compose_spec, tmp_path):
    return lambda *o: compose_spec(f"paths.output_root={tmp_path}", *o)


def test_tiny_next_spec(spec):
    fin, pre = spec("model=tiny_next", "stage=finetune"), spec("model=tiny_next")
    assert (fin.model.family, fin.data.image_aspect_ratio) == ("llava_next", "anyres")
    assert list(map(list, fin.model.image_grid_pinpoints)) == [[32, 64], [64, 32], [64, 64], [96, 32], [32, 96]]
    assert pre.data.image_aspect_ratio == "square"  # stage 1 on the base view, as LLaVA-NeXT's pretrain scripts
    assert spec().model.family == "llava"  # the default


@pytest.mark.parametrize("overrides, message", [
    (["data.image_aspect_ratio=anyres"], "model.family='llava' has none"),
    (["model=tiny_next", "stage=finetune", "data.image_aspect_ratio=anyres_max_9"], "takes anyres"),
    (["model=tiny_next", "stage=finetune", "model.mm_patch_merge_type=flat"], "spatial_unpad only"),
    (["model=tiny_next", "model.mm_patch_merge_type=spatial_unpad"], "needs an AnyRes data.image_aspect_ratio"),
    (["model=tiny_next", "stage=finetune", "model.mm_vision_select_feature=cls_patch"], "no place for a CLS"),
    (["model.family=llava_nxt"], "model.family='llava_nxt': not one of llava, llava_next, llava_onevision"),
])
def test_family_mismatches_are_refused_by_key(spec, overrides, message):
    with pytest.raises(SpecError, match=message):
        validate(spec(*overrides), local_paths=False)


def test_registry_names_transformers_classes():
    import transformers

    from llava_hydra.config.families import FAMILIES, trained_family

    for fam in FAMILIES.values():
        for name in (fam.model, fam.config, fam.processor, fam.image_processor):
            assert name is None or hasattr(transformers, name), name
    assert FAMILIES["llava_next"].model == "LlavaNextForConditionalGeneration"
    assert FAMILIES["llava_onevision"].processor == "LlavaOnevisionProcessor"
    assert trained_family("llava_next", "square") == "llava" and trained_family("llava_next", "anyres") == "llava_next"


def test_tiny_next_assembles_as_llava_next(spec):
    from transformers import LlavaForConditionalGeneration, LlavaNextForConditionalGeneration, LlavaNextProcessor

    from llava_hydra.model import build_model, make_processor
    from llava_hydra.model.llava import part_modules

    cfg = spec("model=tiny_next", "stage=finetune", "stage.pretrain_mm_mlp_adapter=null")
    model, tokenizer, image_processor = build_model(cfg)
    assert type(model) is LlavaNextForConditionalGeneration
    assert model.config.image_grid_pinpoints == [[32, 64], [64, 32], [64, 64], [96, 32], [32, 96]]
    newline = model.model.image_newline
    assert newline.device.type == "cpu" and newline.shape == (128,) and newline.requires_grad  # trains with the llm
    assert 0.3 < float(newline.detach().std() * 128 ** 0.5) < 3  # LLaVA-NeXT's init: randn / sqrt(hidden)
    assert any(p is newline for m in part_modules(model)["llm"] for p in m.parameters())
    assert type(image_processor).__name__ == "LlavaNextImageProcessorPil"
    assert image_processor.crop_size["height"] == 32 and image_processor.size["shortest_edge"] == 32
    proc = make_processor(tokenizer, image_processor, model, "v1")
    assert isinstance(proc, LlavaNextProcessor) and proc.patch_size == 8

    stage1, _, _ = build_model(spec("model=tiny_next"))  # square aspect: LLaVA-NeXT's flat stage 1
    assert type(stage1) is LlavaForConditionalGeneration
    assert not any(p.requires_grad for n, p in stage1.named_parameters() if "multi_modal_projector" not in n)


def test_tiny_next_forward_with_anyres_inputs(spec):
    """Crops of two images of different sizes, concatenated (4-D pixel_values) with image_sizes: the model
    fills exactly the token runs the data side counts (16 + unpadded crops + a newline per row)."""
    from llava_hydra.data.image_tokens import tokens_for_config
    from llava_hydra.model import build_model

    model, tokenizer, _ = build_model(spec("model=tiny_next", "stage=finetune", "stage.pretrain_mm_mlp_adapter=null"))
    rule = tokens_for_config(model.config)
    sizes = [(30, 50), (64, 64)]
    assert rule(sizes) == [44, 88]
    img = model.config.image_token_index
    ids = torch.tensor([[tokenizer.bos_token_id] + [img] * 44 + [5, 6] + [img] * 88 + [7]])
    pixels = torch.randn(3 + 5, 3, 32, 32)  # 1x2 grid + base, 2x2 grid + base
    out = model(input_ids=ids, pixel_values=pixels, image_sizes=torch.tensor(sizes), labels=ids)
    assert out.logits.shape[1] == 1 + 44 + 2 + 88 + 1 and torch.isfinite(out.loss)
    with pytest.raises(ValueError, match="do not match"):  # one token short: transformers refuses
        model(input_ids=torch.cat([ids[:, :1], ids[:, 2:]], 1), pixel_values=pixels, image_sizes=torch.tensor(sizes))
