"""model=tiny_onevision end to end, in one process: stage 1 (projector, base view, plain) -> stage 2
(anyres_max_9 crops, qwen_1_5 prompts, vision tower at its own learning rate), and what stage 2 saves loads
as LlavaOnevisionForConditionalGeneration + LlavaOnevisionProcessor (a stock client: helpers/onevision_client.py)
and answers as our eval app does, from the very ids and pixels training's encoding makes."""

from __future__ import annotations

import json

import pytest
import torch

from llava_hydra.commands.runner import run

pytestmark = pytest.mark.slow

SMALL = ["model=tiny_onevision", "data.synthetic.num_images=48", "data.synthetic.num_text_only=8",
         "data.synthetic.num_eval=8", "training.max_steps=3", "training.per_device_train_batch_size=4",
         "training.save_steps=2", "training.logging_steps=1"]


def test_stage1_then_stage2_then_stock_transformers(compose_spec, tmp_path):
    from transformers import LlavaOnevisionForConditionalGeneration, LlavaOnevisionProcessor
    from onevision_client import stock_processor

    from llava_hydra.data.records import images_of, normalize_turns
    from llava_hydra.data.spec import data_parts, spec_dataset
    from llava_hydra.eval.generation import answer, render, user_message
    from llava_hydra.eval.heldout import prompt_and_reference

    paths = [f"paths.output_root={tmp_path}", f"paths.cache_dir={tmp_path / 'cache'}"]
    run(compose_spec(*paths, *SMALL))
    assert (tmp_path / "tiny_onevision" / "pretrain" / "mm_projector.safetensors").exists()
    spec = compose_spec("stage=finetune", *paths, *SMALL)
    assert list(spec.stage.trainable) == ["mm_projector", "llm", "vision_tower"] and spec.training.vision_tower_lr == 2e-4
    accuracy = run(spec)
    fin = tmp_path / "tiny_onevision" / "finetune"
    metrics = json.loads((fin / "metrics.json").read_text())
    assert metrics["train_steps"] == 3 and metrics["eval_samples"] == 8 and metrics["eval_accuracy"] == accuracy
    saved = json.loads((fin / "processor_config.json").read_text())
    assert (saved["processor_class"], saved["vision_aspect_ratio"], saved["num_image_tokens"]) == \
        ("LlavaOnevisionProcessor", "anyres_max_9", 16)
    assert saved["video_processor"]["size"] == {"height": 32, "width": 32}

    model = LlavaOnevisionForConditionalGeneration.from_pretrained(fin).eval()
    assert model.config.vision_aspect_ratio == "anyres_max_9" and model.config.vision_feature_select_strategy == "full"
    assert model.config.image_grid_pinpoints[:3] == [[32, 32], [32, 64], [32, 96]]
    assert len(model.config.image_grid_pinpoints) == 36 and model.config.image_grid_pinpoints[-1] == [192, 192]
    processor = stock_processor(fin)
    assert isinstance(processor, LlavaOnevisionProcessor)
    assert type(processor.image_processor).__name__.startswith("LlavaOnevisionImageProcessor")

    tokenizer, image_processor, rule = data_parts(spec)
    ds = spec_dataset(spec, spec.data.eval_data_path, tokenizer, image_processor, rule)
    folder = spec.data.image_folder
    for i in range(2):
        record = ds.records[i]
        question = normalize_turns(record)[0]["value"].replace("<image>", "").strip()
        prompt = render(processor, [user_message(question, image=True)])
        assert prompt == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n<image>\n"
                          f"{question}<|im_end|>\n<|im_start|>assistant\n")  # LLaVA-NeXT's qwen_1_5
        (name,) = images_of(record)
        message = {"role": "user", "content": [{"type": "image", "path": f"{folder}/{name}"},
                                               {"type": "text", "text": question}]}
        theirs = processor.apply_chat_template([message], add_generation_prompt=True, tokenize=True,
                                               return_dict=True, return_tensors="pt")  # a stock client
        ours_ids, _ = prompt_and_reference(ds, i)  # training's encoding of the same prompt (in-run eval)
        assert theirs["input_ids"][0].tolist() == ours_ids
        stock = model.generate(**theirs, max_new_tokens=6, do_sample=False)
        stock = processor.tokenizer.decode(stock[0, theirs["input_ids"].shape[1]:], skip_special_tokens=True).strip()
        assert answer(model, processor, [prompt], [f"{folder}/{name}"], "anyres_max_9", max_new_tokens=6,
                      do_sample=False) == [stock]
        with torch.no_grad():  # the pixels are training's: the dataset's sample holds the same crops, within
            crops = ds.build(i)["pixel_values"]  # README's 2 levels of 8 bits (data/anyres_pixels.py)
            std = min(processor.image_processor.image_std)
            assert (crops - theirs["pixel_values"][0][:len(crops)]).abs().max() <= 2 / (255 * std) + 1e-5

    # python -m llava_hydra.chat / .eval load the folder the same way: OneVision class, its processor, its aspect;
    # a padded batch of two prompts answers as each prompt alone (the tokenizer has its own <video> token)
    from llava_hydra.eval.loading import load_for_inference

    loaded, inference, aspect = load_for_inference(fin, device="cpu")
    assert type(loaded) is LlavaOnevisionForConditionalGeneration and aspect == "anyres_max_9"
    assert processor.tokenizer.convert_tokens_to_ids("<video>") == loaded.config.video_token_id != \
        processor.tokenizer.pad_token_id
    questions = [normalize_turns(ds.records[i])[0]["value"].replace("<image>", "").strip() for i in range(2)]
    prompts = [render(inference, [user_message(q, image=True)]) for q in questions]
    images = [f"{folder}/{images_of(ds.records[i])[0]}" for i in range(2)]
    alone = [answer(loaded, inference, [p], [im], aspect, max_new_tokens=6, do_sample=False)[0]
             for p, im in zip(prompts, images)]
    assert answer(loaded, inference, prompts, images, aspect, max_new_tokens=6, do_sample=False) == alone


def test_ov_stage_continues_from_the_si_model(compose_spec, tmp_path):
    """experiment=onevision_7b_ov's shape at tiny size: stage 2 again, from the saved OneVision model
    (model.pretrained_llava, no projector file), into its own run directory; it saves a OneVision model again."""
    from transformers import LlavaOnevisionForConditionalGeneration

    paths = [f"paths.output_root={tmp_path}", f"paths.cache_dir={tmp_path / 'cache'}"]
    run(compose_spec(*paths, *SMALL))
    run(compose_spec("stage=finetune", *paths, *SMALL))
    si = tmp_path / "tiny_onevision" / "finetune"
    ov = compose_spec("stage=finetune", *paths, *SMALL, f"model.pretrained_llava={si}", "stage.pretrain_mm_mlp_adapter=null",
                      f"training.output_dir={tmp_path / 'ov'}")
    run(ov)
    model = LlavaOnevisionForConditionalGeneration.from_pretrained(tmp_path / "ov")
    before = LlavaOnevisionForConditionalGeneration.from_pretrained(si)
    assert model.config.vision_aspect_ratio == "anyres_max_9"
    assert json.loads((tmp_path / "ov" / "processor_config.json").read_text())["processor_class"] == "LlavaOnevisionProcessor"
    step = (model.model.image_newline - before.model.image_newline).abs().max().item()
    assert 0 < step < 0.05  # 3 more steps from the si model's newline (a fresh one is randn / sqrt(128))
