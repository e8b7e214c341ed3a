"""AnyRes images (LLaVA-NeXT / OneVision) on the data side: the image processor of a family,
an image's (height, width) read from its file header (no decoding), and an image's pixels as the
model takes them: ``pixel_values`` (crops, C, h, w) -- the base view then the grid's crops -- and
``image_sizes`` (height, width).

Pixels come from data/anyres_pixels.py: the AnyRes processor's steps on uint8 tensors (the fast
path, as pixels.py's for the base view) or transformers' own AnyRes image processor. Sizes from headers are what the length pass and the
sample's token runs count with (data/image_tokens.py); they are upright sizes: an EXIF rotation
of 90 or 270 degrees swaps them, as the decoder's transpose will (images.open_rgb). With a record
store they are read once and kept in it (store_sizes.py), and a decoded image is checked against
the stored size (``DecodedSize``).
"""

from __future__ import annotations

from pathlib import Path

from llava_hydra.config.families import FAMILIES, pinpoints_for
from llava_hydra.data.anyres_pixels import anyres_pipeline
from llava_hydra.data.image_headers import orientation
from llava_hydra.data.images import ImageError, ImageSource
from llava_hydra.data.image_tokens import ImageTokens, has_cls_token, image_token_count, select_strategy
from llava_hydra.data.multi_view import is_multi_view, multi_view_images

_SWAPPING = {5, 6, 7, 8}  # EXIF orientations that turn the image a quarter


def header_size(path: str | Path) -> tuple[int, int]:
    """(height, width) of the upright image, from the file's header; OSError / PIL errors pass up."""
    from PIL import Image

    with Image.open(path) as img:
        w, h = img.size
        if orientation(img, path) in _SWAPPING:  # a PNG is not decoded for it (image_headers.py)
            w, h = h, w
    return h, w


def tower_crop(vision_config) -> int:
    return vision_config.image_size


def family_image_processor(family: str, tower_processor, vision_config, pinpoints):
    """The AnyRes image processor of ``family`` for a vision tower: its crop is the tower's input size,
    its mean / std / resampling the tower's own processor's."""
    import transformers

    name = FAMILIES[family].image_processor
    crop = tower_crop(vision_config)
    cls = getattr(transformers, name)
    size = {"shortest_edge": crop} if family == "llava_next" else {"height": crop, "width": crop}
    kwargs = dict(image_grid_pinpoints=pinpoints, size=size, image_mean=list(tower_processor.image_mean),
                  image_std=list(tower_processor.image_std), do_convert_rgb=True)
    if family == "llava_next":
        kwargs["crop_size"] = {"height": crop, "width": crop}
    if getattr(tower_processor, "resample", None) is not None:
        kwargs["resample"] = tower_processor.resample
    return cls(**kwargs)


def token_rule(family: str, vision_config, select_feature: str, pinpoints, aspect: str) -> ImageTokens:
    """Tokens per image for a spec (configs only): fixed for llava, by size for the AnyRes families."""
    base = image_token_count(vision_config, select_strategy(select_feature, has_cls_token(vision_config)))
    if family == "llava":
        return ImageTokens(base)
    return ImageTokens(base, vision_config.image_size, vision_config.patch_size,
                       pinpoints_for(family, pinpoints, vision_config.image_size), aspect,
                       multi_view=family == "llava_onevision")


def anyres_pixels(rgb, image_processor):
    """One upright RGB image -> (pixel_values (crops, C, h, w), image_size tensor [height, width])."""
    return anyres_pipeline(image_processor)(rgb)


def image_size(source: ImageSource, name: str) -> tuple[int, int]:
    """(height, width) of a record's image from its file header (upright); ImageError if unreadable."""
    path = source.path(name)
    if not path.is_file():
        raise ImageError(f"image file not found: {path}", "missing_image")
    try:
        return header_size(path)
    except Exception as e:  # noqa: BLE001 -- PIL raises many kinds for a bad header
        raise ImageError(f"cannot read the image header of {path}: {e}", "unreadable_image") from None


def anyres_images(source: ImageSource, names: list[str], image_processor, of: int | None = None,
                  sizes: list[tuple[int, int]] | None = None) -> dict:
    """A sample's images: every image's crops (base view first) concatenated as ``pixel_values``,
    and ``image_sizes`` (n, 2); ImageError for an unusable image, or one whose decoded size is not
    the one its token run was counted from: ``sizes`` (one per name: the record store's,
    store_sizes.py), else its header's. ``of``: how many images the record
    has (``names`` may be the ones truncation kept). OneVision (multi_view.py): a record of several
    images gives each one padded base view, and the sample says how many it has (``batch_num_images``)."""
    import torch

    of = len(names) if of is None else of
    check = DecodedSize(None if sizes is None else dict(zip(names, sizes)))
    if is_multi_view(image_processor) and of > 1:
        return multi_view_images(source, names, image_processor, of, check)
    crops, out_sizes = [], []
    for name in names:
        pixels, size = anyres_pixels(source.open(name), image_processor)
        check(source, name, tuple(size.tolist()))
        crops.append(pixels)
        out_sizes.append(size)
    out = {"pixel_values": torch.cat(crops), "image_sizes": torch.stack(out_sizes)}
    if is_multi_view(image_processor):
        out["batch_num_images"] = torch.tensor([len(names)])
    return out


class DecodedSize:
    """``check(source, name, decoded)``: ImageError unless a decoded image's (height, width) is the one its
    token run was counted from: ``stored`` (name -> size, the record store's: store_sizes.py) or, without,
    its header's."""

    def __init__(self, stored: dict | None = None):
        self.stored = stored

    def __call__(self, source: ImageSource, name: str, decoded: tuple[int, int]) -> None:
        if self.stored is None:
            if decoded != image_size(source, name):
                raise ImageError(f"image {name}: decoded size {decoded} is not its header's "
                                 f"{image_size(source, name)}", "unreadable_image")
        elif decoded != tuple(self.stored[name]):
            raise ImageError(f"image {name}: decoded size {decoded} is not {tuple(self.stored[name])}, the size "
                             f"stored for it when its header was read (the record store's sizes, which its token "
                             f"run was counted from): {source.path(name)} was replaced by an image of another "
                             f"size since; delete the store's sizes/ folder (or paths.cache_dir) to read the "
                             f"headers again", "unreadable_image")
