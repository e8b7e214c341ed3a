"""LLaVA-OneVision's multi-image layout (data/multi_view.py): each image of a sample with several takes one
padded base view + one newline token, no crops (LLaVA-NeXT's train.py ``process_image(f, "pad")`` and
llava_arch's one-view branch; transformers' ``batch_num_images``). Counts written out and equal to
transformers' LlavaOnevisionProcessor, ids / labels of a multi-turn 2-image sample with both runs in place,
pixels equal to the transformers image processor's base view (and to LLaVA-NeXT's expand2square + resize),
truncation, and a batch that mixes a cropped single-image sample with a multi-image one run through
LlavaOnevisionForConditionalGeneration (it finds exactly as many features as tokens)."""

from __future__ import annotations

import json
from types import SimpleNamespace
from unittest import mock

import pytest
import torch
from PIL import Image

from stand_ins import turns
from llava_hydra.data.image_tokens import ImageTokens, expand_pinpoints
from llava_hydra.data.labels import IGNORE_INDEX

OV_PINPOINTS = expand_pinpoints("(1x1),...,(6x6)", 384)
OV = ImageTokens(729, 384, 14, OV_PINPOINTS, "anyres_max_9", multi_view=True)  # SigLIP-so400m-384
TINY_PINPOINTS = expand_pinpoints("(1x1),...,(6x6)", 32)  # model=tiny_onevision: 32-px crops, 4x4 patches
TINY = ImageTokens(16, 32, 8, TINY_PINPOINTS, "anyres_max_9", multi_view=True)
SIZES = {"red.png": (50, 30), "blue.png": (30, 70), "green.png": (64, 64)}  # (width, height) as PIL takes them
COLOURS = {"red.png": (200, 30, 30), "blue.png": (30, 30, 200), "green.png": (30, 200, 30)}
TWO_TURNS = {"id": "two", "image": ["red.png", "blue.png"],
             "conversations": turns("<image>\nWhat color is this?", "Red.", "And this one? <image>", "Blue.")}
THREE = {"id": "three", "image": ["red.png", "blue.png", "green.png"],
         "conversations": turns("<image><image><image>Name the colors.", "Red, blue, green.")}
SINGLE = {"id": "one", "image": "green.png", "conversations": turns("<image>\nWhat color is this?", "Green.")}
TEXT = {"id": "text", "conversations": turns("Say yes.", "Yes.")}


def test_counts_written_out_and_equal_to_transformers_processor():
    """Two or three images of any sizes: 729 + 1 each (SigLIP-384); alone, the same image is cut into crops."""
    from transformers import LlavaOnevisionProcessor

    assert OV.runs([(480, 640), (4000, 6000)]) == [730, 730]
    assert OV.runs([(480, 640), (1000, 200), (10, 10)]) == [730, 730, 730]
    assert OV.runs([(480, 640)]) == [2929] and OV.runs([(4000, 6000)]) == [7329]  # one image: AnyRes crops
    assert TINY.runs([(30, 50), (70, 30)]) == [17, 17] and TINY.runs([(30, 50)]) == [44]
    assert ImageTokens(729, 384, 14, OV_PINPOINTS, "anyres_max_9").runs([(480, 640), (10, 10)]) == [2929, 1485]
    proc = object.__new__(LlavaOnevisionProcessor)  # its own count (constructor needs torchvision's video processor)
    proc.num_image_tokens, proc.vision_feature_select_strategy, proc.vision_aspect_ratio = 729, "full", "anyres_max_9"
    proc.image_token = "<image>"
    for sizes in ([(480, 640), (4000, 6000)], [(480, 640), (1000, 200), (10, 10)]):
        inputs = {"batch_num_images": [len(sizes)], "image_sizes": sizes}
        theirs = [len(proc.replace_image_token(inputs, k)) // len(proc.image_token) for k in range(len(sizes))]
        assert OV.runs(sizes) == theirs


@pytest.fixture(scope="module")
def qwen_tok(tmp_path_factory):
    from llava_hydra.data.tiny import build_qwen2_tokenizer
    from llava_hydra.data.tokenizer import load_tokenizer

    path = tmp_path_factory.mktemp("qwen2")
    build_qwen2_tokenizer(path)
    tok = load_tokenizer(str(path), 512)
    tok.add_tokens(["<video>"], special_tokens=True)  # as model assembly does for OneVision
    return tok


def ov_processor():
    from transformers.models.siglip import SiglipImageProcessorPil

    from llava_hydra.data.anyres import family_image_processor

    return family_image_processor("llava_onevision", SiglipImageProcessorPil(size={"height": 32, "width": 32}),
                                  SimpleNamespace(image_size=32), TINY_PINPOINTS)


@pytest.fixture
def folder(tmp_path):
    for name, size in SIZES.items():
        Image.new("RGB", size, COLOURS[name]).save(tmp_path / name)
    return tmp_path


def dataset(folder, tok, records, rule=TINY, **kw):
    from llava_hydra.data.dataset import LazySupervisedDataset

    (folder / "d.json").write_text(json.dumps(records))
    return LazySupervisedDataset(folder / "d.json", tok, ov_processor(), "qwen_1_5", image_folder=folder,
                                 image_aspect_ratio="anyres_max_9", num_image_tokens=rule, **kw)


def runs_of(ids, token) -> list[tuple[int, int]]:
    """(start, length) of each run of ``token``."""
    out = []
    for k, t in enumerate(ids.tolist()):
        if t == token and (not out or out[-1][0] + out[-1][1] != k):
            out.append((k, 0))
        if t == token:
            out[-1] = (out[-1][0], out[-1][1] + 1)
    return out


def test_two_image_multi_turn_sample_ids_labels_pixels(folder, qwen_tok):
    from llava_hydra.data.pixels import expand2square

    image = qwen_tok.convert_tokens_to_ids("<image>")
    s = dataset(folder, qwen_tok, [TWO_TURNS])[0]
    fixed, _ = dataset(folder, qwen_tok, [TWO_TURNS], rule=ImageTokens(17)).encode(0)  # the text with fixed runs of 17
    assert runs_of(s["input_ids"], image) == [(21, 17), (59, 17)]  # each image's run where its tag stands
    assert s["input_ids"].tolist() == fixed.input_ids and s["labels"].tolist() == fixed.labels
    ids = s["input_ids"].tolist()
    one_tag_per_run = [t for k, t in enumerate(ids) if not (t == image and ids[k - 1] == image)]
    assert qwen_tok.decode(one_tag_per_run) == (  # LLaVA-NeXT's qwen_1_5; a lone tag moves to its turn's front
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n<image>\nWhat color is this?"
        "<|im_end|>\n<|im_start|>assistant\nRed.<|im_end|>\n<|im_start|>user\n<image>\nAnd this one?<|im_end|>\n"
        "<|im_start|>assistant\nBlue.<|im_end|>\n")
    assert len(ids) == 97 and (s["labels"][21:38] == IGNORE_INDEX).all()
    assert (s["labels"][59:76] == IGNORE_INDEX).all()
    assert qwen_tok.decode(s["input_ids"][s["labels"] != IGNORE_INDEX]) == "Red.<|im_end|>Blue.<|im_end|>"
    assert s["image_sizes"].tolist() == [[30, 50], [70, 30]] and s["batch_num_images"].tolist() == [2]

    # pixels: one view per image, the transformers image processor's for one sample of two images ...
    assert s["pixel_values"].shape == (2, 3, 32, 32)
    rgb = [Image.open(folder / n).convert("RGB") for n in TWO_TURNS["image"]]
    theirs = ov_processor()(images=[rgb], return_tensors="pt")
    assert theirs["batch_num_images"].tolist() == [2] and theirs["pixel_values"].shape == (2, 1, 3, 32, 32)
    assert torch.equal(s["pixel_values"], theirs["pixel_values"][:, 0])
    # ... a padded square: red (200, 30, 30) in the middle, the mean colour 127 above and below
    red = s["pixel_values"][0]
    assert red[:, 16, 16].tolist() == pytest.approx([200 / 127.5 - 1, 30 / 127.5 - 1, 30 / 127.5 - 1], abs=1e-4)
    assert red[:, 0, 16].tolist() == pytest.approx([127 / 127.5 - 1] * 3, abs=1e-4)
    assert red[:, 16, 0].tolist() == pytest.approx(red[:, 16, 16].tolist(), abs=1e-4)  # no padding left / right
    # ... and LLaVA-NeXT's own process_image(f, "pad"): expand2square with the mean colour, the tower's resize
    for k, img in enumerate(rgb):
        padded = expand2square(img, (127, 127, 127))
        llava_next = _siglip(padded)
        assert torch.equal(s["pixel_values"][k], llava_next), k


def _siglip(img):
    from transformers.models.siglip import SiglipImageProcessorPil

    return SiglipImageProcessorPil(size={"height": 32, "width": 32})(images=[img], return_tensors="pt")["pixel_values"][0]


def tiny_onevision(tok):
    """LlavaOnevisionForConditionalGeneration at tiny size from configs (tiny_onevision's shapes)."""
    from transformers import (LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration, Qwen2Config,
                              SiglipVisionConfig)

    vision = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                                image_size=32, patch_size=8)
    text = Qwen2Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                       num_attention_heads=2, num_key_value_heads=1)
    config = LlavaOnevisionConfig(vision_config=vision, text_config=text, image_grid_pinpoints=TINY_PINPOINTS,
                                  image_token_id=tok.convert_tokens_to_ids("<image>"),
                                  video_token_id=tok.convert_tokens_to_ids("<video>"), vision_feature_layer=-1,
                                  vision_feature_select_strategy="full", vision_aspect_ratio="anyres_max_9")
    torch.manual_seed(0)
    return LlavaOnevisionForConditionalGeneration(config)


def test_mixed_batch_single_cropped_and_multi_image_runs_through_the_model(folder, qwen_tok):
    """A cropped single image, a text-only sample, two and three images in one batch: the collator gives
    pixel_values in tag order, image_sizes and batch_num_images; the model finds exactly the tokens' count."""
    from llava_hydra.data.dataset import DataCollator
    from llava_hydra.data.image_tokens import tokens_for_config

    model = tiny_onevision(qwen_tok)
    rule = tokens_for_config(model.config)
    assert rule.multi_view and rule.key == TINY.key and rule.runs([(64, 64), (10, 10)]) == [17, 17]
    ds = dataset(folder, qwen_tok, [SINGLE, TEXT, TWO_TURNS, THREE], rule=rule)
    samples = [ds[i] for i in range(4)]
    image = qwen_tok.convert_tokens_to_ids("<image>")
    assert [[n for _, n in runs_of(x["input_ids"], image)] for x in samples] == [[88], [], [17, 17], [51]]
    assert samples[0]["pixel_values"].shape == (5, 3, 32, 32)  # 64x64: the base view + a 2x2 grid of crops
    batch = DataCollator(qwen_tok.pad_token_id)(samples)
    assert batch["pixel_values"].shape == (5 + 2 + 3, 3, 32, 32)
    assert batch["image_sizes"].tolist() == [[64, 64], [30, 50], [70, 30], [30, 50], [70, 30], [64, 64]]
    assert batch["batch_num_images"].tolist() == [1, 2, 3]
    assert torch.equal(batch["pixel_values"][5:7], samples[2]["pixel_values"])
    out = model(**batch)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert model.model.image_newline.grad.abs().sum() > 0  # every image's newline reached the loss
    without = {k: v for k, v in batch.items() if k != "batch_num_images"}  # as if every image were alone: crops
    with pytest.raises(RuntimeError, match=r"split_sizes=\[5, 3, 4, 3, 4, 5\]"):  # it would cut each into crops
        model(**without)


def test_truncation_keeps_whole_views_and_refuses_one_of_several(folder, qwen_tok):
    from llava_hydra.data.records import BadSampleError

    image = qwen_tok.convert_tokens_to_ids("<image>")
    record = {"id": "three_turns", "image": ["red.png", "blue.png", "green.png"],
              "conversations": turns("<image>\nWhat color is this?", "Red.", "<image>\nAnd this one?", "Blue.",
                                     "<image>\nAnd this?", "Green.")}
    full = dataset(folder, qwen_tok, [record])[0]
    assert runs_of(full["input_ids"], image) == [(21, 17), (59, 17), (101, 17)]
    two = dataset(folder, qwen_tok, [record], model_max_length=110)[0]  # ends inside the third run: 2 views kept
    assert (two["input_ids"] == image).sum() == 34 and two["batch_num_images"].tolist() == [2]
    assert torch.equal(two["pixel_values"], full["pixel_values"][:2]) and len(two["input_ids"]) == 101
    with pytest.raises(BadSampleError, match=r"sample 0 \(id='three_turns'\): truncation at model_max_length keeps "
                                             r"1 of this record's 3 images") as e:
        dataset(folder, qwen_tok, [record], model_max_length=70)[0]  # inside the second run: one view of three
    assert e.value.reason == "multi_image_layout"
    skipping = dataset(folder, qwen_tok, [record, TEXT], model_max_length=70, on_bad_sample="skip")
    assert "pixel_values" not in skipping[0]  # the text-only record stands in, and the skip is counted
    assert skipping.report()["by_reason"] == {"multi_image_layout": 1}
    from llava_hydra.data.check import check_dataset  # python -m llava_hydra.data.check finds it before training

    found = check_dataset(dataset(folder, qwen_tok, [record, TEXT, record], model_max_length=70))
    assert found["found"]["multi_image_layout"] == [[0, "three_turns", "truncation at model_max_length=70 keeps 1 "
                                                     "of its 3 images (a OneVision image of several is one view + a "
                                                     "newline; one alone is cropped)"], [2, "three_turns", mock.ANY]]
    assert (found["errors"], found["bad_samples"], found["found"]["over_length"]) == (2, 2, [])
    kept_two = check_dataset(dataset(folder, qwen_tok, [record], model_max_length=110))
    assert (kept_two["errors"], kept_two["found"]["over_length"]) == (0, [[0, "three_turns", "136 tokens"]])


def test_length_pass_and_cache_key_count_one_view_each(folder, qwen_tok):
    from llava_hydra.data.anyres import token_rule
    from llava_hydra.config.families import pinpoints_for

    ds = dataset(folder, qwen_tok, [TWO_TURNS, SINGLE, TEXT, THREE])
    assert ds.image_runs(["red.png", "blue.png", "green.png"]) == [17, 17, 17]
    assert ds.image_runs(["green.png"]) == [88]
    assert ds.modality_lengths == [97, 127, -39, 94]
    assert [len(ds[i]["input_ids"]) for i in range(4)] == [97, 127, 39, 94]
    vc = SimpleNamespace(image_size=32, patch_size=8, model_type="siglip_vision_model")
    assert token_rule("llava_onevision", vc, "patch", None, "anyres_max_9").key == TINY.key
    nxt = token_rule("llava_next", vc, "patch", None, "anyres")  # LLaVA-NeXT: crops for every image
    assert not nxt.multi_view and nxt.runs([(64, 64), (64, 64)]) == [nxt.tokens(64, 64)] * 2
    single_view = ImageTokens(16, 32, 8, pinpoints_for("llava_onevision", None, 32), "anyres_max_9")
    assert single_view.key != TINY.key  # a length cache of the old rule is not reused
