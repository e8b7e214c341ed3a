"""model=tiny_next end to end, in one process: stage 1 (projector, base view) -> stage 2 (AnyRes crops),
and what stage 2 saves loads as LlavaNextForConditionalGeneration + AutoProcessor and answers as our
eval app does, from the very ids training's prompt encoding makes."""

from __future__ import annotations

import json

import pytest
import torch

from llava_hydra.commands.runner import run

pytestmark = pytest.mark.e2e

SMALL = ["model=tiny_next", "data.synthetic.num_images=48", "data.synthetic.num_text_only=8",
         "data.synthetic.num_eval=8", "training.max_steps=3", "training.per_device_train_batch_size=4",
         "training.save_steps=2", "training.logging_steps=1"]


@pytest.mark.parametrize("llm", [
    [],  # tiny Llama, Vicuna v1 chats (LLaVA-NeXT 1.6)
    # tiny Qwen2, ChatML chats: model=llava_next_qwen2_7b's shape (LLaVA-NeXT's pretrain_clip.sh / direct_finetune_clip.sh)
    pytest.param(["model.llm=builtin://tiny-qwen2", "model.template=qwen_1_5"], marks=pytest.mark.slow, id="qwen2"),
], ids=lambda x: "llama" if x == [] else None)
def test_stage1_then_stage2_then_stock_transformers(compose_spec, tmp_path, llm):
    from transformers import AutoProcessor, LlavaNextForConditionalGeneration, LlavaNextProcessor

    from llava_hydra.data.records import images_of, normalize_turns
    from llava_hydra.data.spec import data_parts, spec_dataset
    from llava_hydra.eval.generation import answer, render, user_message
    from llava_hydra.eval.heldout import prompt_and_reference

    paths = [f"paths.output_root={tmp_path}", f"paths.cache_dir={tmp_path / 'cache'}"]
    run(compose_spec(*paths, *SMALL, *llm))
    assert (tmp_path / "tiny_next" / "pretrain" / "mm_projector.safetensors").exists()
    spec = compose_spec("stage=finetune", *paths, *SMALL, *llm)
    accuracy = run(spec)
    fin = tmp_path / "tiny_next" / "finetune"
    metrics = json.loads((fin / "metrics.json").read_text())
    assert metrics["train_steps"] == 3 and metrics["eval_samples"] == 8 and metrics["eval_accuracy"] == accuracy

    model = LlavaNextForConditionalGeneration.from_pretrained(fin).eval()
    processor = AutoProcessor.from_pretrained(fin)
    assert isinstance(processor, LlavaNextProcessor)
    assert model.config.image_grid_pinpoints == [[32, 64], [64, 32], [64, 64], [96, 32], [32, 96]]
    assert model.config.text_config.model_type == ("qwen2" if llm else "llama")

    tokenizer, image_processor, rule = data_parts(spec)
    ds = spec_dataset(spec, spec.data.eval_data_path, tokenizer, image_processor, rule)
    folder = spec.data.image_folder
    for i in range(2):
        record = ds.records[i]
        question = normalize_turns(record)[0]["value"].replace("<image>", "").strip()
        prompt = render(processor, [user_message(question, image=True)])
        (name,) = images_of(record)
        message = {"role": "user", "content": [{"type": "image", "path": f"{folder}/{name}"},
                                               {"type": "text", "text": question}]}
        theirs = processor.apply_chat_template([message], add_generation_prompt=True, tokenize=True,
                                               return_dict=True, return_tensors="pt")  # a stock client
        ours_ids, _ = prompt_and_reference(ds, i)  # training's encoding of the same prompt (in-run eval)
        assert theirs["input_ids"][0].tolist() == ours_ids
        stock = model.generate(**theirs, max_new_tokens=6, do_sample=False)
        stock = processor.tokenizer.decode(stock[0, theirs["input_ids"].shape[1]:], skip_special_tokens=True).strip()
        assert answer(model, processor, [prompt], [f"{folder}/{name}"], "anyres", max_new_tokens=6,
                      do_sample=False) == [stock]
        with torch.no_grad():  # the pixels are training's: the dataset's sample holds the same crops, within
            # README's 2 levels of 8 bits (training's fast AnyRes path, data/anyres_pixels.py)
            ours_px, stock_px = ds.build(i)["pixel_values"], theirs["pixel_values"][0]
            std = min(processor.image_processor.image_std)
            assert ours_px.shape == stock_px.shape and (ours_px - stock_px).abs().max() <= 2 / (255 * std) + 1e-5
