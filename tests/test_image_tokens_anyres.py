"""Image token counts from image sizes (data/image_tokens.py): LLaVA-1.5's fixed run, LLaVA-NeXT's
AnyRes grid and LLaVA-OneVision's anyres_max_9, written out for a table of sizes and equal to what
transformers' processors compute for the same sizes."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from llava_hydra.data.image_tokens import ImageTokens, expand_pinpoints, select_best_resolution

sys.path.insert(0, str(Path(__file__).parent / "helpers"))
import stand_ins  # noqa: E402

NEXT_PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]  # LLaVA-NeXT 1.6
OV_PINPOINTS = expand_pinpoints("(1x1),...,(6x6)", 384)  # OneVision: every grid 1x1 .. 6x6 of 384 px
NEXT = ImageTokens(576, 336, 14, NEXT_PINPOINTS, "anyres")  # CLIP-L/336, patch features (CLS dropped)
OV = ImageTokens(729, 384, 14, OV_PINPOINTS, "anyres_max_9")  # SigLIP-so400m-384, all 729 tokens

# (height, width) -> (LLaVA-NeXT tokens, its grid rows x cols, OneVision tokens, its grid)
TABLE = {
    (336, 336): (1176, (1, 2), 1485, (1, 1)),  # a crop's size: NeXT still picks 336x672 (ties keep the first)
    (384, 384): (2928, (2, 2), 1485, (1, 1)),  # OneVision's crop size exactly
    (336, 672): (1752, (1, 2), 2214, (1, 2)),  # exactly a NeXT pinpoint, landscape
    (1008, 336): (2376, (3, 1), 2997, (3, 1)),  # exactly a NeXT pinpoint, portrait 3:1
    (672, 672): (2928, (2, 2), 3699, (2, 2)),  # exactly a pinpoint, square
    (480, 640): (2340, (2, 2), 2929, (2, 2)),  # landscape 4:3 (a VGA photo)
    (640, 480): (2352, (2, 2), 2943, (2, 2)),  # portrait 3:4
    (1000, 200): (1656, (3, 1), 2187, (3, 1)),  # tall strip
    (200, 1000): (1598, (1, 3), 2123, (1, 3)),  # wide strip
    (10, 10): (1176, (1, 2), 1485, (1, 1)),  # tiny
    (4000, 6000): (2144, (2, 2), 7329, (4, 6)),  # huge: OneVision's 4x6 grid is interpolated down
    (2304, 2304): (2928, (2, 2), 7371, (6, 6)),  # OneVision's largest pinpoint exactly
}


@pytest.mark.parametrize("size", list(TABLE))
def test_counts_written_out(size):
    next_tokens, next_grid, ov_tokens, ov_grid = TABLE[size]
    assert (NEXT.tokens(*size), NEXT.grid(*size)) == (next_tokens, next_grid)
    assert (OV.tokens(*size), OV.grid(*size)) == (ov_tokens, ov_grid)


def test_llava15_is_fixed_whatever_the_size():
    rule = ImageTokens(576)
    assert rule.fixed == 576 and rule([(10, 10), (4000, 6000)]) == [576, 576]
    assert (str(rule), str(NEXT)) == ("576", "576 + crops by size (anyres)")  # what data.preview prints


def test_best_resolution_is_height_width():
    assert select_best_resolution(1000, 200, NEXT_PINPOINTS) == (1008, 336)
    assert select_best_resolution(200, 1000, NEXT_PINPOINTS) == (336, 1008)


def test_pinpoints_grid_form_and_bad_pinpoints():
    assert expand_pinpoints("(1x1),...,(2x2)", 32) == [[32, 32], [32, 64], [64, 32], [64, 64]]
    assert len(OV_PINPOINTS) == 36 and OV_PINPOINTS[-1] == [2304, 2304]
    with pytest.raises(ValueError, match="multiples of the vision tower's input size 336"):
        expand_pinpoints([[336, 500]], 336)


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    from llava_hydra.data.tokenizer import finish_tokenizer

    return finish_tokenizer(stand_ins.bpe_tokenizer(tmp_path_factory.mktemp("tok"), vocab_size=300), "tok", 8192)


def _sizes():
    import random

    rng = random.Random(0)
    return list(TABLE) + [(rng.randint(1, 5000), rng.randint(1, 5000)) for _ in range(400)]


def test_equal_to_llava_next_processor(tok):
    from transformers import LlavaNextProcessor
    from transformers.models.llava_next import LlavaNextImageProcessorPil

    ip = LlavaNextImageProcessorPil(image_grid_pinpoints=NEXT_PINPOINTS, size={"shortest_edge": 336},
                                    crop_size={"height": 336, "width": 336})
    proc = LlavaNextProcessor(image_processor=ip, tokenizer=tok, patch_size=14,
                              vision_feature_select_strategy="default", num_additional_image_tokens=1)
    sizes = _sizes()
    theirs = proc._get_num_multimodal_tokens(image_sizes=sizes)["num_image_tokens"]
    assert NEXT(sizes) == theirs


def test_equal_to_llava_next_processor_on_images(tok):
    """The processor's own call (pixels -> image_sizes -> expanded <image> run), at tiny size."""
    import numpy as np
    from PIL import Image
    from transformers import LlavaNextProcessor
    from transformers.models.llava_next import LlavaNextImageProcessorPil

    pinpoints = [[32, 64], [64, 32], [64, 64], [96, 32], [32, 96]]
    ip = LlavaNextImageProcessorPil(image_grid_pinpoints=pinpoints, size={"shortest_edge": 32},
                                    crop_size={"height": 32, "width": 32})
    proc = LlavaNextProcessor(image_processor=ip, tokenizer=tok, patch_size=8,
                              vision_feature_select_strategy="default", num_additional_image_tokens=1)
    rule = ImageTokens(16, 32, 8, pinpoints, "anyres")
    image_id = tok.convert_tokens_to_ids("<image>")
    # (30, 50): 1x2 grid, 4x8 features unpadded to 4x6: 16 + 24 + 4 newlines = 44; (7, 90): 1x3, every
    # feature row is padding: the base view alone
    expected = {(30, 50): 44, (50, 30): 46, (64, 64): 88, (100, 20): 52, (7, 90): 16}
    for (h, w), count in expected.items():
        img = Image.fromarray(np.zeros((h, w, 3), dtype=np.uint8))
        out = proc(text="hi <image>", images=[img], return_tensors="pt")
        assert int((out["input_ids"] == image_id).sum()) == rule.tokens(h, w) == count, (h, w)


def test_equal_to_llava_onevision_processor():
    """OneVision's processor object without __init__: in this environment its constructor needs a video
    processor, which needs torchvision; the count is its own ``_get_number_of_features``."""
    from transformers import LlavaOnevisionProcessor
    from transformers.models.llava_onevision import LlavaOnevisionImageProcessorPil

    proc = object.__new__(LlavaOnevisionProcessor)
    proc.image_processor = LlavaOnevisionImageProcessorPil(image_grid_pinpoints=OV_PINPOINTS,
                                                           size={"height": 384, "width": 384})
    proc.num_image_tokens, proc.vision_feature_select_strategy, proc.vision_aspect_ratio = 729, "full", "anyres_max_9"
    for h, w in _sizes():
        assert OV.tokens(h, w) == proc._get_number_of_features(h, w, 384, 384), (h, w)


def test_where_llava_next_training_code_differs():
    """LLaVA-NeXT's unpad_image truncates h * (cols / w) with int(); transformers rounds at 7 digits
    first. On 58 of the 4M sizes up to 2000 px they differ; we follow transformers (its model's
    forward must find as many features as tokens). One of them, 55x176:"""
    assert NEXT.tokens(55, 176) == 1360  # LLaVA-NeXT's own code: 1262 (int(23.999999) == 23 rows, -> 22)
