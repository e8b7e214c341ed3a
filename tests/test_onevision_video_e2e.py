"""model=tiny_onevision stage 2 on a mix of video, image and text-only records (in one process, batches of
several samples: data.force_sample=true, 4 frames each), and what it saves answers a video question from
LlavaOnevisionForConditionalGeneration.from_pretrained with the <video> run and pixel_values_videos training's
encoding makes (the frames as the saved video processor's config says: the tower's size, mean and std).
``python -m llava_hydra.chat --video`` and ``python -m llava_hydra.eval benchmark=own`` on the saved folder,
and on a LoRA run's directory (the adapter merged in memory), give that direct transformers call's greedy
answers (a stock client's ids: the saved chat template + LlavaOnevisionProcessor's own <video> expansion)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from stand_ins import turns
from test_onevision_video import make_video

pytestmark = pytest.mark.slow

av = pytest.importorskip("av")


def test_video_mix_trains_and_transformers_answers_from_the_saved_folder(compose_spec, tmp_path, capsys):
    from PIL import Image
    from transformers import LlavaOnevisionForConditionalGeneration

    from llava_hydra.commands.runner import run
    from llava_hydra.data.spec import data_parts, spec_dataset

    videos, images = tmp_path / "vid", tmp_path / "img"
    videos.mkdir(), images.mkdir()
    for k in range(4):
        make_video(videos / f"clip{k}.mov", frames=6 + 3 * k, fps=2)
    Image.new("RGB", (48, 32), (200, 30, 30)).save(images / "red.png")
    records = []
    for i in range(24):
        if i % 3 == 0:
            records.append({"id": i, "image": "red.png", "conversations": turns("<image>\nWhat color?", "red.")})
        elif i % 3 == 1:
            records.append({"id": i, "video": f"clip{i % 4}.mov",
                            "conversations": turns("<image>\nWhat happens in the video?", "it gets brighter.")})
        else:
            records.append({"id": i, "conversations": turns("Say yes.", "yes.")})
    (tmp_path / "train.json").write_text(json.dumps(records))
    held = [records[1], records[4], records[0]]  # two video questions and an image one: the in-run eval
    (tmp_path / "held.json").write_text(json.dumps(held))
    fin = tmp_path / "out" / "fin"
    spec = compose_spec("model=tiny_onevision", "stage=finetune", "stage.pretrain_mm_mlp_adapter=null",
                        f"paths.output_root={tmp_path / 'out'}", f"paths.cache_dir={tmp_path / 'cache'}",
                        f"data.data_path={tmp_path / 'train.json'}", f"data.image_folder={images}",
                        f"data.video_folder={videos}", "data.frames_upbound=4", "data.force_sample=true",
                        "data.synthetic=null", f"data.eval_data_path={tmp_path / 'held.json'}", f"training.output_dir={fin}",
                        "training.max_steps=8", "training.per_device_train_batch_size=4", "training.logging_steps=1",
                        "training.learning_rate=1e-3", "training.warmup_ratio=0", "training.save_steps=100")
    run(spec)
    metrics = json.loads((fin / "metrics.json").read_text())
    assert metrics["train_steps"] == 8 and metrics["skipped_samples"] == 0 and metrics["eval_samples"] == 3
    state = json.loads((fin / "checkpoint-8" / "trainer_state.json").read_text())
    losses = [e["loss"] for e in state["log_history"] if "loss" in e]
    assert len(losses) == 8 and all(map(math.isfinite, losses))
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3, losses

    saved = json.loads((fin / "processor_config.json").read_text())["video_processor"]
    assert saved["size"] == {"height": 32, "width": 32} and saved["image_mean"] == [0.5, 0.5, 0.5]
    model = LlavaOnevisionForConditionalGeneration.from_pretrained(fin).eval()
    tokenizer, image_processor, rule = data_parts(spec)
    video_id = model.config.video_token_id
    (tmp_path / "q.json").write_text(json.dumps([records[1]]))
    ds = spec_dataset(spec, str(tmp_path / "q.json"), tokenizer, image_processor, rule)
    sample = ds.build(0)
    assert int((sample["input_ids"] == video_id).sum()) == 4 * 4 + 1  # 4 frames x (2 x 2 pooled) + 1
    prompt_len = int((sample["labels"] != -100).nonzero()[0])  # the question, up to the answer
    ids = sample["input_ids"][:prompt_len][None]
    from llava_hydra.eval.heldout import prompt_and_reference

    assert prompt_and_reference(ds, 0) == (ids[0].tolist(), "it gets brighter.")  # the in-run eval's prompt
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                         pixel_values_videos=sample["pixel_values_videos"][None], max_new_tokens=4, min_new_tokens=2,
                         do_sample=False)
    assert out.shape[1] > prompt_len
    # the video reaches the answer: another video's frames change the logits
    logits = model(input_ids=ids, pixel_values_videos=sample["pixel_values_videos"][None]).logits[0, -1]
    other = model(input_ids=ids, pixel_values_videos=torch.zeros_like(sample["pixel_values_videos"])[None]).logits[0, -1]
    assert not torch.allclose(logits, other)

    # chat and eval on the saved folder answer as the direct transformers call; the frame rule comes from the
    # run's config, which `python -m llava_hydra` leaves in the run directory as Hydra's .hydra/config.yaml
    from omegaconf import OmegaConf

    (fin / ".hydra").mkdir()
    OmegaConf.save(spec, fin / ".hydra" / "config.yaml")
    stock = {k: stock_answer(model, fin, spec, tmp_path, records[k]) for k in (1, 4)}  # clip1.mov, clip0.mov
    chat_and_eval_answer(fin, model, videos, images, tmp_path / "held.json", tmp_path / "eval_full", stock, capsys)

    # a LoRA run on the same mix: chat and eval on its directory answer as transformers on the merged model
    from llava_hydra.commands.merge import merge

    lora_dir = tmp_path / "out" / "lora"
    lora_spec = compose_spec("model=tiny_onevision", "stage=finetune", "stage.pretrain_mm_mlp_adapter=null",
                             f"paths.output_root={tmp_path / 'out'}", f"paths.cache_dir={tmp_path / 'cache'}",
                             f"data.data_path={tmp_path / 'train.json'}", f"data.image_folder={images}",
                             f"data.video_folder={videos}", "data.frames_upbound=4", "data.force_sample=true",
                             "data.synthetic=null", f"training.output_dir={lora_dir}", "lora=lora", "lora.r=4",
                             "lora.alpha=8", "training.max_steps=4", "training.per_device_train_batch_size=4",
                             "training.learning_rate=1e-2", "training.warmup_ratio=0", "training.save_steps=100")
    run(lora_spec)
    merged = LlavaOnevisionForConditionalGeneration.from_pretrained(merge(lora_dir, tmp_path / "merged")).eval()
    stock = {k: stock_answer(merged, tmp_path / "merged", lora_spec, tmp_path, records[k]) for k in (1, 4)}
    chat_and_eval_answer(lora_dir, merged, videos, images, tmp_path / "held.json", tmp_path / "eval_lora", stock,
                         capsys)


GEN = {"max_new_tokens": 4, "do_sample": False}


def stock_answer(model, folder, spec, tmp_path, record) -> tuple:
    """A stock client's greedy answer to a video record's question: the saved chat template renders a video
    part, LlavaOnevisionProcessor.replace_video_token expands it (the ids equal training's encoding of the
    record), the pixels are training's (what the saved video processor's config does to the frames).
    -> (input_ids, pixel_values_videos, answer)."""
    from transformers import LlavaOnevisionProcessor

    from llava_hydra.data.spec import data_parts, spec_dataset
    from llava_hydra.eval.heldout import prompt_and_reference
    from llava_hydra.model.onevision_processor import inference_processor

    processor = inference_processor(folder)
    question = record["conversations"][0]["value"].replace("<image>", "").strip()
    message = {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": question}]}
    text = processor.apply_chat_template([message], add_generation_prompt=True, tokenize=False)
    tokenizer, image_processor, rule = data_parts(spec)
    (tmp_path / "one.json").write_text(json.dumps([record]))
    ds = spec_dataset(spec, str(tmp_path / "one.json"), tokenizer, image_processor, rule)
    pixels = ds.build(0)["pixel_values_videos"]
    run = LlavaOnevisionProcessor.replace_video_token(processor, {"pixel_values_videos": [pixels]}, 0)
    assert len(run) == len("<video>") * (4 * 4 + 1)  # 4 frames (force_sample) x 2 x 2 pooled + 1 newline
    ids = processor.tokenizer(text.replace("<video>", run), return_tensors="pt")["input_ids"]
    assert ids[0].tolist() == prompt_and_reference(ds, 0)[0]
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values_videos=pixels[None], **GEN)
    return ids, pixels, processor.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()


def chat_and_eval_answer(model_dir, model, videos, images, held, out, stock, capsys):
    """chat (object and command) on each held-out video, and eval benchmark=own on the held-out file (videos
    from the run's data.video_folder), give ``model`` the ``stock`` client's ids and pixels (record index ->
    (ids, pixels, answer)): the same logits and greedy answers."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    from llava_hydra.commands.chat import Chat, main as chat_main
    from llava_hydra.commands.eval_cli import run as eval_run
    from llava_hydra.eval.generation import encode, render, user_message
    from llava_hydra.eval.loading import load_for_inference
    from llava_hydra.eval.videos import load_video, video_rule

    loaded, processor, aspect = load_for_inference(model_dir, device="cpu")
    rule = video_rule(model_dir, loaded.config)
    assert rule.key == ["video", 4, 4, True, 1]  # the run's spec: 4 frames, force_sample
    question = "What happens in the video?"
    for k, (ids, pixels, answer) in stock.items():
        clip = videos / f"clip{k % 4}.mov"
        ours = encode(processor, [render(processor, [user_message(question, 0, video=True)])], [], aspect,
                      videos=[load_video(clip, rule, processor.image_processor)], video_rule=rule)  # chat's inputs
        assert torch.equal(ours["input_ids"], ids) and torch.equal(ours["pixel_values_videos"], pixels[None])
        with torch.no_grad():
            torch.testing.assert_close(loaded(**ours).logits, model(input_ids=ids, pixel_values_videos=pixels[None]).logits,
                                       rtol=1e-4, atol=1e-4)
        assert Chat(loaded, processor, aspect, video=str(clip), video_rule=rule, stream=None, **GEN).ask(
            question) == answer
    capsys.readouterr()
    assert chat_main([str(model_dir), "--video", str(videos / "clip1.mov"), "--prompt", question,
                      "--max-new-tokens", "4", "--device", "cpu"]) == 0
    assert capsys.readouterr().out.strip() == stock[1][2]
    GlobalHydra.instance().clear()
    with initialize_config_module("llava_hydra.conf", version_base="1.3"):
        cfg = compose("eval", overrides=[f"model_dir={model_dir}", "device=cpu", "benchmark=own",
                                         f"benchmark.question_file={held}", f"benchmark.image_folder={images}",
                                         "benchmark.max_new_tokens=4", f"output_root={out}", "batch_size=3"])
    GlobalHydra.instance().clear()
    eval_run(cfg)
    rows = [json.loads(line) for line in (out / "own" / "answers.jsonl").read_text().splitlines()]
    assert [r["question_id"] for r in rows] == [1, 4, 0]
    assert [rows[0]["text"], rows[1]["text"]] == [stock[1][2], stock[4][2]]
