"""The processor chat and eval use for a OneVision LoRA run without torchvision: the run's processor is made in
memory from the rebuilt base (a ``SavedOnevisionProcessor``, which only writes files), so eval/loading.py turns it
into the image-and-text ``LlavaOnevisionProcessor`` a saved folder loads as. Both must prompt and encode alike."""

from __future__ import annotations

from types import SimpleNamespace

import torch
from PIL import Image


def test_adapter_runs_processor_encodes_as_the_saved_folders(tmp_path):
    from transformers import LlavaOnevisionImageProcessorPil, LlavaOnevisionProcessor, SiglipVisionConfig

    from llava_hydra.data.chat_template import chat_template_for
    from llava_hydra.data.tiny import build_qwen2_tokenizer
    from llava_hydra.data.tokenizer import load_tokenizer
    from llava_hydra.eval.generation import encode, render, user_message
    from llava_hydra.model.onevision_processor import SavedOnevisionProcessor, inference_processor, serving

    build_qwen2_tokenizer(tmp_path / "tok")
    tokenizer = load_tokenizer(str(tmp_path / "tok"), 512)
    tokenizer.add_tokens(["<image>", "<video>"], special_tokens=True)
    tokenizer.chat_template = chat_template_for("qwen_1_5", tokenizer)
    image_processor = LlavaOnevisionImageProcessorPil(size={"height": 32, "width": 32}, image_mean=[0.5] * 3,
                                                      image_std=[0.5] * 3,
                                                      image_grid_pinpoints=[[32, 32], [64, 32], [32, 64]])
    config = SimpleNamespace(vision_config=SiglipVisionConfig(image_size=32, patch_size=8),
                             vision_feature_select_strategy="full", vision_aspect_ratio="anyres_max_9")
    saving = SavedOnevisionProcessor(tokenizer, image_processor, config)
    saving.save_pretrained(tmp_path / "saved")
    in_memory, from_files = serving(saving), inference_processor(tmp_path / "saved")
    assert isinstance(in_memory, LlavaOnevisionProcessor) and serving(in_memory) is in_memory

    image = tmp_path / "tall.png"
    Image.new("RGB", (30, 70), (200, 30, 30)).save(image)
    messages = [user_message("What shape is this?", image=True)]
    prompt = render(in_memory, messages)
    assert prompt == render(from_files, messages) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n<image>\nWhat shape is this?"
        "<|im_end|>\n<|im_start|>assistant\n")
    ours, theirs = (encode(p, [prompt], [str(image)], "anyres_max_9") for p in (in_memory, from_files))
    for key in ("input_ids", "attention_mask", "pixel_values", "image_sizes"):
        assert torch.equal(ours[key], theirs[key]), key
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    # 16 base tokens + a 2x1 grid (70x30 fits 64x32): 8 rows of 4 features + a newline per row
    assert ours["input_ids"][0].tolist().count(image_id) == 16 + 8 * 4 + 8
    assert ours["image_sizes"].tolist() == [[70, 30]] and ours["pixel_values"].shape == (1, 3, 3, 32, 32)
