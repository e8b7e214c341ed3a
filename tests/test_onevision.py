"""LLaVA-OneVision's pieces that need no training run: LLaVA-NeXT's qwen_1_5 prompt (text, labels, and the
chat template a saved model carries), model=tiny_onevision's spec, and the saved processor's files equal to
what transformers' LlavaOnevisionProcessor.save_pretrained writes."""

from __future__ import annotations

import json
from types import SimpleNamespace
from unittest import mock

import pytest

from llava_hydra.data.conversation import render
from llava_hydra.data.labels import IGNORE_INDEX, encode

TURNS = [{"from": "human", "value": "<image>\nWhat color is the shape?"}, {"from": "gpt", "value": "red"},
         {"from": "human", "value": "And the shape?"}, {"from": "gpt", "value": "a circle"}]
# LLaVA-NeXT's conv_qwen.get_prompt() / preprocess_qwen's apply_chat_template text for TURNS
QWEN_1_5 = ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n<image>\nWhat color is "
            "the shape?<|im_end|>\n<|im_start|>assistant\nred<|im_end|>\n<|im_start|>user\nAnd the shape?<|im_end|>\n"
            "<|im_start|>assistant\na circle<|im_end|>\n")


@pytest.fixture(scope="module")
def qwen_tok(tmp_path_factory):
    from llava_hydra.data.tiny import build_qwen2_tokenizer
    from llava_hydra.data.tokenizer import load_tokenizer

    path = tmp_path_factory.mktemp("qwen2")
    build_qwen2_tokenizer(path)
    return load_tokenizer(str(path), 512)


def test_qwen_1_5_renders_as_llava_next_and_trains_answers_and_their_im_end(qwen_tok):
    rendered = render("qwen_1_5", TURNS, tokenizer=qwen_tok)
    assert rendered.text == QWEN_1_5
    assert [rendered.text[a:b] for a, b in rendered.answer_spans] == ["red<|im_end|>", "a circle<|im_end|>"]
    assert qwen_tok.apply_chat_template([{"role": "user" if t["from"] == "human" else "assistant", "content": t["value"]}
                                         for t in TURNS], tokenize=False) == QWEN_1_5  # Qwen2-Instruct's own template
    image = qwen_tok.convert_tokens_to_ids("<image>")
    enc = encode(rendered, qwen_tok, image, [20], 512)
    start = enc.input_ids.index(image)
    assert enc.input_ids[start:start + 20] == [image] * 20 and image not in enc.input_ids[start + 20:]
    trained = qwen_tok.decode([t for t, lab in zip(enc.input_ids, enc.labels) if lab != IGNORE_INDEX])
    assert trained == "red<|im_end|>a circle<|im_end|>"
    assert enc.input_ids[:3] == qwen_tok("<|im_start|>system\n", add_special_tokens=False)["input_ids"][:3]  # no bos


def test_qwen_1_5_chat_template_prompts_as_training(qwen_tok):
    from jinja2 import Template

    from llava_hydra.data.chat_template import chat_template_for

    template = chat_template_for("qwen_1_5", qwen_tok)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What color is the shape?"}]},
                {"role": "assistant", "content": [{"type": "text", "text": "red"}]},
                {"role": "user", "content": [{"type": "text", "text": "And the shape?"}]}]
    text = Template(template).render(messages=messages, add_generation_prompt=True, bos_token=None, eos_token="<|im_end|>")
    assert text == QWEN_1_5[:QWEN_1_5.rindex("a circle")]
    assert text == render("qwen_1_5", TURNS[:3], tokenizer=qwen_tok).text


def test_tiny_onevision_spec(compose_spec, tmp_path):
    from llava_hydra.config.validate import validate

    pre = compose_spec("model=tiny_onevision", f"paths.output_root={tmp_path}")
    fin = compose_spec("model=tiny_onevision", "stage=finetune", f"paths.output_root={tmp_path}")
    for cfg in (pre, fin):
        validate(cfg, local_paths=False)
        assert (cfg.model.family, cfg.model.llm, cfg.model.vision_tower) == \
            ("llava_onevision", "builtin://tiny-qwen2", "builtin://tiny-siglip")
    assert (pre.data.image_aspect_ratio, pre.data.template, list(pre.stage.trainable)) == ("square", "plain", ["mm_projector"])
    assert (fin.data.image_aspect_ratio, fin.data.template) == ("anyres_max_9", "qwen_1_5")
    assert list(fin.stage.trainable) == ["mm_projector", "llm", "vision_tower"] and fin.training.vision_tower_lr == 2e-4


def test_saved_processor_files_are_transformers_own(qwen_tok, tmp_path):
    """SavedOnevisionProcessor (no torchvision) writes byte for byte what LlavaOnevisionProcessor.save_pretrained
    writes for the same parts (built here with its video processor stood in: torchvision is absent)."""
    from transformers import LlavaOnevisionImageProcessorPil, LlavaOnevisionProcessor, SiglipVisionConfig
    from transformers.processing_utils import ProcessorMixin
    from transformers.utils import PushToHubMixin

    from llava_hydra.data.chat_template import chat_template_for
    from llava_hydra.model.onevision_processor import (SavedOnevisionProcessor, processor_kwargs,
                                                       video_processor_dict)

    qwen_tok.chat_template = chat_template_for("qwen_1_5", qwen_tok)
    image_processor = LlavaOnevisionImageProcessorPil(size={"height": 32, "width": 32}, image_mean=[0.5] * 3,
                                                      image_std=[0.5] * 3, image_grid_pinpoints=[[32, 32], [32, 64]])
    config = SimpleNamespace(vision_config=SiglipVisionConfig(image_size=32, patch_size=8),
                             vision_feature_select_strategy="full", vision_aspect_ratio="anyres_max_9")
    assert processor_kwargs(config)["num_image_tokens"] == 16
    SavedOnevisionProcessor(qwen_tok, image_processor, config).save_pretrained(tmp_path / "ours")

    class Video(PushToHubMixin):  # LlavaOnevisionVideoProcessor's to_dict, as the video dict we write
        _auto_class = None

        def to_dict(self):
            return video_processor_dict(image_processor)

    check = ProcessorMixin.check_argument_for_proper_class
    with mock.patch.object(ProcessorMixin, "check_argument_for_proper_class",
                           lambda self, name, arg: None if name == "video_processor" else check(self, name, arg)):
        real = LlavaOnevisionProcessor(image_processor=image_processor, tokenizer=qwen_tok, video_processor=Video(),
                                       chat_template=qwen_tok.chat_template, **processor_kwargs(config))
    real.save_pretrained(tmp_path / "theirs")
    files = sorted(p.name for p in (tmp_path / "theirs").iterdir())
    assert files == sorted(p.name for p in (tmp_path / "ours").iterdir())
    assert {"processor_config.json", "chat_template.jinja", "tokenizer_config.json"} <= set(files)
    for name in files:
        assert (tmp_path / "ours" / name).read_bytes() == (tmp_path / "theirs" / name).read_bytes(), name
    saved = json.loads((tmp_path / "ours" / "processor_config.json").read_text())
    assert saved["video_processor"]["video_processor_type"] == "LlavaOnevisionVideoProcessor"
    assert (saved["image_processor"]["image_mean"], saved["video_processor"]["image_mean"]) == ([0.5] * 3, [0.5] * 3)


def test_several_images_in_a_onevision_sample_take_one_view_each_not_crops(tmp_path):
    from PIL import Image
    from transformers import LlavaOnevisionImageProcessorPil

    from llava_hydra.data.anyres import anyres_images
    from llava_hydra.data.images import ImageError, ImageSource

    for name in ("a.png", "b.png"):
        Image.new("RGB", (40, 50), (200, 30, 30)).save(tmp_path / name)
    processor = LlavaOnevisionImageProcessorPil(size={"height": 32, "width": 32}, image_grid_pinpoints=[[32, 32], [32, 64]])
    source = ImageSource(folder=tmp_path)
    one = anyres_images(source, ["a.png"], processor)
    assert one["image_sizes"].tolist() == [[50, 40]] and one["pixel_values"].shape == (2, 3, 32, 32)  # base + 1x1
    two = anyres_images(source, ["a.png", "b.png"], processor)  # tests/test_onevision_multi_image.py: the rest
    assert two["pixel_values"].shape == (2, 3, 32, 32) and two["batch_num_images"].tolist() == [2]
    with pytest.raises(ImageError, match="keeps 1 of this record's 2 images") as e:  # truncation kept one
        anyres_images(source, ["a.png"], processor, of=2)
    assert e.value.kind == "multi_image_layout"


def test_text_only_micro_batch_runs_the_anyres_tower_on_the_placeholder(compose_spec, tmp_path):
    """Several processes must run the same collectives: an AnyRes model's text-only micro-batch runs the tower on
    the zero image too (with its image size and grid crops, which get_image_features needs), changing nothing."""
    import torch

    from llava_hydra.model import build_model
    from llava_hydra.model.llava import find_llava_model

    cfg = compose_spec("model=tiny_onevision", "stage=finetune", "stage.pretrain_mm_mlp_adapter=null",
                       f"paths.output_root={tmp_path}")
    model, _, _ = build_model(cfg)
    model.train()
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    inner = find_llava_model(model)
    grads = [p.grad for p in inner.vision_tower.parameters() if p.grad is not None]  # the layers up to -2 ran
    assert len(grads) > 10 and all(not g.abs().sum() for g in grads)  # ... and got a zero gradient
    with torch.no_grad():
        model.eval()  # no placeholder in eval mode: the same loss
        assert torch.allclose(model(input_ids=ids, labels=ids).loss, loss.detach())

    torch.manual_seed(123)  # the newline's init does not depend on the global RNG: a rebuilt base (LoRA merge,
    again, _, _ = build_model(cfg)  # eval of an adapter) holds the frozen newline training saw
    assert torch.equal(find_llava_model(again).image_newline, inner.image_newline.detach())
