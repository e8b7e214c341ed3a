"""The training tokens are LLaVA-1.5's: Llama/Vicuna SentencePiece tokenizers in Vicuna-v1.5's
folder layout (tokenizer.model + tokenizer_config.json, legacy false and true), loaded through
load_tokenizer; text after ``<image>`` tokenized as a piece of its own (dummy-prefix ``▁``); the
separator ``▁`` before an answer that starts with a digit, newline, punctuation or CJK labelled;
truncation in and outside an image run. Expected tokens are written out; a second, independent
re-implementation of LLaVA's preprocess (tests/helpers/llava_reference.py) is compared on many
generated conversations."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest

import stand_ins as testing
from stand_ins import turns
from llava_hydra.data.conversation import render
from llava_hydra.data.labels import IGNORE_INDEX, encode
from llava_hydra.data.records import normalize_turns

sys.path.insert(0, str(Path(__file__).parent / "helpers"))
from llava_reference import llava_sample  # noqa: E402

N_IMG = 3


@pytest.fixture(scope="module")
def vicuna(tmp_path_factory):
    root = tmp_path_factory.mktemp("vicuna")
    return {legacy: testing.vicuna_tokenizer(root / f"legacy_{legacy}", legacy=legacy) for legacy in (False, True)}


def sample(tok, template, conv, image=True, max_length=4096):
    record = {"conversations": conv, **({"image": "x.png"} if image else {})}
    return encode(render(template, normalize_turns(record), tokenizer=tok), tok,
                  tok.convert_tokens_to_ids("<image>"), N_IMG, max_length)


def pieces(tok, ids):
    return tok.convert_ids_to_tokens(ids)


def labelled(tok, e):
    return [p for p, lab in zip(pieces(tok, e.input_ids), e.labels) if lab != IGNORE_INDEX]


# -- the folder layout ---------------------------------------------------------------------------

@pytest.mark.parametrize("legacy", [False, True])
def test_vicuna_layout_folder_loads_as_a_llama_tokenizer(vicuna, tmp_path, legacy):
    tok = vicuna[legacy]
    folder = Path(tok.name_or_path)
    assert sorted(p.name for p in folder.iterdir()) == ["tokenizer.model", "tokenizer_config.json"]
    assert type(tok).__name__ == "LlamaTokenizer" and tok.is_fast and tok.legacy is legacy
    assert (tok.unk_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
    assert tok.pad_token == "<unk>"  # LLaVA's choice for Llama
    # Llama's SentencePiece behaviour: dummy prefix, digits split into bytes, byte fallback
    assert pieces(tok, tok("Two squares 12 猫").input_ids) == [
        "<s>", "▁Two", "▁square", "s", "▁", "<0x31>", "<0x32>", "▁", "<0xE7>", "<0x8C>", "<0xAB>"]


def test_a_saved_legacy_tokenizer_reloads_with_the_same_tokens(vicuna, tmp_path):
    from llava_hydra.data.tokenizer import load_tokenizer

    text = "a</s>USER: <image>\nHi"
    for legacy, tok in vicuna.items():
        tok.save_pretrained(tmp_path / str(legacy))  # as every checkpoint and saved model does
        again = load_tokenizer(str(tmp_path / str(legacy)), 2048)
        assert again.legacy is legacy and again(text).input_ids == tok(text).input_ids
    assert pieces(again, again(text).input_ids) == ["<s>", "▁a", "</s>", "▁", "USER", ":", "▁", "<image>", "▁",
                                                    "<0x0A>", "H", "i"]


# -- text after <image> is a piece of its own ------------------------------------------------------

@pytest.mark.parametrize("legacy", [False, True])
def test_stage1_caption_after_the_image_gets_its_dummy_prefix(vicuna, legacy):
    tok = vicuna[legacy]
    e = sample(tok, "plain", turns("<image>\nDescribe the image.", "Two squares, side by side"))
    assert pieces(tok, e.input_ids) == ["<s>", *["<image>"] * N_IMG, "▁Two", "▁square", "s", ",", "▁s", "id", "e",
                                        "▁b", "y", "▁s", "id", "e", "<0x0A>"]
    assert labelled(tok, e) == ["▁Two", "▁square", "s", ",", "▁s", "id", "e", "▁b", "y", "▁s", "id", "e",
                                "<0x0A>"]
    # a caption starting with a digit: the dummy-prefix "▁" is part of the caption and trained
    e = sample(tok, "plain", turns("<image>", "3 cats"))
    assert labelled(tok, e) == ["▁", "<0x33>", "▁cat", "s", "<0x0A>"]


@pytest.mark.parametrize("legacy", [False, True])
def test_v1_question_after_the_image_starts_with_the_dummy_prefix(vicuna, legacy):
    tok = vicuna[legacy]
    e = sample(tok, "v1", turns("What is it?\n<image>", "Red."))
    toks = pieces(tok, e.input_ids)
    at = toks.index("<image>")
    assert toks[at - 3:at] == ["USER", ":", "▁"]  # "USER: " then the image
    assert toks[at + N_IMG:] == ["▁", "<0x0A>", "W", "hat", "▁is", "▁i", "t", "?", "▁ASSISTANT", ":", "▁Red",
                                 ".", "</s>"]
    assert labelled(tok, e) == ["▁Red", ".", "</s>"]


# -- the separator before an answer ---------------------------------------------------------------

@pytest.mark.parametrize("legacy", [False, True])
@pytest.mark.parametrize("answer,expected", [
    ("3 apples", ["▁", "<0x33>", "▁a", "p", "p", "l", "es", "</s>"]),
    ("\nTwo", ["▁", "<0x0A>", "T", "wo", "</s>"]),
    ("(a) red", ["▁", "<0x28>", "a", "<0x29>", "▁red", "</s>"]),  # "(" and ")" only as bytes here
    ("猫", ["▁", "<0xE7>", "<0x8C>", "<0xAB>", "</s>"]),
    ("Red", ["▁Red", "</s>"]),  # a word: the space is inside its first piece
])
def test_v1_separator_before_the_answer_is_labelled(vicuna, legacy, answer, expected):
    tok = vicuna[legacy]
    e = sample(tok, "v1", turns("<image>\nHow many?", answer))
    assert labelled(tok, e) == expected
    assert pieces(tok, e.input_ids)[-len(expected) - 2:-len(expected)] == ["▁ASSISTANT", ":"]


@pytest.mark.parametrize("legacy", [False, True])
def test_llama_2_separator_and_closing_space_are_labelled(vicuna, legacy):
    tok = vicuna[legacy]
    e = sample(tok, "llama_2", turns("<image>\nHow many?", "2", "And now?", "Red"))
    assert labelled(tok, e) == ["▁", "<0x32>", "▁", "</s>", "▁Red", "▁", "</s>"]
    # the second round opens with "<s>[INST]": a "▁" only where legacy puts a prefix after a special token
    toks = pieces(tok, e.input_ids)
    after = toks[toks.index("</s>") + 1:toks.index("</s>") + 4]
    assert after == (["<s>", "▁", "<0x5B>"] if legacy else ["<s>", "<0x5B>", "I"])


@pytest.mark.parametrize("legacy,second_user", [(False, ["</s>", "USER", ":"]), (True, ["</s>", "▁", "USER", ":"])])
def test_v1_multi_turn_labels_every_answer(vicuna, legacy, second_user):
    tok = vicuna[legacy]
    e = sample(tok, "v1", turns("<image>\nCount them.", "2", "Colour?", "\nred", "Sure?", "Yes."))
    assert labelled(tok, e) == ["▁", "<0x32>", "</s>", "▁", "<0x0A>", "red", "</s>", "▁Y", "es", ".", "</s>"]
    toks = pieces(tok, e.input_ids)
    first_close = toks.index("</s>")
    assert toks[first_close:first_close + len(second_user)] == second_user


# -- truncation ---------------------------------------------------------------------------------

def test_truncation_outside_and_inside_the_image_run(vicuna):
    tok = vicuna[False]
    conv = turns("<image>\nHow many?", "3 apples", "Colour?", "Red")
    full = sample(tok, "v1", conv)
    first_answer_end = full.input_ids.index(tok.eos_token_id) + 1
    # outside: cut after the first answer's </s>: that answer stays whole, the second is gone
    e = sample(tok, "v1", conv, max_length=first_answer_end)
    assert e.input_ids == full.input_ids[:first_answer_end]
    assert labelled(tok, e) == ["▁", "<0x33>", "▁a", "p", "p", "l", "es", "</s>"]
    # cut in the middle of an answer: its first tokens are trained, nothing after the cut
    e = sample(tok, "v1", conv, max_length=first_answer_end - 3)
    assert labelled(tok, e) == ["▁", "<0x33>", "▁a", "p", "p"]
    # inside the image run: the run is never cut, the sample stops before it (and has nothing to train)
    image_at = full.input_ids.index(tok.convert_tokens_to_ids("<image>"))
    from llava_hydra.data.labels import NothingToTrain
    with pytest.raises(NothingToTrain):
        sample(tok, "v1", conv, max_length=image_at + 1)


# -- against an independent re-implementation of LLaVA's preprocess --------------------------------

STARTS = ["", "3 ", "12. ", "\n", "(", "- ", "猫 ", "\"", " "]
TAILS = ["The shape is red.", "two circles", "A red square on a blue sky.", "yes", "Cat", "dog and tree"]


def generated_conversations(n, seed=0):
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        rounds = rng.randint(1, 3)
        values = []
        for r in range(rounds):
            question = rng.choice(["What is it?", "Describe the picture.", "How many?", "Colour?", "Is it a cat?"])
            if r == 0 and rng.random() < 0.7:
                question = rng.choice([f"<image>\n{question}", f"{question}\n<image>", f"{question} <image>"])
            values += [question, rng.choice(STARTS) + rng.choice(TAILS)]
        out.append(turns(*values))
    return out


@pytest.mark.parametrize("legacy", [False, True])
@pytest.mark.parametrize("template", ["plain", "v1", "llama_2"])
def test_same_ids_and_labels_as_llava_on_generated_conversations(vicuna, llama_like, legacy, template):
    # plain captions may start with a space: compared with LLaVA's slow (SentencePiece) tokenizer
    # on a Llama-normalized model; v1 / llama_2 prompts hold "</s>", which that stand-in does not model
    tok = llama_like[legacy] if template == "plain" else vicuna[legacy]
    reference = slow(tok) if template == "plain" else tok
    image_id = tok.convert_tokens_to_ids("<image>")
    compared = mismatches = 0
    for conv in generated_conversations(200, seed=len(template) + legacy):
        has_image = any("<image>" in t["value"] for t in conv)
        if template == "plain":
            if not has_image:
                continue
            conv = conv[:2]
        ours = sample(tok, template, conv, image=has_image)
        ids, labels, mismatch = llava_sample(template, conv, reference, has_image, image_id, N_IMG)
        assert ours.input_ids == ids, conv
        if mismatch:  # LLaVA zeroes the sample; ours trains every answer
            mismatches += 1
            assert set(labels) == {IGNORE_INDEX} and any(lab != IGNORE_INDEX for lab in ours.labels)
            continue
        assert ours.labels == labels, conv
        compared += 1
    assert compared >= 100 and mismatches == 0


@pytest.mark.parametrize("legacy", [False, True])
def test_llava_zeroes_an_answer_that_contains_the_role_text_ours_trains_it(vicuna, legacy):
    tok = vicuna[legacy]
    conv = turns("<image>\nWhat does the sign say?", "It says ASSISTANT: hello", "And?", "Red")
    ids, labels, mismatch = llava_sample("v1", conv, tok, True, tok.convert_tokens_to_ids("<image>"), N_IMG)
    ours = sample(tok, "v1", conv)
    assert mismatch and set(labels) == {IGNORE_INDEX} and ours.input_ids == ids
    assert tok.decode([t for t, lab in zip(ours.input_ids, ours.labels) if lab != IGNORE_INDEX]) == (
        "It says ASSISTANT: hello</s> Red</s>")  # decode drops the leading space of "▁It"


# -- a single image tagged in a later human turn (LLaVA's preprocess_multimodal) -------------------

@pytest.mark.parametrize("legacy", [False, True])
def test_a_single_image_tagged_in_a_later_turn_moves_to_the_front_of_that_turn(vicuna, legacy):
    tok = vicuna[legacy]
    conv = turns("Hi.", "Hello!", "What is it?\n<image>", "A dog.")
    normalized = normalize_turns({"conversations": conv, "image": "x.png"})
    assert [t["value"] for t in normalized] == ["Hi.", "Hello!", "<image>\nWhat is it?", "A dog."]
    assert render("v1", normalized, tokenizer=tok).text == (
        "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
        "detailed, and polite answers to the user's questions. USER: Hi. ASSISTANT: Hello!</s>"
        "USER: <image>\nWhat is it? ASSISTANT: A dog.</s>")
    e = sample(tok, "v1", conv)
    assert labelled(tok, e) == ["▁H", "el", "lo", "!", "</s>", "▁A", "▁dog", ".", "</s>"]
    toks = pieces(tok, e.input_ids)
    at = toks.index("<image>")
    assert toks[at - 3:at + N_IMG + 3] == ["USER", ":", "▁", *["<image>"] * N_IMG, "▁", "<0x0A>", "W"]
    ids, labels, mismatch = llava_sample("v1", conv, tok, True, tok.convert_tokens_to_ids("<image>"), N_IMG)
    assert not mismatch and (e.input_ids, e.labels) == (ids, labels)


def test_an_image_tag_in_an_answer_is_still_refused():
    from llava_hydra.data.records import RecordError

    with pytest.raises(RecordError, match=r"turn 3: <image> in an answer") as e:
        normalize_turns({"conversations": turns("Hi.", "Hello!", "What is it?", "<image> a dog."), "image": "x.png"})
    assert e.value.kind == "image_in_answer"


# -- a plain caption that starts with whitespace: LLaVA's slow tokenizer gives its space a ▁ -------

@pytest.fixture(scope="module")
def llama_like(tmp_path_factory):
    """Vicuna-layout tokenizers whose SentencePiece model normalizes as Llama's does (spaces kept)."""
    root = tmp_path_factory.mktemp("llama_like")
    return {legacy: testing.vicuna_tokenizer(root / f"legacy_{legacy}", legacy=legacy, llama_normalizer=True)
            for legacy in (False, True)}


def slow(tok):
    from llava_reference import SlowLlamaTokenizer

    return SlowLlamaTokenizer(str(Path(tok.name_or_path) / "tokenizer.model"), tok.legacy)


@pytest.mark.parametrize("legacy", [False, True])
@pytest.mark.parametrize("caption,expected", [
    # the dummy prefix is a "▁" of its own, the caption's space becomes the "▁" of "▁Two"
    (" Two squares", ["▁", "▁Two", "▁square", "s", "\n"]),
    ("  Two", ["▁", "▁", "▁Two", "\n"]),
    (" 3 cats", ["▁", "▁", "<0x33>", "▁cat", "s", "\n"]),
    ("Two squares", ["▁Two", "▁square", "s", "\n"]),  # no leading space: one "▁", inside "▁Two"
    ("\tred", ["▁", "<0x09>", "red", "\n"]),
])
def test_plain_caption_with_leading_whitespace_gets_llavas_ids(llama_like, legacy, caption, expected):
    tok = llama_like[legacy]
    conv = turns("<image>\nDescribe the image.", caption)
    e = sample(tok, "plain", conv)
    assert pieces(tok, e.input_ids) == ["<s>", *["<image>"] * N_IMG, *expected]
    assert labelled(tok, e) == expected  # everything after the image is trained, as preprocess_plain masks
    # LLaVA: preprocess_plain + tokenizer_image_token through its slow (SentencePiece) LlamaTokenizer
    ids, labels, _ = llava_sample("plain", conv, slow(tok), True, tok.convert_tokens_to_ids("<image>"), N_IMG)
    assert (e.input_ids, e.labels) == (ids, labels)
    # SentencePiece itself agrees on the caption's pieces (transformers' fast tokenizer alone says "▁Two")
    import sentencepiece as spm

    model = spm.SentencePieceProcessor(model_file=str(Path(tok.name_or_path) / "tokenizer.model"))
    assert model.encode(caption + "\n", out_type=str) == expected
    if caption.startswith(" "):
        assert pieces(tok, tok(caption + "\n", add_special_tokens=False).input_ids) == expected[1:]


@pytest.mark.parametrize("legacy", [False, True])
def test_plain_captions_equal_llavas_slow_tokenizer_on_generated_captions(llama_like, legacy):
    tok = llama_like[legacy]
    rng = random.Random(7)
    image_id = tok.convert_tokens_to_ids("<image>")
    for _ in range(60):
        caption = rng.choice(["", " ", "  ", "\n", " \n", "\t"]) + rng.choice(STARTS).lstrip("\"") + rng.choice(TAILS)
        conv = turns("<image>", caption)
        e = sample(tok, "plain", conv)
        assert (e.input_ids, e.labels) == llava_sample("plain", conv, slow(tok), True, image_id, N_IMG)[:2], caption


@pytest.mark.parametrize("legacy", [False, True])
def test_the_saved_plain_chat_template_gives_the_whitespace_caption_its_training_ids(llama_like, legacy):
    from llava_hydra.data.chat_template import chat_template_for

    tok = llama_like[legacy]
    image_id = tok.convert_tokens_to_ids("<image>")
    for caption in (" Two squares", "Two squares", "  3 cats"):
        text = tok.apply_chat_template([{"role": "user", "content": "<image>"}, {"role": "assistant", "content": caption}],
                                       chat_template=chat_template_for("plain", tok), tokenize=False)
        assert not text.startswith("<s>")  # the tokenizer adds bos, as clients tokenize a rendered prompt
        whole = []
        for t in tok(text).input_ids:
            whole += [t] * (N_IMG if t == image_id else 1)
        assert whole == sample(tok, "plain", turns("<image>", caption)).input_ids, (caption, text)


def test_length_pass_agrees_with_the_samples_on_these_records(llama_like, tmp_path):
    import json

    from PIL import Image

    from llava_hydra.data.dataset import LazySupervisedDataset

    Image.new("RGB", (20, 20)).save(tmp_path / "a.png")
    records = [{"id": "ws", "image": "a.png", "conversations": turns("<image>", " Two squares")},
               {"id": "ws2", "image": "a.png", "conversations": turns("<image>", "  3 cats")},
               {"id": "late", "image": "a.png", "conversations": turns("Hi.", "Hello!", "What is it? <image>", " A dog.")}]
    path = tmp_path / "d.json"
    path.write_text(json.dumps(records))
    # plain: <s>, the image run, then "▁ ▁Two ▁square s \\n" (5) and "▁ ▁ ▁ <0x33> ▁cat s \\n" (7)
    for template, expected in (("plain", [N_IMG + 6, N_IMG + 8, None]), ("v1", [None, None, None])):
        for max_length in (2048, 1):
            ds = LazySupervisedDataset(path, llama_like[False], testing.clip_processor(), template,
                                       image_folder=tmp_path, num_image_tokens=N_IMG, model_max_length=max_length)
            table = ds.length_table()
            assert not table.problems
            full = LazySupervisedDataset(path, llama_like[False], testing.clip_processor(), template,
                                         image_folder=tmp_path, num_image_tokens=N_IMG)
            for i in range(len(records)):
                e = full.encode(i)[0]
                assert table.tokens[i] == len(e.input_ids), (template, i)
                if expected[i] is not None:
                    assert table.tokens[i] == expected[i]
                if max_length == 1:  # the first labelled token, located from the offsets
                    assert table.first_label[i] == next(k for k, lab in enumerate(e.labels) if lab != IGNORE_INDEX)
