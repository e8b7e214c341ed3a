"""A saved model served by transformers alone answers as our eval app does: held-out questions
through ``pipeline("image-text-to-text")`` and through ``AutoProcessor`` + ``generate`` (the
folder and nothing else) give the answers of ``python -m llava_hydra.eval benchmark=own`` (which
makes pixels with training's own code), for a stage 2 folder trained with ``pad`` (CLIP and
SigLIP towers) and with ``square``, and for a LoRA run merged by ``python -m llava_hydra.merge``.
The images are not square (portrait, landscape, a 1-pixel-wide strip), so padding and cropping
see different pixels. Control: the same client with the tower's crop processor (what a ``pad``
model carried before) answers otherwise. The models are built and saved as the runner saves
them, projector (and LoRA B) perturbed so that answers depend on the image."""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent / "helpers"))
from local_parts import save_parts  # noqa: E402
from saved_models import saved_model  # noqa: E402

MAX_NEW = 6
QUESTIONS = ("What color is the shape?", "What shape is this?")
VARIANTS = {  # name -> (saved_model overrides, LoRA merged)
    "pad_clip": ((), False),
    "pad_siglip": (("model.vision_tower=builtin://tiny-siglip",), False),
    "square_clip": (("data.image_aspect_ratio=square",), False),
    "pad_lora_merged": ((), True),
}


def held_out(folder: Path) -> Path:
    """12 questions on shapes drawn at odd sizes, in the training format."""
    from llava_hydra.data.synthetic import COLORS, SHAPES, draw_shape

    rng = random.Random(3)
    folder.mkdir(parents=True)
    sizes = [None, (90, 30), (24, 80), (61, 23), (17, 40), (300, 120)]
    records = []
    for k in range(12):
        img = draw_shape(rng.choice(list(COLORS)), rng.choice(SHAPES), rng)
        size = sizes[k % len(sizes)]
        img = img.resize(size) if size else img
        if k == 11:
            img = Image.new("RGB", (1, 60), (200, 30, 30))  # a 1-pixel-wide strip
        img.save(folder / f"h{k}.png")
        records.append({"id": f"h{k}", "image": f"h{k}.png", "conversations": [
            {"from": "human", "value": f"<image>\n{QUESTIONS[k % 2]}"}, {"from": "gpt", "value": "red"}]})
    path = folder / "held_out.json"
    path.write_text(json.dumps(records))
    return path


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("clients")
    return root, save_parts(root / "parts"), held_out(root / "own")


def build(root, name: str) -> Path:
    from llava_hydra.config.schema import register_configs

    base, parts, _ = root
    overrides, lora = VARIANTS[name]
    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_module("llava_hydra.conf", version_base="1.3"):
        out = saved_model(lambda *o: compose("config", overrides=list(o)), parts, base / name, lora=lora,
                          overrides=overrides)
    GlobalHydra.instance().clear()
    if lora:
        from llava_hydra.commands.merge import merge

        out = merge(out, base / f"{name}_out")
    return out


def eval_app(model_dir: Path, questions: Path, out: Path) -> dict:
    from llava_hydra.commands.eval_cli import run

    GlobalHydra.instance().clear()
    with initialize_config_module("llava_hydra.conf", version_base="1.3"):
        cfg = compose("eval", overrides=[f"model_dir={model_dir}", "device=cpu", "benchmark=own",
                                         f"benchmark.question_file={questions}",
                                         f"benchmark.image_folder={questions.parent}",
                                         f"benchmark.max_new_tokens={MAX_NEW}", f"output_root={out}"])
    GlobalHydra.instance().clear()
    run(cfg)
    rows = [json.loads(line) for line in (out / "own" / "answers.jsonl").read_text().splitlines()]
    return {r["question_id"]: r["text"] for r in rows}


def messages(record, folder: Path) -> list[dict]:
    text = record["conversations"][0]["value"].replace("<image>\n", "")
    return [{"role": "user", "content": [{"type": "image", "image": str(folder / record["image"])},
                                         {"type": "text", "text": text}]}]


def through_pipeline(model_dir: Path, records, folder: Path) -> dict:
    from transformers import pipeline

    pipe = pipeline("image-text-to-text", model=str(model_dir), device="cpu")
    out = {}
    for r in records:
        (got,) = pipe(text=messages(r, folder), return_full_text=False,
                      generate_kwargs={"max_new_tokens": MAX_NEW, "do_sample": False})
        out[r["id"]] = got["generated_text"].strip()
    return out


def through_generate(model_dir: Path, records, folder: Path, image_processor=None) -> dict:
    import torch
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    processor = AutoProcessor.from_pretrained(model_dir)
    if image_processor is not None:
        processor.image_processor = image_processor
    model = LlavaForConditionalGeneration.from_pretrained(model_dir).eval()
    out = {}
    for r in records:
        inputs = processor.apply_chat_template(messages(r, folder), add_generation_prompt=True, tokenize=True,
                                               return_dict=True, return_tensors="pt")
        with torch.no_grad():
            ids = model.generate(**inputs, max_new_tokens=MAX_NEW, do_sample=False)
        out[r["id"]] = processor.tokenizer.decode(ids[0, inputs["input_ids"].shape[1]:],
                                                  skip_special_tokens=True).strip()
    return out


@pytest.mark.parametrize("name", list(VARIANTS))
def test_stock_clients_answer_as_the_eval_app(root, name, tmp_path):
    from transformers import AutoProcessor

    questions = root[2]
    records = json.loads(questions.read_text())
    model_dir = build(root, name)
    kind = type(AutoProcessor.from_pretrained(model_dir).image_processor).__name__
    assert kind == ("CLIPImageProcessorPil" if name.startswith("square") else "LlavaImageProcessorPil")
    ours = eval_app(model_dir, questions, tmp_path / "eval")
    assert len(ours) == 12 and len(set(ours.values())) > 1  # answers that depend on the image
    assert through_generate(model_dir, records, questions.parent) == ours
    assert through_pipeline(model_dir, records, questions.parent) == ours
    if name == "pad_clip":  # control: the tower's crop processor (saved before) shows other pixels
        from transformers.models.clip import CLIPImageProcessorPil

        crop = CLIPImageProcessorPil(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28})
        cropped = through_generate(model_dir, records, questions.parent, crop)
        assert sum(cropped[k] != ours[k] for k in ours) >= 2, cropped
