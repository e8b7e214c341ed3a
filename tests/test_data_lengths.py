"""The length pass: per-sample token counts equal what __getitem__ produces (image tokens
included, negative for text-only), computed once and cached on disk under the key of data
content, tokenizer, template and model_max_length; a second run only reads the cache."""

from __future__ import annotations

import json

import pytest
from PIL import Image

import stand_ins as testing
from llava_hydra.data import lengths
from stand_ins import turns
from llava_hydra.data.dataset import LazySupervisedDataset

N_IMG = 7


@pytest.fixture(scope="module")
def toks(tmp_path_factory):
    root = tmp_path_factory.mktemp("tok")
    return {"sp": testing.sentencepiece_tokenizer(root / "sp"), "bpe": testing.bpe_tokenizer(root / "bpe"),
            "qwen2": testing.qwen2_tokenizer(root / "q2"), "vicuna": testing.vicuna_tokenizer(root / "vicuna")}


@pytest.fixture
def data(tmp_path):
    Image.new("RGB", (20, 20)).save(tmp_path / "a.png")
    records = []
    for k in range(12):
        if k % 3 == 0:
            records.append({"id": k, "conversations": turns(f"Say {k} words.", "Word " * (k + 1))})
        else:
            records.append({"id": k, "image": "a.png",
                            "conversations": turns("What color is the shape?\n<image>", "Red " * (k + 1), "Sure?",
                                                   f"{k} yes.")})
    path = tmp_path / "d.json"
    path.write_text(json.dumps(records))
    return path


def make(path, tok, template="v1", max_length=2048, cache=None):
    return LazySupervisedDataset(path, tok, testing.clip_processor(), template, image_folder=path.parent,
                                 model_max_length=max_length, num_image_tokens=N_IMG, cache_dir=cache)


@pytest.mark.parametrize("tok_name,template", [("sp", "v1"), ("bpe", "llama_2"), ("sp", "plain"),
                                               ("bpe", "mpt"), ("qwen2", "chat_template"), ("vicuna", "v1"),
                                               ("vicuna", "llama_2"), ("vicuna", "plain")])
def test_lengths_equal_the_tokenized_samples(toks, data, tok_name, template):
    records = json.loads(data.read_text())
    if template == "plain":  # plain is for captions: image samples with one round
        records = [{**r, "conversations": r["conversations"][:2]} for r in records if "image" in r]
        data.write_text(json.dumps(records))
    ds = make(data, toks[tok_name], template)
    got = ds.modality_lengths
    for i in range(len(ds)):
        n = len(ds[i]["input_ids"])
        assert got[i] == (n if "image" in records[i] else -n), i
        assert "image" not in records[i] or n > N_IMG


def test_lengths_are_capped_at_model_max_length(toks, data):
    full = make(data, toks["sp"]).modality_lengths
    limit = sorted(abs(v) for v in full)[len(full) // 2]
    ds = make(data, toks["sp"], max_length=limit)
    capped = ds.modality_lengths
    keep = ~ds.length_table().nothing_to_train(limit)
    assert keep.sum() >= 3 and sum(abs(v) > limit for v in full) >= 3  # some are truncated
    for i, v in enumerate(full):
        if keep[i]:
            assert capped[i] == (min(v, limit) if v > 0 else max(v, -limit))
            assert len(ds[i]["input_ids"]) == abs(capped[i])


def test_second_run_reads_the_cache(toks, data, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    first = make(data, toks["sp"], cache=cache).modality_lengths
    (file,) = (cache / "lengths").glob("*.npz")

    def fail(*a, **k):
        raise AssertionError("recomputed although cached")

    monkeypatch.setattr(lengths, "compute", fail)
    assert make(data, toks["sp"], cache=cache).modality_lengths == first
    # a different template, max length or tokenizer is a different key: computed again
    for other in (dict(template="llama_2"), dict(max_length=100)):
        with pytest.raises(AssertionError, match="recomputed"):
            make(data, toks["sp"], cache=cache, **other).modality_lengths
    with pytest.raises(AssertionError, match="recomputed"):
        make(data, toks["bpe"], cache=cache).modality_lengths
    # the key is the data's content, not its path or mtime
    copy = tmp_path / "copy.json"
    copy.write_bytes(data.read_bytes())
    assert make(copy, toks["sp"], cache=cache).modality_lengths == first
    data.write_text(data.read_text().replace("yes.", "yes!"))
    with pytest.raises(AssertionError, match="recomputed"):
        make(data, toks["sp"], cache=cache).modality_lengths
    assert list((cache / "lengths").glob("*.npz")) == [file]


def test_damaged_cache_is_recomputed(toks, data, tmp_path):
    cache = tmp_path / "cache"
    first = make(data, toks["sp"], cache=cache).modality_lengths
    (file,) = (cache / "lengths").glob("*.npz")
    file.write_bytes(b"garbage")
    assert make(data, toks["sp"], cache=cache).modality_lengths == first


@pytest.mark.parametrize("tok_name,template", [("bpe", "v1"), ("vicuna", "v1"), ("vicuna", "plain")])
def test_first_label_position_predicts_nothing_to_train(toks, data, tok_name, template):
    fits = make(data, toks[tok_name], template).length_table()  # every record fits 2048: none is looked at
    assert fits.first_label.tolist() == [lengths.FITS] * len(fits.tokens)
    assert not fits.nothing_to_train(2048).any()
    ds = make(data, toks[tok_name], template, max_length=1)  # every record is longer: each one located
    table = ds.length_table()
    assert table.tokens.tolist() == fits.tokens.tolist()
    for i in range(len(ds)):
        limit = int(table.first_label[i])
        assert limit > 0
        assert make(data, toks[tok_name], template, max_length=limit + 1).encode(i)[0].labels[-1] != -100
        assert table.nothing_to_train(limit)[i]


def test_lengths_of_many_records_are_batched(toks, tmp_path):
    records = [{"id": k, "conversations": turns("Tell me a number.", str(k))} for k in range(5000)]
    path = tmp_path / "many.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records))
    ds = make(path, toks["bpe"])
    got = ds.modality_lengths
    assert len(got) == 5000 and all(v < 0 for v in got)
    assert got[4321] == -len(ds[4321]["input_ids"])


@pytest.mark.parametrize("tok_name,template", [("sp", "v1"), ("qwen2", "chat_template")])
def test_a_sample_cut_before_an_image_run_counts_what_it_keeps(toks, tmp_path, tok_name, template):
    """An image run that does not fit whole is dropped with everything after it: the length pass counts
    the tokens before it (what the sample holds, what packing fills a row with), not model_max_length."""
    Image.new("RGB", (20, 20)).save(tmp_path / "a.png")
    records = [{"id": k, "image": "a.png", "conversations": turns("Hi" + " there" * k, "Hello.",
                                                                 "<image>\nWhat color?", "Red.")} for k in range(4)]
    path = tmp_path / "d.json"
    path.write_text(json.dumps(records))
    full = make(path, toks[tok_name], template)
    image_at = [full[i]["input_ids"].tolist().index(full.image_token_id) for i in range(4)]
    assert image_at == sorted(image_at) and len(set(image_at)) == 4  # one more word a record
    limit = image_at[1] + N_IMG - 1  # record 0's run fits; records 1-3 are cut before theirs
    ds = make(path, toks[tok_name], template, max_length=limit)
    assert ds.modality_lengths == [limit, image_at[1], image_at[2], image_at[3]]
    assert [len(ds[i]["input_ids"]) for i in range(4)] == [limit, image_at[1], image_at[2], image_at[3]]
    assert [ds[i].get("pixel_values") is None for i in range(4)] == [False, True, True, True]
