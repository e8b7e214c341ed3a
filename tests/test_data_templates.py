"""Rendered text of every template, written out literally as LLaVA's conv.get_prompt() gives it
(llava/conversation.py: conv_llava_plain via preprocess_plain, conv_vicuna_v1, conv_llava_llama_2,
conv_mpt) and as the tokenizer's own chat template renders it."""

from __future__ import annotations

import pytest

import stand_ins as testing
from stand_ins import turns
from llava_hydra.data.conversation import render, render_prompt

VICUNA = ("A chat between a curious user and an artificial intelligence assistant. The assistant gives "
          "helpful, detailed, and polite answers to the user's questions.")
LLAVA_LLAMA2 = ("You are a helpful language and vision assistant. You are able to understand the visual content "
                "that the user provides, and assist the user with a variety of tasks using natural language.")
MPT_SYS = ("<|im_start|>system\nA conversation between a user and an LLM-based AI assistant. "
           "The assistant gives helpful and honest answers.<|im_end|>")


SINGLE_IMAGE = turns("What is in the picture?\n<image>", "A red circle.")  # <image> after the question
MULTI_IMAGE = turns("<image>\nWhat color is it?", "Red.", "And the shape?", "A circle.")
TEXT_ONLY = turns("Say hi.", "Hi!")
TEXT_MULTI = turns("Say hi.", "Hi!", "Say bye.", "Bye!")

EXPECTED = {
    "plain": {
        "single_image": "<image>A red circle.\n",
        "multi_image": "<image>Red.\nA circle.\n",
        "text_only": "Hi!\n",
        "text_multi": "Hi!\nBye!\n",
    },
    "v1": {
        "single_image": VICUNA + " USER: <image>\nWhat is in the picture? ASSISTANT: A red circle.</s>",
        "multi_image": VICUNA + " USER: <image>\nWhat color is it? ASSISTANT: Red.</s>USER: And the shape? "
                                "ASSISTANT: A circle.</s>",
        "text_only": VICUNA + " USER: Say hi. ASSISTANT: Hi!</s>",
        "text_multi": VICUNA + " USER: Say hi. ASSISTANT: Hi!</s>USER: Say bye. ASSISTANT: Bye!</s>",
    },
    "llama_2": {
        "single_image": f"[INST] <<SYS>>\n{LLAVA_LLAMA2}\n<</SYS>>\n\n<image>\nWhat is in the picture? [/INST] "
                        "A red circle. </s>",
        "multi_image": f"[INST] <<SYS>>\n{LLAVA_LLAMA2}\n<</SYS>>\n\n<image>\nWhat color is it? [/INST] Red. </s>"
                       "<s>[INST] And the shape? [/INST] A circle. </s>",
        "text_only": f"[INST] <<SYS>>\n{LLAVA_LLAMA2}\n<</SYS>>\n\nSay hi. [/INST] Hi! </s>",
        "text_multi": f"[INST] <<SYS>>\n{LLAVA_LLAMA2}\n<</SYS>>\n\nSay hi. [/INST] Hi! </s>"
                      "<s>[INST] Say bye. [/INST] Bye! </s>",
    },
    "mpt": {
        "single_image": MPT_SYS + "<|im_start|>user\n<image>\nWhat is in the picture?<|im_end|>"
                                  "<|im_start|>assistant\nA red circle.<|im_end|>",
        "multi_image": MPT_SYS + "<|im_start|>user\n<image>\nWhat color is it?<|im_end|><|im_start|>assistant\n"
                                 "Red.<|im_end|><|im_start|>user\nAnd the shape?<|im_end|>"
                                 "<|im_start|>assistant\nA circle.<|im_end|>",
        "text_only": MPT_SYS + "<|im_start|>user\nSay hi.<|im_end|><|im_start|>assistant\nHi!<|im_end|>",
        "text_multi": MPT_SYS + "<|im_start|>user\nSay hi.<|im_end|><|im_start|>assistant\nHi!<|im_end|>"
                                "<|im_start|>user\nSay bye.<|im_end|><|im_start|>assistant\nBye!<|im_end|>",
    },
}
CONVS = {"single_image": SINGLE_IMAGE, "multi_image": MULTI_IMAGE, "text_only": TEXT_ONLY, "text_multi": TEXT_MULTI}


@pytest.mark.parametrize("template", sorted(EXPECTED))
@pytest.mark.parametrize("case", sorted(CONVS))
def test_builtin_template_text(template, case):
    assert render_prompt(template, CONVS[case]) == EXPECTED[template][case]


@pytest.mark.parametrize("template,expected", [
    ("v1", VICUNA + " USER: <image>\nWhat color is it? ASSISTANT: Red.</s>USER: And the shape? ASSISTANT:"),
    ("llama_2", f"[INST] <<SYS>>\n{LLAVA_LLAMA2}\n<</SYS>>\n\n<image>\nWhat color is it? [/INST] Red. </s>"
                "<s>[INST] And the shape? [/INST]"),
    ("mpt", MPT_SYS + "<|im_start|>user\n<image>\nWhat color is it?<|im_end|><|im_start|>assistant\nRed.<|im_end|>"
                      "<|im_start|>user\nAnd the shape?<|im_end|><|im_start|>assistant\n"),
])
def test_open_final_question_ends_with_the_assistant_cue(template, expected):
    assert render_prompt(template, MULTI_IMAGE[:3]) == expected


def test_image_tag_anywhere_moves_to_the_front_as_llava_does():
    for value in ("Describe this.\n<image>", "Describe this. <image>", "<image>Describe this.", "<image>\nDescribe this."):
        text = render_prompt("v1", turns(value, "Ok."))
        assert text == VICUNA + " USER: <image>\nDescribe this. ASSISTANT: Ok.</s>", value
    # LLaVA only removes the tag and strips the ends: a tag mid-sentence leaves two spaces
    assert render_prompt("v1", turns("Describe <image> this.", "Ok.")).endswith("USER: <image>\nDescribe  this. ASSISTANT: Ok.</s>")


def test_answer_spans_cover_answer_and_end_of_turn():
    r = render("llama_2", MULTI_IMAGE)
    assert [r.text[a:b] for a, b in r.answer_spans] == [" Red. </s>", " A circle. </s>"]  # separator space too
    r = render("v1", MULTI_IMAGE, eos="<|endoftext|>")
    assert [r.text[a:b] for a, b in r.answer_spans] == [" Red.<|endoftext|>", " A circle.<|endoftext|>"]
    r = render("mpt", TEXT_MULTI)
    assert [r.text[a:b] for a, b in r.answer_spans] == ["Hi!<|im_end|>", "Bye!<|im_end|>"]


@pytest.fixture(scope="module")
def chat_tokenizers(tmp_path_factory):
    root = tmp_path_factory.mktemp("chat_tok")
    return {"llama3": testing.llama3_tokenizer(root / "l3"), "qwen2": testing.qwen2_tokenizer(root / "q2")}


def test_chat_template_llama3(chat_tokenizers):
    tok = chat_tokenizers["llama3"]
    r = render("chat_template", MULTI_IMAGE, tokenizer=tok)
    assert r.text == ("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n<image>\nWhat color is it?<|eot_id|>"
                      "<|start_header_id|>assistant<|end_header_id|>\n\nRed.<|eot_id|>"
                      "<|start_header_id|>user<|end_header_id|>\n\nAnd the shape?<|eot_id|>"
                      "<|start_header_id|>assistant<|end_header_id|>\n\nA circle.<|eot_id|>")
    assert [r.text[a:b] for a, b in r.answer_spans] == ["Red.<|eot_id|>", "A circle.<|eot_id|>"]
    assert not r.add_special_tokens  # the template writes <|begin_of_text|> itself
    # Llama-3 trims content: an answer with surrounding spaces is still found
    r = render("chat_template", turns("Say hi.", "  Hi!  "), tokenizer=tok)
    assert [r.text[a:b] for a, b in r.answer_spans] == ["Hi!<|eot_id|>"]


def test_chat_template_qwen2_text_only_and_generation_prompt(chat_tokenizers):
    tok = chat_tokenizers["qwen2"]
    r = render("chat_template", TEXT_MULTI, tokenizer=tok)
    assert r.text == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nSay hi.<|im_end|>\n"
                      "<|im_start|>assistant\nHi!<|im_end|>\n<|im_start|>user\nSay bye.<|im_end|>\n"
                      "<|im_start|>assistant\nBye!<|im_end|>\n")
    assert [r.text[a:b] for a, b in r.answer_spans] == ["Hi!<|im_end|>", "Bye!<|im_end|>"]
    # an answer equal to text in its own question is found in the answer, not the question
    r = render("chat_template", turns("Repeat: yes", "yes"), tokenizer=tok)
    (a, b), = r.answer_spans
    assert r.text[:a].endswith("<|im_start|>assistant\n") and r.text[a:b] == "yes<|im_end|>"
    assert render_prompt("chat_template", TEXT_MULTI[:3], tokenizer=tok).endswith(
        "<|im_start|>user\nSay bye.<|im_end|>\n<|im_start|>assistant\n")


def test_chat_template_needs_a_tokenizer_with_one(tmp_path):
    with pytest.raises(ValueError, match="needs the tokenizer"):
        render_prompt("chat_template", TEXT_ONLY)
    tok = testing.bpe_tokenizer(tmp_path, vocab_size=300)
    with pytest.raises(ValueError, match="has no chat template"):
        render("chat_template", TEXT_ONLY, tokenizer=tok)
    with pytest.raises(ValueError, match="unknown conversation template 'vicuna'"):
        render_prompt("vicuna", TEXT_ONLY)
