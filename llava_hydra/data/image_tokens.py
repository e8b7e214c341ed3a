"""How many tokens one ``<image>`` becomes: the vision tower's patch grid, plus its CLS token
when the selected features keep it. One place for the count, read by the model's assembly
(``LlavaConfig.image_seq_length``) and by the data commands, which count from the configs
alone without building a model.

LLaVA's ``mm_vision_select_feature`` (``patch`` | ``cls_patch``) maps to transformers'
``vision_feature_select_strategy`` (``default`` drops the first token, ``full`` keeps all).
"""

from __future__ import annotations

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
