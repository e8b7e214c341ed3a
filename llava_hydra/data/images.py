"""Images: a record's path -> checked file -> RGB (then pixels.py: square or pad -> pixel values).

Owns everything between an image path and the vision tower's input, and what is refused on the
way (each refusal an ``ImageError`` saying what is wrong, the same in training and in
``data.check --images``, its ``kind`` set where it is raised; :data:`IMAGE_KINDS`):

- ``image_outside_folder``: a path written to leave the image folder (``../`` past its top, absolute;
  checked lexically: symlinks inside the folder are followed), unless ``data.allow_images_outside_folder``;
- ``image_too_large``: an image over ``data.max_image_pixels`` (width x height from the header,
  before decoding) or over PIL's decompression-bomb limit, or one whose largest intermediate image
  would be (pixels.peak_size, from the size it is decoded at: ``pad``'s square canvas, so a
  1x30000 strip is refused instead of taking a 30000x30000 canvas; the shortest-edge resize's output
  under ``square``). At the default 50 MP: under pad a longer side up to 7071 px, under square an
  aspect ratio up to 50e6 / 336**2 = 443 for a 336 px tower;
- ``missing_image``: no file at the path;
- ``unreadable_image``: a file that is empty, zero-sized, or does not decode to its end
  (truncated, corrupt).

Decoding: JPEGs are decoded at a reduced scale (PIL's draft mode) when the resize that follows
needs fewer pixels; EXIF orientation; RGBA / LA / palette (transparency composited onto white),
grayscale, CMYK and 16-bit to 8-bit RGB. What follows (LLaVA's ``expand2square`` for
``image_aspect_ratio=pad``, resize, crop, normalize) lives in pixels.py.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from llava_hydra.data.pixels import draft_size, peak_size, pipeline, shortest_edge

DEFAULT_MAX_PIXELS = 50_000_000  # data.max_image_pixels' default; PIL's own warning starts at ~89 MP
_READ_ERRORS = (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError)


IMAGE_KINDS = {  # ImageError.kind -> what a report calls it (skip reasons, data.check)
    "missing_image": "image files missing",
    "unreadable_image": "image files unreadable (corrupt, truncated)",
    "image_too_large": "images over data.max_image_pixels",
    "image_outside_folder": "image paths outside data.image_folder",
    "missing_video": "video files missing (or no data.video_folder)",
    "unreadable_video": "video files unreadable (corrupt, no frames; data/video.py)",
    "multi_image_layout": "llava_onevision records of several images that truncation leaves with one (data/multi_view.py)",
}


class ImageError(ValueError):
    """An image that cannot be used; ``kind`` (an IMAGE_KINDS key) says which problem, for counts."""

    def __init__(self, message: str, kind: str):
        if kind not in IMAGE_KINDS:
            raise ValueError(f"ImageError kind must be one of {tuple(IMAGE_KINDS)}, got {kind!r}")
        super().__init__(message)
        self.kind = kind

    def __reduce__(self):  # kept across processes (DataLoader workers)
        return type(self), (str(self), self.kind)


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


def _allow_pixels(max_pixels: int | None) -> None:
    """Let PIL open what our own limit allows (its bomb check would refuse above 2x its threshold)."""
    if max_pixels is not None and Image.MAX_IMAGE_PIXELS is not None and max_pixels > Image.MAX_IMAGE_PIXELS:
        Image.MAX_IMAGE_PIXELS = max_pixels


def open_rgb(path: str | Path, max_pixels: int | None = None,
             draft: Callable[[int, int], tuple[int, int]] | None = None,
             peak: Callable[[int, int], tuple[int, str]] | None = None) -> Image.Image:
    """The image decoded to its end, upright (EXIF) and RGB; ImageError when it cannot be.
    ``max_pixels``: refuse larger images from the header, before decoding (None: PIL's own check).
    ``draft(w, h) -> (w', h')``: the least size the caller needs; a JPEG is decoded at the
    smallest DCT scale (1/2, 1/4, 1/8) that keeps at least that many pixels. ``peak(w, h) ->
    (pixels, what)``: the largest image the pixel path will make of it, refused over ``max_pixels``."""
    path = Path(path) if isinstance(path, (str, os.PathLike)) else path  # or a shard's bytes (data.stream)
    if not path.is_file():
        raise ImageError(f"image file not found: {path}", "missing_image")
    if path.stat().st_size == 0:
        raise ImageError(f"image file is empty (0 bytes): {path}", "unreadable_image")
    _allow_pixels(max_pixels)
    try:
        with Image.open(path) as img:
            w, h = img.size
            if 0 in img.size:
                raise ImageError(f"image has zero size {img.size}: {path}", "unreadable_image")
            if max_pixels is not None and w * h > max_pixels:
                raise ImageError(f"image is {w}x{h} = {w * h / 1e6:.1f} MP, over data.max_image_pixels="
                                 f"{max_pixels} ({max_pixels / 1e6:g} MP): {path}", "image_too_large")
            if draft is not None and img.format == "JPEG":
                img.draft("RGB", draft(w, h))
            if max_pixels is not None and peak is not None:
                pixels, what = peak(*img.size)  # the size it decodes at (a JPEG's draft scale)
                if pixels > max_pixels:
                    raise ImageError(f"image is {w}x{h}: {what} = {pixels / 1e6:.1f} MP, over data.max_image_pixels="
                                     f"{max_pixels} ({max_pixels / 1e6:g} MP): {path}", "image_too_large")
            img.load()  # decodes to the end now: a truncated or corrupt file fails here, not in collate
            img = ImageOps.exif_transpose(img, in_place=False) if img.getexif().get(0x0112, 1) != 1 else img
            return to_rgb(img)
    except ImageError:
        raise
    except Image.DecompressionBombError as e:
        raise ImageError(f"image is over PIL's decompression-bomb limit ({e}): {path}", "image_too_large") from None
    except _READ_ERRORS as e:
        raise ImageError(f"cannot read image {path}: {e}", "unreadable_image") from None


def outside_folder(folder: str | Path, name: str) -> str | None:
    """Where ``folder / name`` points when the path *as written* leaves ``folder`` (absolute, or ``..``
    past its top), else None. Lexical, never resolved: a symlink inside the folder is the user's own
    (LLaVA's playground links ``coco/``, ``gqa/`` ... in) and is followed; what a data file may not do
    is name a file outside the folder it was given."""
    if os.path.isabs(name):
        return os.path.normpath(name)
    norm = os.path.normpath(name)
    if norm == os.pardir or norm.startswith(os.pardir + os.sep):
        return os.path.normpath(os.path.join(os.path.abspath(folder), name))
    return None


@dataclass(frozen=True)
class ImageSource:
    """Where a dataset's images come from and what it refuses (data.image_folder,
    data.allow_images_outside_folder, data.max_image_pixels; ``aspect`` and ``edge``, the
    processor's shortest edge, bound the pixel path's largest image in ``check``)."""

    folder: Path = Path(".")
    allow_outside: bool = False
    max_pixels: int | None = DEFAULT_MAX_PIXELS
    aspect: str = "square"
    edge: int | None = None

    def path(self, name: str) -> Path:
        """The file a record's image path names; ImageError if the path leaves the folder."""
        path = self.folder / name
        if self.allow_outside:
            return path
        real = outside_folder(self.folder, name)
        if real is not None:
            how = "an absolute path" if os.path.isabs(name) else "a '../' path"
            raise ImageError(f"image path {name!r} leaves data.image_folder={str(self.folder)!r} "
                             f"({how}, to {real}); set data.allow_images_outside_folder=true to allow it",
                             "image_outside_folder")
        return path

    def open(self, name: str, draft=None, peak=None) -> Image.Image:
        return open_rgb(self.path(name), self.max_pixels, draft, peak)

    def load(self, name: str, aspect: str, image_processor):
        """Record image path -> pixel values (C, H, W); ImageError for an unusable image."""
        pixels = pipeline(image_processor)
        img = self.open(name, pixels.draft_size(aspect), peak_size(aspect, shortest_edge(image_processor)))
        return pixels(img, aspect)

    def check(self, name: str, decode: bool = False) -> ImageError | None:
        """None if the image is usable, else the problem (its ``kind`` and message). Without
        ``decode`` only the path is checked (inside the folder, a non-empty file); with it the file
        is decoded to its end under the pixel limit, as training would."""
        try:
            path = self.path(name)
            if not decode:
                if not path.is_file():
                    return ImageError(f"image file not found: {path}", "missing_image")
                empty = path.stat().st_size == 0
                return ImageError(f"image file is empty (0 bytes): {path}", "unreadable_image") if empty else None
            self.open(name, draft_size(self.aspect, self.edge), peak_size(self.aspect, self.edge))
        except ImageError as e:
            return e
        return None


def load_image(path: str | Path, aspect: str, image_processor, max_pixels: int | None = DEFAULT_MAX_PIXELS):
    """File -> pixel values (C, H, W); ImageError for an unusable file (no folder check)."""
    path = Path(path)
    return ImageSource(path.parent, allow_outside=True, max_pixels=max_pixels).load(path.name, aspect,
                                                                                      image_processor)
