"""Model families (``model.family``): the transformers classes each is saved as, the image aspect
modes it trains with, its default AnyRes pinpoints, and the spec rules that tie ``model.family``,
``data.image_aspect_ratio``, ``model.mm_patch_merge_type`` and ``model.image_grid_pinpoints``
together. Names only (strings): every layer reads this table; model/families.py resolves the
classes.

An AnyRes family (llava_next, llava_onevision) with ``data.image_aspect_ratio`` square or pad
trains as LLaVA-1.5 does: one base view, LLaVA-NeXT's ``mm_patch_merge_type=flat``. That is what
LLaVA-NeXT's own stage-1 scripts run (``pretrain_siglip.sh``: no aspect flag, so ``square``); only
the projector is kept from such a run, and it loads into the AnyRes model of stage 2.
"""

from __future__ import annotations

import re
from typing import NamedTuple


class Family(NamedTuple):
    model: str  # transformers class of the whole model (what from_pretrained loads)
    core: str  # its inner model (vision tower + projector + LLM)
    config: str
    processor: str  # what AutoProcessor loads beside a saved model
    image_processor: str | None  # the AnyRes image processor (None: the vision tower's own)
    aspects: tuple[str, ...]  # data.image_aspect_ratio values that use its AnyRes path
    pinpoints: object  # default image_grid_pinpoints, in crops (rows x cols) or LLaVA-NeXT's grid form


FAMILIES = {
    "llava": Family("LlavaForConditionalGeneration", "LlavaModel", "LlavaConfig", "LlavaProcessor", None, (), None),
    "llava_next": Family("LlavaNextForConditionalGeneration", "LlavaNextModel", "LlavaNextConfig",
                         "LlavaNextProcessor", "LlavaNextImageProcessorPil", ("anyres",),
                         [[1, 2], [2, 1], [2, 2], [3, 1], [1, 3]]),  # LLaVA-NeXT 1.6's 5 (336x672 ...)
    "llava_onevision": Family("LlavaOnevisionForConditionalGeneration", "LlavaOnevisionModel",
                              "LlavaOnevisionConfig", "LlavaOnevisionProcessor", "LlavaOnevisionImageProcessorPil",
                              ("anyres_max_9",), "(1x1),...,(6x6)"),
}
BASE_ASPECTS = ("square", "pad")  # one base view (LLaVA-1.5); data.pixels.ASPECTS
MERGE_TYPES = ("flat", "spatial_unpad")  # model.mm_patch_merge_type (transformers' AnyRes models: spatial_unpad)


def is_anyres(aspect: str) -> bool:
    return aspect == "anyres" or aspect.startswith("anyres_max_")


def trained_family(family: str, aspect: str) -> str:
    """The family a run builds: an AnyRes family under a base aspect trains as LLaVA-1.5 (flat)."""
    return family if is_anyres(aspect) else "llava"


def expand_pinpoints(pinpoints, crop: int) -> list[list[int]]:
    """``image_grid_pinpoints`` as [[height, width], ...] in pixels. LLaVA-NeXT's grid form
    ``"(1x1),...,(6x6)"`` (OneVision) becomes every grid from the first to the last, times ``crop``."""
    if isinstance(pinpoints, str):
        found = [tuple(map(int, m)) for m in re.findall(r"\((\d+)x(\d+)\)", pinpoints)]
        if not found:
            raise ValueError(f"model.image_grid_pinpoints={pinpoints!r}: expected [[h, w], ...] or '(1x1),...,(6x6)'")
        (r0, c0), (r1, c1) = found[0], found[-1]
        return [[r * crop, c * crop] for r in range(r0, r1 + 1) for c in range(c0, c1 + 1)]
    points = [[int(h), int(w)] for h, w in pinpoints]
    bad = [p for p in points if p[0] % crop or p[1] % crop or min(p) <= 0]
    if bad:
        raise ValueError(f"model.image_grid_pinpoints {bad} are not whole multiples of the vision tower's "
                         f"input size {crop}")
    return points


def pinpoints_for(family: str, spec_pinpoints, crop: int) -> list[list[int]]:
    """The spec's pinpoints, or the family's default scaled to the tower's input size ``crop``."""
    if spec_pinpoints is not None:
        return expand_pinpoints(spec_pinpoints, crop)
    default = FAMILIES[family].pinpoints
    return expand_pinpoints(default if isinstance(default, str) else [[r * crop, c * crop] for r, c in default],
                            crop)


def family_problems(model, data, training=None) -> list[str]:
    """What does not fit together among model.family, data.image_aspect_ratio and
    model.mm_patch_merge_type (each a line naming the keys), and what AnyRes does not do yet."""
    family, aspect, merge = model.family, data.image_aspect_ratio, model.get("mm_patch_merge_type")
    if family not in FAMILIES:
        return []  # choice_problems names it
    problems = []
    allowed = FAMILIES[family].aspects
    if is_anyres(aspect) and aspect not in allowed:
        problems.append(f"data.image_aspect_ratio={aspect!r} is an AnyRes mode, and model.family={family!r} "
                        + (f"takes {', '.join(allowed)} (or square / pad: one base view)" if allowed else
                           "has none: use model.family=llava_next (anyres) or llava_onevision (anyres_max_9)"))
    if merge == "spatial_unpad" and not is_anyres(aspect):
        problems.append(f"model.mm_patch_merge_type=spatial_unpad needs an AnyRes data.image_aspect_ratio, got {aspect!r}")
    if merge == "flat" and is_anyres(aspect):
        problems.append(f"model.mm_patch_merge_type=flat with data.image_aspect_ratio={aspect!r}: transformers' "
                        f"AnyRes models merge spatial_unpad only")
    if is_anyres(aspect) and model.get("mm_vision_select_feature") == "cls_patch":
        problems.append("model.mm_vision_select_feature=cls_patch: the AnyRes grid has no place for a CLS token; use patch")
    problems += video_batch_problems(family, data, training)
    return problems


def video_batch_problems(family, data, training) -> list[str]:
    """Videos of different lengths get different frame counts, and transformers' OneVision takes one
    frame count per batch: refused before the run rather than at the first such batch, hours in."""
    folders = [data.get("video_folder")] + [s.get("video_folder") for s in (data.get("sources") or [])]
    if family != "llava_onevision" or training is None or not any(folders) or data.get("force_sample"):
        return []
    batch, packing = training.get("per_device_train_batch_size", 1), training.get("packing", False)
    if batch == 1 and not packing:
        return []
    return [f"video records (a video_folder is set) with "
            + ("training.packing" if packing else f"training.per_device_train_batch_size={batch}")
            + ": transformers takes one frame count per batch and clips of different lengths get different "
            "counts; set data.force_sample=true (every video data.frames_upbound frames) or "
            "per_device_train_batch_size=1 without packing (OneVision's recipe)"]
