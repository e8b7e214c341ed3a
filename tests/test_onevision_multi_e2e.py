"""model=tiny_onevision on a mix of single-, two- and three-image records (and text-only ones), in one process:
stage 2 trains (every sample's images found by the model: one view + a newline each of several, crops for one
alone), and what it saves answers a 2-image prompt from a stock transformers client
(LlavaOnevisionForConditionalGeneration + LlavaOnevisionProcessor from the folder: helpers/onevision_client.py)
exactly as our eval app (``python -m llava_hydra.eval`` benchmark=own) and chat do, from the same ids and pixels
training's encoding makes."""

from __future__ import annotations

import json
import math

import pytest
import torch
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from PIL import Image

from stand_ins import turns

pytestmark = pytest.mark.slow

COLOURS = {"red": (200, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 200), "yellow": (220, 220, 30)}
SIZES = [(50, 30), (30, 70), (64, 64), (40, 40), (90, 30)]  # (width, height)
QUESTION = "What colors are these?"


def write_mix(root):
    """48 training records (single, two in one message, two across turns, three, text-only) and 3 held-out
    2-image questions whose human turn is what the chat template renders for [image, image, text]."""
    folder = root / "img"
    folder.mkdir()
    names = []
    for k, (colour, rgb) in enumerate(COLOURS.items()):
        for j, size in enumerate(SIZES):
            name = f"{colour}{j}.png"
            Image.new("RGB", size, rgb).save(folder / name)
            names.append((name, colour))
    records = []
    for i in range(48):
        a, b, c = names[i % 20], names[(i * 7 + 3) % 20], names[(i * 11 + 5) % 20]
        kind = i % 5
        if kind == 0:
            records.append({"id": i, "image": a[0], "conversations": turns("<image>\nWhat color is this?", f"{a[1]}.")})
        elif kind == 1:
            records.append({"id": i, "image": [a[0], b[0]],
                            "conversations": turns(f"<image><image>{QUESTION}", f"{a[1]} and {b[1]}.")})
        elif kind == 2:
            records.append({"id": i, "image": [a[0], b[0]], "conversations": turns(
                "<image>\nWhat color is this?", f"{a[1]}.", "And this one? <image>", f"{b[1]}.")})
        elif kind == 3:
            records.append({"id": i, "image": [a[0], b[0], c[0]], "conversations": turns(
                "<image>\n<image>\n<image>\nName the colors.", f"{a[1]}, {b[1]}, {c[1]}.")})
        else:
            records.append({"id": i, "conversations": turns("Say yes.", "yes.")})
    (root / "train.json").write_text(json.dumps(records))
    held = [{"id": f"h{i}", "image": [names[i][0], names[i + 6][0]],
             "conversations": turns(f"<image><image>{QUESTION}", f"{names[i][1]} and {names[i + 6][1]}.")}
            for i in range(3)]
    (root / "held.json").write_text(json.dumps(held))
    return folder, held


def test_multi_image_mix_trains_and_a_stock_client_answers_as_our_eval_app(compose_spec, tmp_path, capsys):
    from transformers import LlavaOnevisionForConditionalGeneration
    from onevision_client import stock_processor

    from llava_hydra.commands.chat import Chat, main as chat_main
    from llava_hydra.commands.runner import run
    from llava_hydra.data.spec import data_parts, spec_dataset
    from llava_hydra.eval.generation import answer, encode, render, user_message
    from llava_hydra.eval.heldout import prompt_and_reference
    from llava_hydra.eval.loading import load_for_inference

    folder, held = write_mix(tmp_path)
    fin = tmp_path / "out" / "fin"
    spec = compose_spec("model=tiny_onevision", "stage=finetune", "stage.pretrain_mm_mlp_adapter=null",
                        f"paths.output_root={tmp_path / 'out'}", f"paths.cache_dir={tmp_path / 'cache'}",
                        f"data.data_path={tmp_path / 'train.json'}", f"data.image_folder={folder}", "data.synthetic=null",
                        f"data.eval_data_path={tmp_path / 'held.json'}", f"training.output_dir={fin}",
                        "training.max_steps=12", "training.per_device_train_batch_size=4", "training.logging_steps=1",
                        "training.learning_rate=1e-3", "training.warmup_ratio=0", "training.save_steps=100")
    run(spec)
    metrics = json.loads((fin / "metrics.json").read_text())
    assert metrics["train_steps"] == 12 and metrics["skipped_samples"] == 0 and metrics["eval_samples"] == 3
    state = json.loads((fin / "checkpoint-12" / "trainer_state.json").read_text())
    losses = [e["loss"] for e in state["log_history"] if "loss" in e]
    assert len(losses) == 12 and all(map(math.isfinite, losses))
    assert sum(losses[-4:]) / 4 < sum(losses[:4]) / 4 - 0.5, losses  # 5.89 5.12 4.99 4.92 ... 4.28 4.23 4.21 here

    model = LlavaOnevisionForConditionalGeneration.from_pretrained(fin).eval()
    processor = stock_processor(fin)
    tokenizer, image_processor, rule = data_parts(spec)
    assert rule.multi_view and rule.runs([(30, 50), (64, 64)]) == [17, 17]
    ds = spec_dataset(spec, str(tmp_path / "held.json"), tokenizer, image_processor, rule)
    image_id = processor.tokenizer.convert_tokens_to_ids("<image>")
    stock_answers = []
    for i, record in enumerate(held):
        paths = [str(folder / name) for name in record["image"]]
        message = {"role": "user", "content": [{"type": "image", "path": paths[0]}, {"type": "image", "path": paths[1]},
                                               {"type": "text", "text": QUESTION}]}
        theirs = processor.apply_chat_template([message], add_generation_prompt=True, tokenize=True,
                                               return_dict=True, return_tensors="pt")  # a stock client
        assert theirs["batch_num_images"].tolist() == [2] and theirs["pixel_values"].shape == (2, 1, 3, 32, 32)
        ours_ids, _ = prompt_and_reference(ds, i)  # training's encoding of the same prompt (in-run eval)
        assert theirs["input_ids"][0].tolist() == ours_ids and ours_ids.count(image_id) == 34
        assert torch.equal(ds.build(i)["pixel_values"], theirs["pixel_values"][:, 0])  # training's pixels
        ours = encode(processor, [render(processor, [user_message(QUESTION, image=2)])], paths, "anyres_max_9")
        for key in ("input_ids", "attention_mask", "pixel_values", "image_sizes", "batch_num_images"):
            assert torch.equal(ours[key], theirs[key]), key  # what our eval app gives the model: the stock client's
        gen = {"max_new_tokens": 6, "min_new_tokens": 4, "do_sample": False}  # 12 steps: it would say eos at once
        stock = model.generate(**theirs, **gen)
        stock = processor.tokenizer.decode(stock[0, theirs["input_ids"].shape[1]:], skip_special_tokens=True).strip()
        prompt = render(processor, [user_message(QUESTION, image=2)])
        assert stock and answer(model, processor, [prompt], paths, "anyres_max_9", **gen) == [stock]
        stock_answers.append(stock)

    # a padded batch mixing a 2-image prompt, a 1-image (cropped) prompt and a text-only one answers as each alone
    loaded, inference, aspect = load_for_inference(fin, device="cpu")
    assert aspect == "anyres_max_9"
    two = [str(folder / name) for name in held[0]["image"]]
    prompts = [render(inference, [user_message(QUESTION, image=2)]),
               render(inference, [user_message("What color is this?", image=True)]),
               render(inference, [user_message("Say yes.", image=False)])]
    images = [two, [two[1]], []]
    gen = {"max_new_tokens": 6, "min_new_tokens": 4, "do_sample": False}
    alone = [answer(loaded, inference, [p], im, aspect, **gen)[0] for p, im in zip(prompts, images)]
    assert alone[0] == stock_answers[0]
    assert answer(loaded, inference, prompts, [p for im in images for p in im], aspect, **gen) == alone

    # chat with two images (--image twice) answers as the stock client
    chat = Chat(loaded, inference, aspect, two, stream=None, **gen)
    assert chat.ask(QUESTION) == stock_answers[0]
    assert [c["type"] for c in chat.messages[0]["content"]] == ["image", "image", "text"]
    plain = [answer(loaded, inference, [prompts[0]], [str(folder / n) for n in h["image"]], aspect, max_new_tokens=6,
                    do_sample=False)[0] for h in held]  # as the eval app and the chat command decode (no minimum)
    capsys.readouterr()
    assert chat_main([str(fin), "--image", two[0], "--image", two[1], "--prompt", QUESTION, "--max-new-tokens", "6",
                      "--device", "cpu"]) == 0
    assert capsys.readouterr().out.strip() == plain[0]

    # python -m llava_hydra.eval benchmark=own on the held-out 2-image questions: the stock client's answers
    from llava_hydra.commands.eval_cli import run as eval_run

    GlobalHydra.instance().clear()
    with initialize_config_module("llava_hydra.conf", version_base="1.3"):
        cfg = compose("eval", overrides=[f"model_dir={fin}", f"paths.eval_root={tmp_path}", "device=cpu",
                                         "benchmark=own", f"benchmark.question_file={tmp_path / 'held.json'}",
                                         f"benchmark.image_folder={folder}", "benchmark.max_new_tokens=6",
                                         f"output_root={tmp_path / 'eval'}", "batch_size=2"])
    GlobalHydra.instance().clear()
    eval_run(cfg)
    rows = [json.loads(line) for line in (tmp_path / "eval" / "own" / "answers.jsonl").read_text().splitlines()]
    assert [r["question_id"] for r in rows] == ["h0", "h1", "h2"]
    assert [r["text"] for r in rows] == plain
