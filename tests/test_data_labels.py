"""Labels from the rendered text: decoding the labelled tokens gives back exactly the answers
(+ the end-of-turn token) on a SentencePiece (Llama-style) and a byte-level BPE tokenizer and
through chat templates; image tokens expand to the right count; truncation never cuts an image
run and never hands out a sample with nothing to train on."""

from __future__ import annotations

import json

import pytest
from PIL import Image

import stand_ins as testing
from stand_ins import turns
from llava_hydra.data.conversation import render
from llava_hydra.data.dataset import LazySupervisedDataset
from llava_hydra.data.labels import IGNORE_INDEX, NothingToTrain, encode
from llava_hydra.data.records import normalize_turns

N_IMG = 5  # image tokens per image in these tests


@pytest.fixture(scope="module")
def toks(tmp_path_factory):
    root = tmp_path_factory.mktemp("tok")
    return {"sentencepiece": testing.sentencepiece_tokenizer(root / "sp"), "bpe": testing.bpe_tokenizer(root / "bpe"),
            "llama3": testing.llama3_tokenizer(root / "l3"), "qwen2": testing.qwen2_tokenizer(root / "q2")}


def labelled_runs(ids, labels):
    runs, cur = [], []
    for i, lab in zip(ids, labels):
        if lab != IGNORE_INDEX:
            assert lab == i
            cur.append(i)
        elif cur:
            runs.append(cur)
            cur = []
    return runs + ([cur] if cur else [])


def decoded_runs(tok, e):
    # a byte-level BPE may merge the separator space into the answer's first token (" Red"),
    # which is then labelled too: the space is the only thing allowed beyond the answer
    return [tok.decode(r).removeprefix(" ") for r in labelled_runs(e.input_ids, e.labels)]


MULTI = turns("<image>\nWhat color is the shape?", "The shape is red.", "And which shape is it?", "A blue circle.")
TEXT = turns("Describe a cat.", "A cat is an animal.", "Is the sky blue?", "Yes, it is.")
CLOSE = {"v1": "</s>", "llama_2": " </s>", "mpt": "<|im_end|>"}


@pytest.mark.parametrize("tok_name", ["sentencepiece", "bpe"])
@pytest.mark.parametrize("template", ["v1", "llama_2", "mpt"])
@pytest.mark.parametrize("conv,has_image", [(MULTI, True), (TEXT, False)])
def test_labelled_tokens_decode_to_the_answers(toks, tok_name, template, conv, has_image):
    tok = toks[tok_name]
    image_id = tok.convert_tokens_to_ids("<image>")
    record = {"image": "x.png", "conversations": conv} if has_image else {"conversations": conv}
    e = encode(render(template, normalize_turns(record), tokenizer=tok), tok, image_id, N_IMG, 4096)
    assert decoded_runs(tok, e) == [conv[1]["value"] + CLOSE[template], conv[3]["value"] + CLOSE[template]]
    assert e.input_ids[0] == tok.bos_token_id and e.labels[0] == IGNORE_INDEX
    assert e.input_ids.count(image_id) == (N_IMG if has_image else 0)
    if has_image:  # one contiguous run, never labelled
        start = e.input_ids.index(image_id)
        assert e.input_ids[start:start + N_IMG] == [image_id] * N_IMG
        assert set(e.labels[start:start + N_IMG]) == {IGNORE_INDEX}


@pytest.mark.parametrize("tok_name", ["sentencepiece", "bpe"])
def test_plain_labels_caption_and_newline_only(toks, tok_name):
    tok = toks[tok_name]
    image_id = tok.convert_tokens_to_ids("<image>")
    conv = turns("Describe the image briefly.\n<image>", "a red circle.")
    e = encode(render("plain", normalize_turns({"image": "x.png", "conversations": conv}), tokenizer=tok),
               tok, image_id, N_IMG, 4096)
    assert e.input_ids[:1 + N_IMG] == [tok.bos_token_id] + [image_id] * N_IMG  # the question text is dropped
    assert decoded_runs(tok, e) == ["a red circle.\n"]
    assert e.labels[:1 + N_IMG] == [IGNORE_INDEX] * (1 + N_IMG)


@pytest.mark.parametrize("tok_name,close", [("llama3", "<|eot_id|>"), ("qwen2", "<|im_end|>")])
def test_chat_template_labels_include_the_end_of_turn_token(toks, tok_name, close):
    tok = toks[tok_name]
    image_id = tok.convert_tokens_to_ids("<image>")
    e = encode(render("chat_template", normalize_turns({"image": "x.png", "conversations": MULTI}), tokenizer=tok),
               tok, image_id, N_IMG, 4096)
    assert decoded_runs(tok, e) == ["The shape is red." + close, "A blue circle." + close]
    assert e.input_ids.count(image_id) == N_IMG
    if tok.bos_token:  # written once, by the template (not a second time by the tokenizer)
        assert e.input_ids.count(tok.bos_token_id) == 1


def _encode(tok, conv, max_length, image=True):
    record = {"image": image if isinstance(image, list) else "x.png", "conversations": conv} if image else \
        {"conversations": conv}
    rendered = render("v1", normalize_turns(record), tokenizer=tok)
    return encode(rendered, tok, tok.convert_tokens_to_ids("<image>"), N_IMG, max_length)


def test_truncation_keeps_what_fits(toks):
    tok = toks["sentencepiece"]
    full = _encode(tok, MULTI, 4096)
    runs = labelled_runs(full.input_ids, full.labels)
    # cut in the middle of the second answer: the first answer stays whole, length is the limit
    cut = len(full.input_ids) - 3
    e = _encode(tok, MULTI, cut)
    assert len(e.input_ids) == cut and e.truncated and e.full_length == len(full.input_ids)
    got = labelled_runs(e.input_ids, e.labels)
    assert got[0] == runs[0] and got[1] == runs[1][:-3]


def test_truncation_never_cuts_an_image_run(toks):
    tok = toks["bpe"]
    image_id = tok.convert_tokens_to_ids("<image>")
    # two images (a single image's tag must open the first question): the second after an answer
    conv = turns("<image>\nHello there.", "Hello!", "<image>\nWhat color is it?", "Red.")
    two = ["a.png", "b.png"]
    full = _encode(tok, conv, 4096, image=two)
    start = full.input_ids.index(image_id, full.input_ids.index(image_id) + N_IMG)  # the second run
    for limit in range(start + 1, start + N_IMG):  # every cut inside the run
        e = _encode(tok, conv, limit, image=two)
        assert e.input_ids.count(image_id) == N_IMG and e.num_images == 1 and len(e.input_ids) == start
        assert decoded_runs(tok, e) == ["Hello!</s>"]
    e = _encode(tok, conv, start + N_IMG, image=two)
    assert e.input_ids.count(image_id) == 2 * N_IMG and e.num_images == 2


def test_all_answers_truncated_is_nothing_to_train(toks):
    tok = toks["bpe"]
    full = _encode(tok, MULTI, 4096)
    first = next(k for k, lab in enumerate(full.labels) if lab != IGNORE_INDEX)
    assert _encode(tok, MULTI, first + 1).labels[-1] != IGNORE_INDEX
    with pytest.raises(NothingToTrain, match="beyond model_max_length"):
        _encode(tok, MULTI, first)
    with pytest.raises(NothingToTrain):  # the cut falls inside the image run
        _encode(tok, MULTI, full.input_ids.index(tok.convert_tokens_to_ids("<image>")) + 2)


def test_dataset_skips_and_counts_samples_truncated_to_nothing(toks, tmp_path, caplog):
    """Under either policy: the sample is replaced by a good one drawn for it (for sample 1 of 3 in
    epoch 0, record 0: data/stand_in.py), logged once and reported."""
    tok = toks["bpe"]
    Image.new("RGB", (20, 30), (200, 10, 10)).save(tmp_path / "a.png")
    long_q = "What color is the shape? " * 40
    records = [{"id": "short-0", "conversations": turns("Hi.", "Hello!")},
               {"id": "long", "image": "a.png", "conversations": turns("<image>\n" + long_q, "Red.")},
               {"id": "short-2", "conversations": turns("Bye.", "Bye!")}]
    (tmp_path / "d.json").write_text(json.dumps(records))
    for policy in ("raise", "skip"):
        ds = LazySupervisedDataset(tmp_path / "d.json", tok, testing.clip_processor(), "v1", image_folder=tmp_path,
                                   model_max_length=60, num_image_tokens=N_IMG, on_bad_sample=policy)
        caplog.clear()
        replaced = ds[1]
        assert replaced["input_ids"].tolist() == ds[0]["input_ids"].tolist()
        ds[1]
        assert sum("skipping sample 1" in r.message for r in caplog.records) == 1
        report = ds.report()
        assert report["skipped"] == 1 and report["by_kind"] == {"nothing_to_train": 1}
        assert "'long'" in report["examples"][0] and "model_max_length=60" in report["examples"][0]
        # the length pass finds it too, and the sampler sees the replacement's length
        ds2 = LazySupervisedDataset(tmp_path / "d.json", tok, testing.clip_processor(), "v1", image_folder=tmp_path,
                                    model_max_length=60, num_image_tokens=N_IMG, on_bad_sample=policy)
        lengths = ds2.modality_lengths
        assert lengths[1] == lengths[0] and ds2.report()["skipped"] == 1


def test_collated_batch_keeps_labels_and_one_image_per_image_sample(toks, tmp_path):
    from llava_hydra.data.dataset import DataCollator

    tok = toks["sentencepiece"]
    Image.new("RGB", (40, 20), (0, 0, 255)).save(tmp_path / "b.png")
    records = [{"id": 0, "image": "b.png", "conversations": MULTI}, {"id": 1, "conversations": TEXT}]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in records))
    ds = LazySupervisedDataset(tmp_path / "d.jsonl", tok, testing.clip_processor(), "llama_2", image_folder=tmp_path,
                               image_aspect_ratio="pad", num_image_tokens=N_IMG)
    batch = DataCollator(tok.pad_token_id)([ds[0], ds[1]])
    assert batch["pixel_values"].shape == (1, 3, 32, 32)
    assert (batch["input_ids"] == tok.convert_tokens_to_ids("<image>")).sum() == N_IMG
    n1 = len(ds[1]["input_ids"])
    assert batch["attention_mask"][1].sum() == n1 and (batch["labels"][1, n1:] == IGNORE_INDEX).all()


def test_truncating_a_long_sample_warns_nothing(tmp_path):
    """encode truncates itself: transformers' "longer than the specified maximum sequence length ...
    will result in indexing errors" warning (false here) must not reach a run's log."""
    import logging

    seen = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())
    logger = logging.getLogger("transformers.tokenization_utils_base")
    logger.addHandler(handler)
    try:
        for tok in (testing.sentencepiece_tokenizer(tmp_path / "sp", model_max_length=256),
                    testing.qwen2_tokenizer(tmp_path / "q2", model_max_length=256)):
            tok.deprecation_warnings.clear()  # transformers warns once per tokenizer
            assert tok.model_max_length < 1000  # load_tokenizer sets the run's model_max_length
            rendered = render("v1", normalize_turns({"image": "a.png", "conversations": turns("<image>\nSay it.",
                                                                                "word " * 400)}),
                              tokenizer=tok)
            e = encode(rendered, tok, tok.convert_tokens_to_ids("<image>"), N_IMG, 256)
            assert e.truncated and len(e.input_ids) <= 256
    finally:
        logger.removeHandler(handler)
    assert not [m for m in seen if "maximum sequence length" in m]


def test_truncation_or_padding_saved_in_tokenizer_json_cuts_nothing(tmp_path):
    """A tokenizer.json saved after a truncated, padded call keeps both on its Rust backend:
    training ids and the length pass must still see every piece whole (as transformers' __call__)."""
    from llava_hydra.data import lengths
    from llava_hydra.data.labels import tokenize

    clean = testing.qwen2_tokenizer(tmp_path / "clean")
    dirty = testing.qwen2_tokenizer(tmp_path / "dirty")
    dirty.backend_tokenizer.enable_truncation(8)
    dirty.backend_tokenizer.enable_padding(length=40, pad_id=0)
    text = "the cat is red <image>\nwhat color is the cat in this picture"
    image_id = clean.convert_tokens_to_ids("<image>")
    want = tokenize(text, clean, image_id)
    assert len(want[0]) > 12 and want[0].count(image_id) == 1
    assert tokenize(text, dirty, image_id) == want
    rendered = render("v1", normalize_turns({"image": "a.png", "conversations": turns("<image>\n" + "Say it. " * 9,
                                                                                        "word " * 30)}))
    table = lengths.compute(1, lambda i: (rendered, ["a.png"]), dirty, N_IMG, 2048)
    assert int(table.tokens[0]) == len(encode(rendered, clean, image_id, N_IMG, 2048).input_ids)
