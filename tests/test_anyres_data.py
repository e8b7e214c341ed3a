"""AnyRes samples (model.family=llava_next): each image's token run counted from its size in the file
header, in place in ids and labels of a multi-turn sample; the crops and image_sizes the model takes,
equal to transformers' image processor; the length pass, truncation and the collator with runs that
differ per image."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

import stand_ins as testing
from stand_ins import turns
from llava_hydra.data.anyres import family_image_processor
from llava_hydra.data.dataset import DataCollator, LazySupervisedDataset
from llava_hydra.data.image_tokens import ImageTokens
from llava_hydra.data.labels import IGNORE_INDEX

PINPOINTS = [[32, 64], [64, 32], [64, 64], [96, 32], [32, 96]]  # model=tiny_next's: 32-px crops
RULE = ImageTokens(16, 32, 8, PINPOINTS, "anyres")  # 4x4 patches a view
MULTI = turns("<image>\nWhat color is the shape?", "The shape is red.", "And which shape is it?", "A blue circle.")


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return testing.sentencepiece_tokenizer(tmp_path_factory.mktemp("sp"))


def processor():
    return family_image_processor("llava_next", testing.clip_processor(), SimpleNamespace(image_size=32), PINPOINTS)


def dataset(tmp_path, tok, records, rule=RULE, **kw):
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in records))
    return LazySupervisedDataset(tmp_path / "d.jsonl", tok, processor() if rule is RULE else testing.clip_processor(),
                                 "v1", image_folder=tmp_path, num_image_tokens=rule, **kw)


def image(tmp_path, name, w, h, colour=(200, 30, 30), **save):
    Image.new("RGB", (w, h), colour).save(tmp_path / name, **save)
    return name


def run_of(ids, token):
    where = (ids == token).nonzero().flatten().tolist()
    assert where == list(range(where[0], where[0] + len(where))), "one contiguous run"
    return where[0], len(where)


def test_multi_turn_sample_has_its_image_run_in_place(tmp_path, tok):
    img = tok.convert_tokens_to_ids("<image>")
    records = [{"id": "a", "image": image(tmp_path, "a.png", 50, 30), "conversations": MULTI}]
    s = dataset(tmp_path, tok, records)[0]
    base = dataset(tmp_path, tok, records, rule=16)[0]  # LLaVA-1.5's fixed run of 16, same text
    start, n = run_of(s["input_ids"], img)
    assert n == 44 and RULE.tokens(30, 50) == 44  # 1x2 grid: 16 + 4x6 unpadded + 4 newlines
    assert (start, run_of(base["input_ids"], img)[1]) == (run_of(base["input_ids"], img)[0], 16) and start > 0
    for key in ("input_ids", "labels"):  # the same sample with a longer run: everything else in place
        if key == "labels":
            assert (s[key][start:start + 44] == IGNORE_INDEX).all()
        assert torch.equal(s[key][:start], base[key][:start])
        assert torch.equal(s[key][start + 44:], base[key][start + 16:])
    trained = tok.decode(s["input_ids"][s["labels"] != IGNORE_INDEX])
    assert "The shape is red." in trained and "A blue circle." in trained
    assert s["pixel_values"].shape == (3, 3, 32, 32) and s["image_sizes"].tolist() == [[30, 50]]
    theirs = processor()(images=[Image.open(tmp_path / "a.png").convert("RGB")], return_tensors="pt")
    # the transformers image processor's (data/anyres_pixels.py's fast path: a plain colour differs by float rounding only)
    assert (s["pixel_values"] - theirs["pixel_values"][0]).abs().max() < 1e-5


def test_length_pass_counts_each_image_from_its_header(tmp_path, tok):
    records = [{"id": 0, "image": image(tmp_path, "w.png", 50, 30), "conversations": MULTI},
               {"id": 1, "image": image(tmp_path, "sq.png", 64, 64), "conversations": MULTI},
               {"id": 2, "conversations": turns("Describe a cat.", "A cat is an animal.")},
               {"id": 3, "image": image(tmp_path, "rot.jpg", 50, 30, exif=_rotated()), "conversations": MULTI}]
    ds = dataset(tmp_path, tok, records, cache_dir=tmp_path / "cache")
    assert ds.image_runs(["w.png", "sq.png", "rot.jpg"]) == [44, 88, 46]  # rot.jpg stands 30 wide, 50 high
    samples = [ds[i] for i in range(4)]
    assert ds.modality_lengths == [len(samples[0]["input_ids"]), len(samples[1]["input_ids"]),
                                   -len(samples[2]["input_ids"]), len(samples[3]["input_ids"])]
    assert len(samples[1]["input_ids"]) - len(samples[0]["input_ids"]) == 88 - 44
    assert samples[3]["image_sizes"].tolist() == [[50, 30]]  # decoded upright, as the header said


def _rotated():
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    return exif


def test_truncation_keeps_whole_runs_and_their_images_only(tmp_path, tok):
    img = tok.convert_tokens_to_ids("<image>")
    conv = turns("<image>\nWhat color is the shape?", "Red.", "<image>\nAnd this one?", "Blue.")
    records = [{"id": 0, "image": [image(tmp_path, "w.png", 50, 30), image(tmp_path, "sq.png", 64, 64, (0, 0, 200))],
                "conversations": conv}]
    full = dataset(tmp_path, tok, records, model_max_length=2048)[0]
    assert (full["input_ids"] == img).sum() == 44 + 88 and full["image_sizes"].tolist() == [[30, 50], [64, 64]]
    assert full["pixel_values"].shape == (3 + 5, 3, 32, 32)
    second = (full["input_ids"] == img).nonzero().flatten()[44].item()  # where run 2 starts
    cut = dataset(tmp_path, tok, records, model_max_length=second + 40)[0]  # ends inside run 2
    assert (cut["input_ids"] == img).sum() == 44 and cut["image_sizes"].tolist() == [[30, 50]]
    assert cut["pixel_values"].shape == (3, 3, 32, 32)
    assert "Red." in tok.decode(cut["input_ids"][cut["labels"] != IGNORE_INDEX])


def test_collator_concatenates_crops_and_sizes(tmp_path, tok):
    records = [{"id": 0, "image": image(tmp_path, "w.png", 50, 30), "conversations": MULTI},
               {"id": 1, "conversations": turns("Describe a cat.", "A cat is an animal.")},
               {"id": 2, "image": image(tmp_path, "sq.png", 64, 64), "conversations": MULTI}]
    ds = dataset(tmp_path, tok, records)
    batch = DataCollator(tok.pad_token_id)([ds[0], ds[1], ds[2]])
    assert batch["pixel_values"].shape == (3 + 5, 3, 32, 32)
    assert batch["image_sizes"].tolist() == [[30, 50], [64, 64]]


def test_missing_image_is_named_in_the_length_pass(tmp_path, tok):
    from llava_hydra.data.records import BadSampleError

    records = [{"id": "gone", "image": "nope.png", "conversations": MULTI}]
    ds = dataset(tmp_path, tok, records, cache_dir=tmp_path / "cache")
    with pytest.raises(BadSampleError, match=r"d.jsonl: sample 0 \(id='gone'\): image file not found"):
        ds.modality_lengths
