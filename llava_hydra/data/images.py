"""Images: file -> RGB -> square (processor's resize + centre crop) or pad -> pixel values.

Owns everything between an image path and the vision tower's input: EXIF orientation,
conversion of RGBA / LA / palette (transparency composited onto white), grayscale, CMYK and
16-bit images to 8-bit RGB, LLaVA's ``expand2square`` for ``image_aspect_ratio=pad`` (filled
with the processor's mean colour, ``int(255 * mean)`` as LLaVA does), and the cheap header
probe the check command uses. Every failure is an ``ImageError`` that says what is wrong.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

ASPECTS = ("square", "pad")


class ImageError(ValueError):
    """An image file that cannot be used: missing, empty, corrupt, truncated or zero-sized."""


def to_rgb(img: Image.Image) -> Image.Image:
    mode = img.mode
    if mode == "RGB":
        return img
    if mode.startswith("I;16") or mode in ("I", "F"):  # 16/32-bit grayscale: scale to 8 bits
        arr = np.asarray(img).astype(np.float64)
        top = 65535.0 if mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        if mode == "F" and arr.max(initial=0) <= 1.0:
            top = 1.0
        arr = np.clip(np.rint(arr * (255.0 / top)), 0, 255).astype(np.uint8)
        return Image.fromarray(arr, mode="L").convert("RGB")
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    elif mode in ("LA", "PA", "La", "RGBa"):
        img = img.convert("RGBA")
    if img.mode == "RGBA":
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, img).convert("RGB")
    return img.convert("RGB")


def open_rgb(path: str | Path) -> Image.Image:
    """The fully decoded image, upright (EXIF) and RGB; ImageError when it cannot be."""
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"image file not found: {path}")
    if path.stat().st_size == 0:
        raise ImageError(f"image file is empty (0 bytes): {path}")
    try:
        with Image.open(path) as img:
            img.load()  # decodes now: a truncated or corrupt file fails here, not in the worker's collate
            if 0 in img.size:
                raise ImageError(f"image has zero size {img.size}: {path}")
            img = ImageOps.exif_transpose(img)
            return to_rgb(img)
    except ImageError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ImageError(f"cannot read image {path}: {e}") from None


def probe(path: str | Path, decode: bool = False) -> str | None:
    """None if the image looks usable, else the problem. Reads the header only (size, format);
    ``decode`` also runs PIL's verify (a full pass over the file's data)."""
    path = Path(path)
    try:
        if not path.is_file():
            return f"image file not found: {path}"
        if path.stat().st_size == 0:
            return f"image file is empty (0 bytes): {path}"
        with Image.open(path) as img:
            if 0 in img.size:
                return f"image has zero size {img.size}: {path}"
            if decode:
                img.verify()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        return f"cannot read image {path}: {e}"
    return None


def expand2square(img: Image.Image, fill: tuple[int, int, int]) -> Image.Image:
    w, h = img.size
    if w == h:
        return img
    side = max(w, h)
    canvas = Image.new("RGB", (side, side), fill)
    canvas.paste(img, ((side - w) // 2, (side - h) // 2))
    return canvas


def mean_colour(image_processor) -> tuple[int, int, int]:
    return tuple(int(c * 255) for c in image_processor.image_mean)


def process(img: Image.Image, aspect: str, image_processor):
    """One RGB image -> pixel values (C, H, W) as the vision tower expects them."""
    if aspect == "pad":
        img = expand2square(img, mean_colour(image_processor))
    elif aspect != "square":
        raise ValueError(f"image_aspect_ratio must be one of {ASPECTS}, got {aspect!r}")
    return image_processor(img, return_tensors="pt")["pixel_values"][0]


def load_image(path: str | Path, aspect: str, image_processor):
    """File -> pixel values (C, H, W); ImageError for an unusable file."""
    return process(open_rgb(path), aspect, image_processor)
