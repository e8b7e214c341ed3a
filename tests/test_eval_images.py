"""The eval and chat apps make an image's pixel values exactly as training does for the same
file (images.load_image: JPEG draft decoding, square or pad, the torch resize path), not by a
full decode through the processor; the eval app answers multi-image own-data questions with
their images in tag order, through the same function."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageFilter

import stand_ins as testing
from llava_hydra.data.dataset import LazySupervisedDataset
from llava_hydra.data.images import open_rgb
from llava_hydra.data.pixels import process
from llava_hydra.eval import generation
from llava_hydra.eval.benchmarks import load_items

sys.path.insert(0, str(Path(__file__).parent / "helpers"))
from local_parts import save_parts  # noqa: E402
from saved_models import saved_model  # noqa: E402

QUESTION = "<image>\nWhat is in the picture?"


def photo(path: Path, w: int, h: int, seed: int) -> None:
    """A photo-like image (shapes, noise, slight blur), saved as JPEG (or PNG by suffix)."""
    rng = np.random.default_rng(seed)
    img = Image.new("RGB", (w, h), (90, 120, 150))
    d = ImageDraw.Draw(img)
    for x, y, a, b, *c in rng.integers(0, 255, (30, 7)).tolist():
        d.ellipse([x * w // 255, y * h // 255, x * w // 255 + 4 * a, y * h // 255 + 4 * b], fill=tuple(c))
    noise = rng.integers(-20, 20, (h, w, 3))
    img = Image.fromarray(np.clip(np.asarray(img).astype(int) + noise, 0, 255).astype(np.uint8))
    img.filter(ImageFilter.GaussianBlur(1)).save(path, quality=90)


def held_out(root: Path, images, question: str = QUESTION) -> Path:
    """root/held_out.json: one own-data question about these images (root/imgs/<name>)."""
    record = {"id": "q0", "image": images, "conversations": [{"from": "human", "value": question},
                                                             {"from": "gpt", "value": "Shapes."}]}
    (root / "held_out.json").write_text(json.dumps([record]))
    return root / "held_out.json"


@pytest.fixture(scope="module")
def big_jpeg(tmp_path_factory):
    root = tmp_path_factory.mktemp("big")
    (root / "imgs").mkdir()
    photo(root / "imgs" / "big.jpg", 2400, 1800, 2)
    return root


@pytest.mark.parametrize("aspect", ["pad", "square"])
def test_eval_pixels_of_a_large_jpeg_equal_trainings_exactly(big_jpeg, tmp_path, aspect):
    from transformers import LlavaProcessor

    clip336 = testing.clip_processor(336)
    tok = testing.bpe_tokenizer(tmp_path / "tok", vocab_size=300)
    data = held_out(big_jpeg, "big.jpg")
    trained = LazySupervisedDataset(data, tok, clip336, "v1", image_folder=big_jpeg / "imgs",
                                    image_aspect_ratio=aspect, num_image_tokens=576)[0]["pixel_values"]
    (item,) = load_items("training", str(data), str(big_jpeg / "imgs"), None)
    processor = LlavaProcessor(image_processor=clip336, tokenizer=tok, patch_size=14, image_token="<image>",
                               vision_feature_select_strategy="default", num_additional_image_tokens=1)
    assert item.image == big_jpeg / "imgs" / "big.jpg"  # the path, loaded by encode as training loads it
    inputs = generation.encode(processor, [f"USER: {QUESTION} ASSISTANT:"], [item.image], aspect)
    assert inputs["pixel_values"].shape == (1, 3, 336, 336)
    assert torch.equal(inputs["pixel_values"][0], trained)
    assert int((inputs["input_ids"] == tok.convert_tokens_to_ids("<image>")).sum()) == 576
    # what the eval app did before (full decode, processor): measurably not what training fed the model
    before = process(open_rgb(big_jpeg / "imgs" / "big.jpg"), aspect, clip336)
    assert float((before - trained).abs().max()) > 0.05


def test_chat_uses_trainings_pixels(big_jpeg, tmp_path):
    from transformers import LlavaProcessor

    from llava_hydra.commands.chat import Chat
    from llava_hydra.data.images import load_image

    clip = testing.clip_processor(56)
    tok = testing.bpe_tokenizer(tmp_path / "tok", vocab_size=300)
    processor = LlavaProcessor(image_processor=clip, tokenizer=tok, patch_size=14, image_token="<image>")
    chat = Chat(None, processor, "pad", big_jpeg / "imgs" / "big.jpg")
    assert torch.equal(chat.image, load_image(big_jpeg / "imgs" / "big.jpg", "pad", clip))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    from llava_hydra.config.schema import register_configs

    root = tmp_path_factory.mktemp("model")
    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_module("llava_hydra.conf", version_base="1.3"):
        model = saved_model(lambda *o: compose("config", overrides=list(o)), save_parts(root / "parts"), root / "m")
    GlobalHydra.instance().clear()
    return model


def test_the_eval_app_answers_a_multi_image_own_data_question_with_trainings_pixels(
        model_dir, big_jpeg, tmp_path, monkeypatch):
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from transformers import AutoProcessor

    from llava_hydra.commands.eval_cli import run

    Image.new("RGB", (40, 28), "red").save(big_jpeg / "imgs" / "red.png")
    data = held_out(tmp_path, ["big.jpg", "red.png"], "<image>\nCompare it with <image>: which is red?")
    seen = []
    encode = generation.encode

    def spy(processor, prompts, images, aspect, device=None):
        inputs = encode(processor, prompts, images, aspect, device)
        seen.append((aspect, inputs))
        return inputs

    monkeypatch.setattr(generation, "encode", spy)
    GlobalHydra.instance().clear()
    with initialize_config_module("llava_hydra.conf", version_base="1.3"):
        cfg = compose("eval", overrides=[f"model_dir={model_dir}", "device=cpu", "benchmark=own",
                                         f"benchmark.question_file={data}", f"benchmark.image_folder={big_jpeg / 'imgs'}",
                                         "benchmark.max_new_tokens=3", f"output_root={tmp_path / 'out'}"])
    GlobalHydra.instance().clear()
    metrics = run(cfg)
    rows = [json.loads(line) for line in (tmp_path / "out" / "own" / "answers.jsonl").read_text().splitlines()]
    assert metrics["n"] == 1 and [r["question_id"] for r in rows] == ["q0"] and rows[0]["reference"] == "Shapes."
    ((aspect, inputs),) = seen
    saved = AutoProcessor.from_pretrained(model_dir)
    trained = LazySupervisedDataset(data, saved.tokenizer, saved.image_processor, "v1", image_folder=big_jpeg / "imgs",
                                    image_aspect_ratio=aspect, num_image_tokens=4)[0]["pixel_values"]
    assert trained.shape == (2, 3, 28, 28) and torch.equal(inputs["pixel_values"], trained)  # in tag order
    image_id = saved.tokenizer.convert_tokens_to_ids("<image>")
    assert int((inputs["input_ids"] == image_id).sum()) == 2 * 4  # two runs of the model's 4 image tokens
