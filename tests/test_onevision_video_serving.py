"""Chat and eval answer OneVision video questions as a stock transformers client does (eval/videos.py).

A tiny LlavaOnevisionForConditionalGeneration built from configs (no training) is saved as a run saves it
(model, the OneVision processor files, a spec whose data section gives the frame rule: frames_upbound 4).
The stock client renders the question with the saved chat template (a ``{"type": "video"}`` part), expands
``<video>`` by ``LlavaOnevisionProcessor.replace_video_token`` (transformers' own rule, counts written out),
decodes the frames with PyAV at the indices LLaVA-NeXT's sampling picks (written out) and makes each frame's
pixels with SigLIP's image processor (the stock LlavaOnevisionVideoProcessor needs torchvision), then calls
``generate(input_ids, pixel_values_videos=...)``. ``python -m llava_hydra.chat --video`` and
``python -m llava_hydra.eval benchmark=own`` on the folder give the model the same ids and pixels (those
training's dataset makes for the same record) and so the same greedy answers."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from PIL import Image

from test_onevision_multi_image import qwen_tok, tiny_onevision  # noqa: F401
from test_onevision_video import GREY, IMAGE, TEXT, VIDEO, dataset, make_video, ov_processor

av = pytest.importorskip("av")

QUESTION = "What happens?"
PROMPT = ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n<video>\nWhat happens?"
          "<|im_end|>\n<|im_start|>assistant\n")
GEN = {"max_new_tokens": 5, "do_sample": False}


@pytest.fixture
def served(tmp_path, qwen_tok):
    """(saved model folder, video folder): clip.mov 10 frames at 4 fps (frames 0, 4, 8 at 1/s), long.mov 40
    frames at 4 fps (10 at 1/s, capped to 4 by the spec: linspace(0, 39, 4) = 0, 13, 26, 39)."""
    from llava_hydra.data.chat_template import chat_template_for
    from llava_hydra.model.onevision_processor import SavedOnevisionProcessor

    videos = tmp_path / "videos"
    videos.mkdir()
    make_video(videos / "clip.mov")
    make_video(videos / "long.mov", frames=40, fps=4)
    Image.new("RGB", (64, 64), (30, 200, 30)).save(videos / "green.png")
    qwen_tok.chat_template = chat_template_for("qwen_1_5", qwen_tok)
    model = tiny_onevision(qwen_tok)
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    SavedOnevisionProcessor(qwen_tok, ov_processor(), model.config).save_pretrained(folder)
    (folder / "llava_hydra_spec.yaml").write_text(json.dumps({"data": {
        "image_aspect_ratio": "anyres_max_9", "frames_upbound": 4, "force_sample": False, "video_fps": 1,
        "video_folder": str(videos)}}))
    return folder, videos


def stock_client(model, processor, video, indices):
    """A transformers client: chat template + LlavaOnevisionProcessor's own <video> expansion, frames by PyAV,
    pixels by SigLIP's image processor, greedy generate. -> (input_ids, pixel_values_videos, answer)."""
    from transformers import LlavaOnevisionProcessor
    from transformers.models.siglip import SiglipImageProcessorPil

    message = {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": QUESTION}]}
    text = processor.apply_chat_template([message], add_generation_prompt=True, tokenize=False)
    assert text == PROMPT
    with av.open(str(video)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    siglip = SiglipImageProcessorPil(size={"height": 32, "width": 32})
    pixels = siglip(images=[Image.fromarray(frames[k]) for k in indices], return_tensors="pt")["pixel_values"]
    run = LlavaOnevisionProcessor.replace_video_token(processor, {"pixel_values_videos": [pixels]}, 0)
    ids = processor.tokenizer(text.replace("<video>", run), return_tensors="pt")["input_ids"]
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values_videos=pixels[None], **GEN)
    return ids, pixels, processor.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()


def test_chat_on_a_video_answers_as_a_stock_client(served, qwen_tok, capsys):
    from llava_hydra.commands.chat import Chat, main as chat_main
    from llava_hydra.eval.generation import encode, render, user_message
    from llava_hydra.eval.heldout import prompt_and_reference
    from llava_hydra.eval.loading import load_for_inference
    from llava_hydra.eval.videos import video_rule

    folder, videos = served
    model, processor, aspect = load_for_inference(folder, device="cpu")
    rule = video_rule(folder, model.config)
    assert rule.key == ["video", 4, 4, False, 1]  # tiny tower 32/8 = 4 patches a side; the spec's frame rule
    # a folder without its run's spec (a merged model, llava-hf's): OneVision's recipes, <= 32 frames at 1/s
    assert video_rule(videos, model.config).key == ["video", 4, 32, False, 1]
    video_id = qwen_tok.convert_tokens_to_ids("<video>")

    for name, indices, run in (("clip.mov", [0, 4, 8], 3 * 4 + 1), ("long.mov", [0, 13, 26, 39], 4 * 4 + 1)):
        ids, pixels, stock = stock_client(model, processor, videos / name, indices)
        assert ids[0].tolist().count(video_id) == run
        ds = dataset(videos, qwen_tok, [{**VIDEO, "video": name}], upbound=4)  # training's encoding of the record
        assert prompt_and_reference(ds, 0)[0] == ids[0].tolist()
        assert torch.allclose(ds[0]["pixel_values_videos"], pixels, atol=1e-6)

        chat = Chat(model, processor, aspect, video=str(videos / name), video_rule=rule, stream=None, **GEN)
        ours = encode(processor, [render(processor, [user_message(QUESTION, image=0, video=True)])], [], aspect,
                      videos=[chat.video], video_rule=rule)  # what chat.ask gives the model
        assert torch.equal(ours["input_ids"], ids)
        assert torch.allclose(ours["pixel_values_videos"], pixels[None], atol=1e-6)
        assert chat.video[:, 0, 5, 5].tolist() == pytest.approx([(k * GREY % 256) / 127.5 - 1 for k in indices],
                                                                 abs=1e-5)
        assert chat.ask(QUESTION) == stock
        assert [c["type"] for c in chat.messages[0]["content"]] == ["video", "text"]
        capsys.readouterr()
        assert chat_main([str(folder), "--video", str(videos / name), "--prompt", QUESTION, "--max-new-tokens", "5",
                          "--device", "cpu"]) == 0
        assert capsys.readouterr().out.strip() == stock

    # the video reaches the answer: another video's frames change the next-token logits
    logits = model(input_ids=ids, pixel_values_videos=pixels[None]).logits[0, -1]
    assert not torch.allclose(logits, model(input_ids=ids, pixel_values_videos=-pixels[None]).logits[0, -1])

    with pytest.raises(SystemExit):
        chat_main([str(folder), "--video", str(videos / "gone.mov"), "--prompt", QUESTION])
    with pytest.raises(SystemExit):
        chat_main([str(folder), "--video", str(videos / "clip.mov"), "--image", str(videos / "green.png")])


def test_a_second_turn_keeps_the_video_and_video_parts_render_as_training_places_them(served, qwen_tok):
    from llava_hydra.commands.chat import Chat, interact
    from llava_hydra.eval.generation import render
    from llava_hydra.eval.loading import load_for_inference
    from llava_hydra.eval.videos import expand, video_rule

    folder, videos = served
    model, processor, aspect = load_for_inference(folder, device="cpu")
    rule = video_rule(folder, model.config)
    chat = Chat(model, processor, aspect, video=str(videos / "clip.mov"), video_rule=rule, stream=None, **GEN)
    first = chat.ask(QUESTION)
    chat.ask("And then?")
    prompt = render(processor, chat.messages[:3])
    assert prompt == PROMPT + first + "<|im_end|>\n<|im_start|>user\nAnd then?<|im_end|>\n<|im_start|>assistant\n"
    assert expand([prompt], [chat.video], rule)[0].count("<video>") == 13
    with pytest.raises(ValueError, match="1 <video> tags in the prompts for 2 videos"):
        expand([prompt], [chat.video, chat.video], rule)

    import io

    out = io.StringIO()
    interact(chat, [f"/video {videos / 'long.mov'}", QUESTION, f"/video {videos / 'gone.mov'}", "/quit"], out)
    assert len(chat.video) == 4 and "cannot use" in out.getvalue() and "video file not found" in out.getvalue()


def test_eval_own_benchmark_answers_video_records_as_the_stock_client(served, qwen_tok, tmp_path):
    """benchmark=own with two videos of different frame counts, an image and a text question in one batch: the
    videos are asked by frame count, each answer is the stock client's; the video folder is the run's
    data.video_folder (the spec's) unless benchmark.video_folder is given."""
    from llava_hydra.commands.eval_cli import run as eval_run
    from llava_hydra.eval.benchmarks import load_items
    from llava_hydra.eval.loading import load_for_inference

    folder, videos = served
    held = [{**VIDEO, "id": "v3"}, {**IMAGE, "id": "img"}, {**VIDEO, "id": "v4", "video": "long.mov"},
            {**TEXT, "id": "text"}]
    (tmp_path / "held.json").write_text(json.dumps(held))
    items = load_items("training", str(tmp_path / "held.json"), str(videos), None, video_folder="/elsewhere")
    assert [str(it.video) for it in items] == ["/elsewhere/clip.mov", "None", "/elsewhere/long.mov", "None"]
    assert items[0].messages == [{"role": "user", "content": [{"type": "video"}, {"type": "text",
                                                                                  "text": "<image>\nWhat happens?"}]}]
    with pytest.raises(ValueError, match=r"held.json: sample 0: a video record .*benchmark.video_folder"):
        load_items("training", str(tmp_path / "held.json"), str(videos), None)

    model, processor, _ = load_for_inference(folder, device="cpu")
    stock = [stock_client(model, processor, videos / name, idx)[2]
             for name, idx in (("clip.mov", [0, 4, 8]), ("long.mov", [0, 13, 26, 39]))]
    GlobalHydra.instance().clear()
    with initialize_config_module("llava_hydra.conf", version_base="1.3"):
        cfg = compose("eval", overrides=[f"model_dir={folder}", "device=cpu", "benchmark=own",
                                         f"benchmark.question_file={tmp_path / 'held.json'}",
                                         f"benchmark.image_folder={videos}", "benchmark.max_new_tokens=5",
                                         f"output_root={tmp_path / 'eval'}", "batch_size=4"])
    GlobalHydra.instance().clear()
    eval_run(cfg)
    rows = [json.loads(line) for line in (tmp_path / "eval" / "own" / "answers.jsonl").read_text().splitlines()]
    assert [r["question_id"] for r in rows] == ["v3", "img", "v4", "text"]
    assert [rows[0]["text"], rows[2]["text"]] == stock
    assert [r["reference"] for r in rows] == ["It gets brighter.", "Green.", "It gets brighter.", "Yes."]

    (tmp_path / "gone.json").write_text(json.dumps([{**VIDEO, "id": "gone", "video": "gone.mov"}]))
    cfg.benchmark.question_file, cfg.output_root = str(tmp_path / "gone.json"), str(tmp_path / "eval_gone")
    cfg.output_dir = str(tmp_path / "eval_gone" / "own")
    with pytest.raises(ValueError, match=r"question 'gone': video file not found: .*gone.mov"):
        eval_run(cfg)


def test_a_spec_without_the_frame_keys_reads_by_onevisions_recipe(tmp_path):
    """A run's spec written before videos trained has no data.frames_upbound: its folder reads videos by
    OneVision's recipe (at most 32 frames, one a second), not the schema's 0 (no cap: a 10-minute clip
    would be 600 frames, 117,601 tokens at SigLIP-384)."""
    from types import SimpleNamespace

    from omegaconf import OmegaConf

    from llava_hydra.eval.videos import video_rule

    (tmp_path / ".hydra").mkdir()
    OmegaConf.save(OmegaConf.create({"data": {"image_aspect_ratio": "anyres_max_9"}}), tmp_path / ".hydra" / "config.yaml")
    config = SimpleNamespace(vision_config=SimpleNamespace(image_size=384, patch_size=14))
    assert video_rule(tmp_path, config).key == ["video", 27, 32, False, 1]
    OmegaConf.save(OmegaConf.create({"data": {"frames_upbound": 8, "force_sample": True}}), tmp_path / ".hydra" / "config.yaml")
    assert video_rule(tmp_path, config).key == ["video", 27, 8, True, 1]
