"""The high-resolution task (``data=synthetic_details``): a detail only the AnyRes crops can read.

Each 64x64 image (= tiny_next's 2x2 pinpoint: its crops are the image's own pixels) holds one
coloured square mark of 20-28 px on a noisy grey canvas. The mark carries one of four textures
at the finest scale an image has, one pixel: ``vertical`` stripes (columns alternate),
``horizontal`` stripes (rows alternate), ``checkered`` (both), or ``plain`` (none): the mark's
colour +/- AMPLITUDE levels per pixel. Downscaled 2x to the tiny tower's 32 px -- the base view,
which is all a base-resolution model sees -- every texture averages to the plain mark: a 2x
resize's symmetric kernel weighs each pixel with its opposite-parity neighbour equally. Where the
texture would stop abruptly the cancellation breaks at the edge (~14 of 110 levels), so its
amplitude fades in over TAPER px with a smoothstep (what is left: rounding, at most a few
levels, under the canvas noise). The mark's position, size, colour and the grey vary per image.

``qa.json``: two-turn chats, the mark's colour (readable at any resolution) and its texture, in
random order; ``qa_eval.json``: held-out images, one texture question each (four equally likely
answers: chance is 0.25). Written under ``<paths.cache_dir>/synthetic/details`` (``root``) on
first use, by data.synthetic.prepare when ``data.synthetic.task=details``.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np

SIZE = 64  # image side: tiny_next's 64x64 pinpoint (2x2 crops of the 32-px tower), 2x the base view
AMPLITUDE = 55  # texture: the mark's colour +/- this many 8-bit levels (fits every MARK_COLORS channel)
TAPER = 6  # px over which the texture's amplitude fades in from the mark's edge (smoothstep)
NOISE = 4  # uniform +/- levels of noise on every pixel (covers the few levels rounding leaves at base)
SIDES = (20, 22, 24, 26, 28)  # mark side, px (even: the mark starts on an even pixel, as the 2x grid does)
MARK_COLORS = {"red": (180, 60, 60), "green": (60, 160, 70), "blue": (60, 80, 190), "yellow": (190, 170, 60)}
PATTERNS = ("vertical", "horizontal", "checkered", "plain")
PATTERN_QUESTIONS = ("What pattern is on the mark?", "Which texture does the square have?",
                     "How is the small square patterned?")
COLOR_QUESTIONS = ("What color is the mark?", "Which color is the small square?")
VERSION = 1  # bump when the images or chats change, so a cached set is regenerated


def texture(pattern: str, side: int) -> np.ndarray:
    """(side, side) signs of the texture, +1 / -1 per pixel (0 for plain), times its fade-in window."""
    yy, xx = np.mgrid[0:side, 0:side]
    sign = {"vertical": (-1.0) ** xx, "horizontal": (-1.0) ** yy, "checkered": (-1.0) ** (xx + yy),
            "plain": np.zeros((side, side))}[pattern]
    edge = np.minimum(np.arange(side), np.arange(side)[::-1]) + 0.5  # pixel centre's distance to the edge
    t = np.clip(edge / TAPER, 0.0, 1.0)
    fade = 3 * t**2 - 2 * t**3
    return sign * np.outer(fade, fade)


def render(pattern: str, color: str, side: int, x0: int, y0: int, grey: int, noise_seed: int):
    """The image for one set of choices (what ``draw`` draws at random; tests render one scene
    with each pattern). ``x0``, ``y0``: the mark's top-left pixel."""
    from PIL import Image

    if pattern not in PATTERNS or color not in MARK_COLORS:
        raise ValueError(f"pattern {pattern!r} / color {color!r}: expected one of {PATTERNS} / {tuple(MARK_COLORS)}")
    if not (0 <= x0 <= SIZE - side and 0 <= y0 <= SIZE - side):
        raise ValueError(f"a {side}-px mark at ({x0}, {y0}) does not fit a {SIZE}-px image")
    canvas = np.full((SIZE, SIZE, 3), float(grey))
    mark = np.array(MARK_COLORS[color], dtype=float)
    canvas[y0:y0 + side, x0:x0 + side] = mark + AMPLITUDE * texture(pattern, side)[..., None]
    canvas += np.random.default_rng(noise_seed).uniform(-NOISE, NOISE, canvas.shape)
    return Image.fromarray(np.clip(np.rint(canvas), 0, 255).astype(np.uint8))


def draw(pattern: str, color: str, rng: random.Random):
    """A random scene with the given answers: mark side, even position (2 px from the border), grey, noise."""
    side = rng.choice(SIDES)
    x0, y0 = (2 * rng.randint(1, (SIZE - side) // 2 - 1) for _ in range(2))
    return render(pattern, color, side, x0, y0, rng.randint(90, 200), rng.randrange(2**31))


def _turn(who: str, text: str) -> dict:
    return {"from": who, "value": text}


def generate(root: str | Path, num_images: int, num_eval: int, seed: int) -> None:
    """Write images/, qa.json and qa_eval.json under ``root``: every (pattern, colour) pair equally
    often in training, drawn at random for the held-out images."""
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    combos = [(p, c) for p in PATTERNS for c in MARK_COLORS]
    qa, qa_eval = [], []
    for i in range(num_images + num_eval):
        held_out = i >= num_images
        pattern, color = rng.choice(combos) if held_out else combos[i % len(combos)]
        name = f"{'eval' if held_out else 'train'}_{i:05d}.png"
        draw(pattern, color, rng).save(root / "images" / name)
        texture_qa = (rng.choice(PATTERN_QUESTIONS), pattern)
        if held_out:
            qa_eval.append({"id": f"eval-{i}", "image": name, "conversations": [
                _turn("human", f"<image>\n{texture_qa[0]}"), _turn("gpt", pattern)]})
            continue
        color_qa = (rng.choice(COLOR_QUESTIONS), color)
        first, second = (color_qa, texture_qa) if rng.random() < 0.5 else (texture_qa, color_qa)
        qa.append({"id": f"qa-{i}", "image": name, "conversations": [
            _turn("human", f"<image>\n{first[0]}"), _turn("gpt", first[1]),
            _turn("human", second[0]), _turn("gpt", second[1])]})
    rng.shuffle(qa)
    for file, records in (("qa.json", qa), ("qa_eval.json", qa_eval)):
        (root / file).write_text(json.dumps(records, indent=1))


def ensure_generated(root: str | Path, num_images: int, num_eval: int, seed: int) -> bool:
    """Generate the set unless ``root`` already holds one made with the same parameters; True when it generated."""
    root = Path(root)
    spec = {"task": "details", "num_images": num_images, "num_eval": num_eval, "seed": seed, "version": VERSION}
    manifest = root / "manifest.json"
    if manifest.exists() and json.loads(manifest.read_text()) == spec:
        return False
    generate(root, num_images, num_eval, seed)
    manifest.write_text(json.dumps(spec))
    return True
