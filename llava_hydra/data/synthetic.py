"""The embedded default's dataset: coloured shapes on a grey canvas, generated deterministically.

One set of images serves both stages: ``captions.json`` ("a red circle.") for stage 1,
``qa.json`` (multi-turn colour/shape questions plus text-only chats) for stage 2 and
``qa_eval.json``, held-out images each with one question. Every question has four equally
likely answers, so a model that ignores the image scores at most 0.25.

The data lives only under ``<paths.cache_dir>/synthetic`` (``synthetic_root``): ``prepare``
generates it there when the spec reads from there, and never writes anywhere else, so a run
given a user's ``data.data_path`` only reads the user's files. ``data.synthetic.task=details``
generates the high-resolution task (data/details.py) instead, under ``<root>/details``.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

COLORS = {"red": (215, 40, 40), "green": (40, 160, 60), "blue": (40, 80, 215), "yellow": (225, 200, 30)}
SHAPES = ("circle", "square", "triangle", "cross")
COLOR_QUESTIONS = ("What color is the shape?", "Which color is the object in the image?", "What is the color of the shape?")
SHAPE_QUESTIONS = ("What shape is this?", "Which shape is shown in the image?", "What kind of shape do you see?")
CAPTION_PROMPTS = ("Describe the image briefly.", "What is in the picture?", "Give a short caption.")
TASKS = ("shapes", "details")  # data.synthetic.task: these shapes, or data/details.py's textures
REPEAT_WORDS = ("apple", "river", "stone", "cloud", "paper", "music", "garden", "window", "bread", "light")


def draw_shape(color: str, shape: str, rng: random.Random):
    """A canvas of 48-64 px per side (not always square, so `pad` has work to do)."""
    from PIL import Image, ImageDraw

    w, h = rng.randint(48, 64), rng.randint(48, 64)
    grey = rng.randint(170, 235)
    img = Image.new("RGB", (w, h), (grey, grey, grey))
    d = ImageDraw.Draw(img)
    size = rng.uniform(0.55, 0.75) * min(w, h)
    cx, cy = w / 2 + rng.uniform(-3, 3), h / 2 + rng.uniform(-3, 3)
    x0, y0, x1, y1 = cx - size / 2, cy - size / 2, cx + size / 2, cy + size / 2
    fill = COLORS[color]
    if shape == "circle":
        d.ellipse([x0, y0, x1, y1], fill=fill)
    elif shape == "square":
        d.rectangle([x0, y0, x1, y1], fill=fill)
    elif shape == "triangle":
        d.polygon([(cx, y0), (x1, y1), (x0, y1)], fill=fill)
    else:  # cross
        t = size / 6
        d.rectangle([cx - t, y0, cx + t, y1], fill=fill)
        d.rectangle([x0, cy - t, x1, cy + t], fill=fill)
    return img


def _turn(who: str, text: str) -> dict:
    return {"from": who, "value": text}


def _with_image(question: str, rng: random.Random) -> str:
    # LLaVA data puts <image> before or after the question; both must work
    return f"<image>\n{question}" if rng.random() < 0.8 else f"{question}\n<image>"


def generate(root: str | Path, num_images: int, num_text_only: int, num_eval: int, seed: int) -> None:
    """Write images/, captions.json, qa.json and qa_eval.json under ``root``."""
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    captions, qa, qa_eval = [], [], []
    combos = [(c, s) for c in COLORS for s in SHAPES]
    for i in range(num_images + num_eval):
        color, shape = combos[i % len(combos)] if i < num_images else rng.choice(combos)
        held_out = i >= num_images
        name = f"{'eval' if held_out else 'train'}_{i:05d}.png"
        draw_shape(color, shape, rng).save(root / "images" / name)
        color_qa = (rng.choice(COLOR_QUESTIONS), color)
        shape_qa = (rng.choice(SHAPE_QUESTIONS), shape)
        if held_out:
            q, a = color_qa if i % 2 else shape_qa
            qa_eval.append({"id": f"eval-{i}", "image": name, "conversations": [
                _turn("human", _with_image(q, rng)), _turn("gpt", a)]})
            continue
        captions.append({"id": f"cap-{i}", "image": name, "conversations": [
            _turn("human", _with_image(rng.choice(CAPTION_PROMPTS), rng)), _turn("gpt", f"a {color} {shape}.")]})
        first, second = (color_qa, shape_qa) if rng.random() < 0.5 else (shape_qa, color_qa)
        qa.append({"id": f"qa-{i}", "image": name, "conversations": [
            _turn("human", _with_image(first[0], rng)), _turn("gpt", first[1]),
            _turn("human", second[0]), _turn("gpt", second[1])]})
    for j in range(num_text_only):
        word = rng.choice(REPEAT_WORDS)
        qa.append({"id": f"text-{j}", "conversations": [
            _turn("human", f"Repeat the word: {word}"), _turn("gpt", word)]})
    rng.shuffle(qa)
    for name, records in (("captions.json", captions), ("qa.json", qa), ("qa_eval.json", qa_eval)):
        (root / name).write_text(json.dumps(records, indent=1))


def ensure_generated(root: str | Path, num_images: int, num_text_only: int, num_eval: int, seed: int) -> bool:
    """Generate the dataset unless ``root`` already holds one made with the same parameters.

    Returns True when it generated."""
    root = Path(root)
    spec = {"num_images": num_images, "num_text_only": num_text_only, "num_eval": num_eval, "seed": seed, "version": 1}
    manifest = root / "manifest.json"
    if manifest.exists() and json.loads(manifest.read_text()) == spec:
        return False
    generate(root, num_images, num_text_only, num_eval, seed)
    manifest.write_text(json.dumps(spec))
    return True


def synthetic_root(cfg) -> Path:
    """Where the synthetic dataset of a run spec lives (the only place it is ever written)."""
    return Path(cfg.paths.cache_dir) / "synthetic"


def _under(path, root: Path) -> bool:
    return path is not None and Path(path).resolve().is_relative_to(root.resolve())


def prepare(cfg) -> bool:
    """Generate the synthetic dataset under ``synthetic_root(cfg)`` if the spec's data
    (``data_path``, ``image_folder`` or ``eval_data_path``) lies there; a spec pointing at a
    user's data generates nothing. True when it generated."""
    d = cfg.data
    root = synthetic_root(cfg)
    read = (d.data_path, d.image_folder) if not streamed(cfg) else ()  # a stream reads its shards, not these
    if d.synthetic is None or not any(_under(p, root) for p in (*read, eval_data_path(cfg))):
        return False
    s = d.synthetic
    if s.get("task", "shapes") == "details":  # the high-resolution task (data/details.py), in its own folder
        from llava_hydra.data.details import ensure_generated as ensure_details

        return ensure_details(root / "details", s.num_images, s.num_eval, s.seed)
    return ensure_generated(root, s.num_images, s.num_text_only, s.num_eval, s.seed)


def eval_data_path(cfg) -> str | None:
    """The held-out set to evaluate on: ``data.eval_data_path``, except the synthetic held-out
    file when the training data is a user's or a stream's (it belongs to the synthetic training data only).
    Set ``data.eval_data_path`` to a file of one's own to evaluate on it."""
    d = cfg.data
    root = synthetic_root(cfg)
    if d.eval_data_path and _under(d.eval_data_path, root) and (streamed(cfg) or not _under(d.data_path, root)):
        return None
    return d.eval_data_path


def streamed(cfg) -> bool:
    """Whether the run trains on ``data.stream.shards`` (then data_path / image_folder are not read)."""
    stream = cfg.data.get("stream") if hasattr(cfg.data, "get") else None
    return bool(stream is not None and stream.get("shards"))


def corpus() -> list[str]:
    """Every text the synthetic data can contain, for training the tiny tokenizer."""
    words = [*COLORS, *SHAPES, *REPEAT_WORDS, "a", "Repeat the word:", "yes", "no"]
    return [*COLOR_QUESTIONS, *SHAPE_QUESTIONS, *CAPTION_PROMPTS, *words,
            *(f"a {c} {s}." for c in COLORS for s in SHAPES)]
