"""How many tokens one ``<image>`` becomes. LLaVA-1.5: the vision tower's patch grid, plus its CLS token
when the selected features keep it. One place for the count, read by the model's assembly
(``LlavaConfig.image_seq_length``) and by the data commands, which count from the configs
alone without building a model. LLaVA-NeXT / OneVision (``ImageTokens``): the count depends on
the image's (height, width), by the rule their transformers processors use (AnyRes, below).

LLaVA's ``mm_vision_select_feature`` (``patch`` | ``cls_patch``) maps to transformers'
``vision_feature_select_strategy`` (``default`` drops the first token, ``full`` keeps all).
"""

from __future__ import annotations

import math

from llava_hydra.config.families import expand_pinpoints  # noqa: F401 (the data side reads it here)
from llava_hydra.config.schema import CHOICES
from llava_hydra.config.validate import check_choice

SELECT_FEATURES = CHOICES["model.mm_vision_select_feature"]  # patch, cls_patch


def has_cls_token(vision_config) -> bool:
    """CLIP's tower prepends a CLS token to its patch features; SigLIP's has none."""
    return vision_config.model_type.startswith("clip")


def select_strategy(feature: str, has_cls: bool) -> str:
    """transformers' ``vision_feature_select_strategy`` for LLaVA's ``mm_vision_select_feature``:
    ``default`` drops the first token (CLS), ``full`` keeps all. ``patch`` on a tower without a
    CLS token (SigLIP) keeps all its tokens, which are all patches."""
    check_choice("model.mm_vision_select_feature", feature)
    if feature == "cls_patch" and not has_cls:
        raise ValueError("model.mm_vision_select_feature=cls_patch: this vision tower (SigLIP) has no CLS token; "
                         "use patch")
    return "default" if feature == "patch" and has_cls else "full"


def select_feature(strategy: str, has_cls: bool) -> str:
    """The inverse of ``select_strategy``: the mm_vision_select_feature a Llava config describes."""
    return "cls_patch" if strategy == "full" and has_cls else "patch"


def image_token_count(vision_config, strategy: str) -> int:
    """Tokens per image for a vision tower config and a ``vision_feature_select_strategy``."""
    patches = (vision_config.image_size // vision_config.patch_size) ** 2
    return patches + (1 if strategy == "full" and has_cls_token(vision_config) else 0)


# -- image sizes -> token counts (LLaVA-NeXT / OneVision: AnyRes) ------------------------------------------
# One image of (height, width) becomes: the base view (``image_token_count`` tokens, as LLaVA-1.5) plus,
# for the AnyRes families, the crops of the grid ``select_best_resolution`` picks from the pinpoints,
# their patch features unpadded back to the image's aspect ratio (anyres_max_N: bilinearly downsampled
# when more than N crops' worth remain) and one newline token per row of what is left. Equal to
# transformers' LlavaNextProcessor / LlavaOnevisionProcessor ``_get_number_of_features`` (tests compare).

def select_best_resolution(height: int, width: int, pinpoints) -> tuple[int, int]:
    """The (height, width) of ``pinpoints`` that keeps most of the image's pixels once it is scaled
    to fit (ties: the least padding), as transformers' and LLaVA-NeXT's ``select_best_resolution``."""
    best, best_effective, best_wasted = None, 0, float("inf")
    for ph, pw in pinpoints:
        scale = min(pw / width, ph / height)
        effective = min(int(width * scale) * int(height * scale), width * height)
        wasted = ph * pw - effective
        if effective > best_effective or (effective == best_effective and wasted < best_wasted):
            best, best_effective, best_wasted = (ph, pw), effective, wasted
    return best


def unpadded_grid(height: int, width: int, rows: int, cols: int) -> tuple[int, int]:
    """The (rows, cols) of a crop grid's patch features left once the padding that kept the image's
    aspect ratio is cut away (transformers' ``unpad_image``: rounded at 7 digits before the cut)."""
    if width / height > cols / rows:  # padded above and below
        new = int(round(height * (cols / width), 7))
        rows -= (rows - new) // 2 * 2
    else:  # padded left and right
        new = int(round(width * (rows / height), 7))
        cols -= (cols - new) // 2 * 2
    return rows, cols


def max_crops(aspect: str) -> int | None:
    """N of ``anyres_max_N`` (OneVision's feature budget), None for plain ``anyres``."""
    return int(aspect[len("anyres_max_"):]) if aspect.startswith("anyres_max_") else None


class ImageTokens:
    """Tokens per image for one model: ``tokens(height, width)``, or ``runs(sizes)`` for all the images
    of one sample. ``fixed`` is the count when it does not depend on the size (LLaVA-1.5), else None.
    ``multi_view``: several images in one sample take one base view + a newline token each, no crops
    (OneVision: LLaVA-NeXT's train.py pads each, transformers' ``batch_num_images``). ``key``
    identifies the rule for caches."""

    def __init__(self, base: int, crop: int = 0, patch: int = 1, pinpoints=None, aspect: str = "square",
                 multi_view: bool = False):
        self.base, self.crop, self.side, self.aspect = base, crop, crop // patch if crop else 0, aspect
        self.pinpoints = [tuple(p) for p in pinpoints] if pinpoints else None
        self.max_crops = max_crops(aspect)
        self.fixed = base if self.pinpoints is None else None
        self.multi_view = multi_view and self.fixed is None

    def __str__(self) -> str:  # what the data commands print per <image>
        if self.fixed is not None:
            return str(self.fixed)
        return f"{self.base} + crops by size ({self.aspect})" + (
            f"; {self.base + 1} each of several in a sample" if self.multi_view else "")

    @property
    def key(self) -> list:
        if self.fixed is not None:
            return [self.base]
        return [self.base, self.crop, self.side, self.pinpoints, self.aspect] + (["multi_view"] if self.multi_view else [])

    def grid(self, height: int, width: int) -> tuple[int, int]:
        """(rows, cols) of crops the image is cut into."""
        ph, pw = select_best_resolution(height, width, self.pinpoints)
        return ph // self.crop, pw // self.crop

    def tokens(self, height: int, width: int) -> int:
        if self.fixed is not None:
            return self.fixed
        if height <= 0 or width <= 0:
            raise ValueError(f"image size {height}x{width} has no pixels")
        gr, gc = self.grid(height, width)
        rows, cols = unpadded_grid(height, width, self.side * gr, self.side * gc)
        if self.max_crops is not None:  # anyres_max_N: interpolated down past N crops' worth (x1.1)
            ratio = math.sqrt(rows * cols / (self.max_crops * self.side ** 2))
            if ratio > 1.1:
                rows, cols = int(rows // ratio), int(cols // ratio)
        return self.base + rows * cols + rows  # base view + unpadded crops + a newline per row

    def __call__(self, sizes) -> list[int]:
        """Counts for a list of (height, width), each image on its own (as if alone in its sample)."""
        return [self.tokens(h, w) for h, w in sizes]

    def runs(self, sizes) -> list[int]:
        """The run of each image of one sample, from all its (height, width): under ``multi_view`` two or
        more images take the base view + one newline token each (whatever their sizes)."""
        sizes = list(sizes)
        if self.multi_view and len(sizes) > 1:
            return [self.base + 1] * len(sizes)
        return self(sizes)


def tokens_for_config(config, aspect: str | None = None) -> ImageTokens:
    """The rule of a (transformers) Llava / LlavaNext / LlavaOnevision config."""
    vc = config.vision_config
    base = image_token_count(vc, config.vision_feature_select_strategy)
    pinpoints = getattr(config, "image_grid_pinpoints", None)
    if not pinpoints:
        return ImageTokens(getattr(config, "image_seq_length", None) or base)
    aspect = aspect or getattr(config, "vision_aspect_ratio", None) or "anyres"
    return ImageTokens(base, vc.image_size, vc.patch_size, pinpoints, aspect,
                       multi_view=config.model_type == "llava_onevision")
