"""Packing (``training.packing=true``) with AnyRes samples (LLaVA-NeXT and OneVision): a packed row's
lengths count each image's own token run (by its size), its runs stay whole, it carries every crop of
every image in order with one ``image_sizes`` entry per image, and the packed forward gives each sample
the loss it has alone. Tiny LlavaNext / LlavaOnevision models built from configs (no training)."""

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
from llava_hydra.data.image_tokens import tokens_for_config
from llava_hydra.data.labels import IGNORE_INDEX
from llava_hydra.sampling.packing import PackedCollator, PackedDataset, pack_samples

NEXT_PINPOINTS = [[32, 64], [64, 32], [64, 64], [96, 32], [32, 96]]  # model=tiny_next's: 32-px crops
OV_PINPOINTS = [[32 * r, 32 * c] for r in range(1, 7) for c in range(1, 7)]  # tiny_onevision's (1x1),...,(6x6)
# (width, height) of each sample's image, and what each image's run is (base 16 + unpadded grid + newlines)
NEXT = {"sizes": [(50, 30), (30, 90), (64, 64)], "runs": [44, 76, 88], "crops": [3, 4, 5]}  # 1x2, 3x1, 2x2 grids
OV = {"sizes": [(50, 30), (128, 120), (40, 100)], "runs": [44, 172, 128],  # 4x4 grid: 16 + 12x12 + 12,
      "crops": [3, 17, 9]}  # downsampled to 9 crops' worth (anyres_max_9); 4x2 grid


@pytest.fixture(scope="module")
def tok(bpe400):
    return bpe400


def tiny_model(family: str, tok):
    """A LlavaNext (CLIP) or LlavaOnevision (SigLIP, anyres_max_9) at 32 px with 8-px patches."""
    from transformers import (CLIPVisionConfig, LlamaConfig, LlavaNextConfig, LlavaNextForConditionalGeneration,
                              LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration, SiglipVisionConfig)

    text = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024)
    tower = dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                 num_attention_heads=4)
    image_token = tok.convert_tokens_to_ids("<image>")
    torch.manual_seed(0)
    if family == "llava_next":
        config = LlavaNextConfig(text_config=text, vision_config=CLIPVisionConfig(**tower), vision_feature_layer=-2,
                                 image_grid_pinpoints=NEXT_PINPOINTS, image_token_index=image_token,
                                 vision_feature_select_strategy="default")
        model = LlavaNextForConditionalGeneration(config)
    else:
        config = LlavaOnevisionConfig(text_config=text, vision_config=SiglipVisionConfig(**tower),
                                      vision_feature_layer=-2, image_grid_pinpoints=OV_PINPOINTS,
                                      image_token_index=image_token, vision_feature_select_strategy="full",
                                      vision_aspect_ratio="anyres_max_9")
        model = LlavaOnevisionForConditionalGeneration(config)
    model.config.text_config._attn_implementation = "sdpa"
    with torch.no_grad():  # a visible newline embedding (it is zeros at init in neither, but be sure)
        model.model.image_newline.normal_()
    return model.eval()


def dataset(tmp_path, tok, family, table, model_max_length=512, extra=()):
    pinpoints = NEXT_PINPOINTS if family == "llava_next" else OV_PINPOINTS
    records = []
    for k, (w, h) in enumerate(table["sizes"]):
        Image.new("RGB", (w, h), (60 * k, 200 - 50 * k, 90)).save(tmp_path / f"{k}.png")
        records.append({"id": k, "image": f"{k}.png", "conversations": turns("<image>\nWhat color?", f"Red {k}.")})
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in [*records, *extra]))
    processor = family_image_processor(family, testing.clip_processor(), SimpleNamespace(image_size=32), pinpoints)
    model = tiny_model(family, tok)
    ds = LazySupervisedDataset(tmp_path / "d.jsonl", tok, processor, "v1", image_folder=tmp_path,
                               image_aspect_ratio="anyres" if family == "llava_next" else "anyres_max_9",
                               model_max_length=model_max_length, num_image_tokens=tokens_for_config(model.config),
                               image_token_id=model.config.image_token_index)
    return ds, model


def runs(ids, token) -> list[tuple[int, int]]:
    """(start, length) of every run of ``token`` in ``ids``."""
    out, prev = [], -2
    for i in (ids == token).nonzero().flatten().tolist():
        if i == prev + 1:
            out[-1] = (out[-1][0], out[-1][1] + 1)
        else:
            out.append((i, 1))
        prev = i
    return out


def test_packed_row_of_three_next_samples_keeps_each_image_run_and_its_crops(tmp_path, tok):
    ds, model = dataset(tmp_path, tok, "llava_next", NEXT)
    image = model.config.image_token_index
    samples = [ds[i] for i in range(3)]
    text = len(samples[0]["input_ids"]) - 44  # the same prompt around each image: 94 text tokens
    assert text == 94 and [len(s["input_ids"]) for s in samples] == [138, 170, 182] == ds.modality_lengths
    row = pack_samples(samples)
    ids, labels, positions = row["input_ids"], row["labels"], row["position_ids"]
    assert row["sample_lengths"].tolist() == [138, 170, 182] and len(ids) == 490
    assert runs(ids, image) == [(69, 44), (138 + 69, 76), (308 + 69, 88)]  # whole runs, one a sample, in order
    assert positions.tolist() == [*range(138), *range(170), *range(182)]  # restart at every sample
    for start, s in zip((0, 138, 308), samples):  # each sample in place; its first label ignored
        n = len(s["input_ids"])
        assert torch.equal(ids[start:start + n], s["input_ids"])
        assert labels[start] == IGNORE_INDEX and torch.equal(labels[start + 1:start + n], s["labels"][1:])
    answers = [tok.decode(labels[a:b][labels[a:b] != IGNORE_INDEX]).strip() for a, b in ((0, 138), (138, 308),
                                                                                         (308, 490))]
    assert answers == ["Red 0.</s>", "Red 1.</s>", "Red 2.</s>"]
    assert row["pixel_values"].shape == (3 + 4 + 5, 3, 32, 32)  # every crop of every image, base view first
    assert torch.equal(row["pixel_values"], torch.cat([s["pixel_values"] for s in samples]))
    assert row["image_sizes"].tolist() == [[30, 50], [90, 30], [64, 64]]  # (height, width) per image

    batch = PackedCollator(tok.pad_token_id)([pack_samples(samples[:2]), pack_samples(samples[2:])])
    assert batch["input_ids"].shape == (2, 308) and batch["pixel_values"].shape == (12, 3, 32, 32)
    assert batch["image_sizes"].tolist() == [[30, 50], [90, 30], [64, 64]]
    flat = PackedCollator(tok.pad_token_id, "flash_attention_2")([pack_samples(samples[:2]), pack_samples(samples[2:])])
    assert flat["input_ids"].shape == (1, 490) and flat["image_sizes"].tolist() == [[30, 50], [90, 30], [64, 64]]


def test_packed_dataset_truncates_with_variable_runs_and_drops_a_cut_image_with_its_crops(tmp_path, tok):
    """model_max_length 200: a two-image sample (runs 44 + 88) keeps its first image only (the second run
    would not fit whole), the length pass counts what it keeps, its row carries that image's 3 crops and
    one size, and the model finds as many features as image tokens."""
    two = {"id": "two", "image": ["0.png", "2.png"],
           "conversations": turns("<image>\nWhat color?", "Red 0.", "<image>\nAnd this one?", "Red 2.")}
    ds, model = dataset(tmp_path, tok, "llava_next", NEXT, model_max_length=200, extra=[two])
    assert ds.modality_lengths == [138, 170, 182, 144]  # the cut sample: what truncation keeps
    s = ds[3]
    assert len(s["input_ids"]) == 144  # the text up to the second image: its run of 88 did not fit whole
    assert runs(s["input_ids"], model.config.image_token_index)[0][1] == 44 and len(runs(
        s["input_ids"], model.config.image_token_index)) == 1
    assert s["pixel_values"].shape[0] == 3 and s["image_sizes"].tolist() == [[30, 50]]
    # 634 tokens / (fill 0.86 x 370) -> 2 rows (counted at 200, the cut sample would make 690: 3 rows);
    # best-fit decreasing of 182, 170, 144, 138
    packed = PackedDataset(ds, capacity=370)
    assert sorted(map(sorted, packed.bins)) == [[0, 3], [1, 2]]
    rows = [packed[i] for i in range(len(packed))]
    for r, b in zip(rows, packed.bins):
        assert r["sample_lengths"].tolist() == [[138, 170, 182, 144][i] for i in b]
        assert len(r["input_ids"]) == sum([138, 170, 182, 144][i] for i in b) <= 370
        assert r["image_sizes"].tolist() == [[[30, 50], [90, 30], [64, 64], [30, 50]][i] for i in b]
        assert r["pixel_values"].shape[0] == sum([3, 4, 5, 3][i] for i in b)
    with torch.no_grad():
        model(**PackedCollator(tok.pad_token_id)(rows))  # raises if features and image tokens differ


def sample_losses(model, batch, bounds) -> list[float]:
    """Mean next-token loss of each sample: ``bounds`` (row, start, end) of each in the batch."""
    with torch.no_grad():
        logits = model(**batch).logits.float()
    out = []
    for r, a, b in bounds:
        target = batch["labels"][r, a + 1:b]
        out.append(torch.nn.functional.cross_entropy(logits[r, a:b - 1], target, ignore_index=IGNORE_INDEX).item())
    return out


@pytest.mark.parametrize("family, table", [("llava_next", NEXT), ("llava_onevision", OV)], ids=["next", "onevision"])
def test_packed_forward_gives_each_sample_its_unpacked_loss(tmp_path, tok, family, table):
    ds, model = dataset(tmp_path, tok, family, table)
    samples = [ds[i] for i in range(3)]
    image = model.config.image_token_index
    assert [runs(s["input_ids"], image)[0][1] for s in samples] == table["runs"]
    assert [s["pixel_values"].shape[0] for s in samples] == table["crops"]
    n0, n1, n2 = (len(s["input_ids"]) for s in samples)
    batch = PackedCollator(tok.pad_token_id)([pack_samples(samples[:2]), pack_samples(samples[2:])])
    packed = sample_losses(model, batch, [(0, 0, n0), (0, n0, n0 + n1), (1, 0, n2)])
    alone = sample_losses(model, DataCollator(tok.pad_token_id)(samples), [(0, 0, n0), (1, 0, n1), (2, 0, n2)])
    assert packed == pytest.approx(alone, abs=1e-5)
    assert len(set(round(x, 4) for x in alone)) == 3  # three different samples, not one loss three times
    mask = PackedCollator(tok.pad_token_id, explicit_mask=True)([pack_samples(samples)])  # the 4D-mask fallback
    assert sample_losses(model, mask, [(0, 0, n0), (0, n0, n0 + n1), (0, n0 + n1, n0 + n1 + n2)]) == pytest.approx(
        alone, abs=1e-5)
