"""A saved model's processor carries the training prompt: ``apply_chat_template(messages,
add_generation_prompt=True)`` with whole-string tokenization and the tokenizer's own bos
(transformers' processor and pipeline, ``processor(text=rendered)``, lmms-eval's llava_hf) gives
the training ids up to the first answer token, for every template, one and several turns,
Llama-style SentencePiece (legacy false / true) and byte-level BPE tokenizers. The template writes
no bos of its own (as llava-hf's llava-1.5 templates), so none of those clients gets two."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from PIL import Image

import stand_ins as testing
from llava_hydra.data.chat_template import chat_template_for, piece_prefix
from llava_hydra.data.conversation import render
from llava_hydra.data.labels import IGNORE_INDEX, encode
from llava_hydra.data.records import normalize_turns
from llava_hydra.model import make_processor

SIZE, PATCH = 28, 14
N_IMG = (SIZE // PATCH) ** 2  # what LlavaProcessor expands <image> to for this CLIP config


@pytest.fixture(scope="module")
def toks(tmp_path_factory):
    root = tmp_path_factory.mktemp("tok")
    return {"vicuna": testing.vicuna_tokenizer(root / "v0", legacy=False),
            "vicuna_legacy": testing.vicuna_tokenizer(root / "v1", legacy=True),
            "bpe": testing.bpe_tokenizer(root / "bpe"), "qwen2": testing.qwen2_tokenizer(root / "q2")}


def saved_processor(tok, template, path):
    from transformers import AutoProcessor, CLIPVisionConfig, LlamaConfig, LlavaConfig

    config = LlavaConfig(vision_config=CLIPVisionConfig(image_size=SIZE, patch_size=PATCH), text_config=LlamaConfig())
    make_processor(tok, testing.clip_processor(SIZE), SimpleNamespace(config=config), template).save_pretrained(path)
    return AutoProcessor.from_pretrained(path)


CONV = [{"from": "human", "value": "What is in the picture?\n<image>"}, {"from": "gpt", "value": "3 cats."},
        {"from": "human", "value": "Colour?"}, {"from": "gpt", "value": "\nred"}]


def messages(image, turns):
    out = [{"role": "user", "content": [{"type": "image", "image": image},
                                        {"type": "text", "text": "What is in the picture?"}]},
           {"role": "assistant", "content": [{"type": "text", "text": "3 cats."}]},
           {"role": "user", "content": [{"type": "text", "text": "Colour?"}]}]
    return out[:turns]


def training_ids_before_answer(tok, template, conv, answer):
    """Training ids of ``conv`` up to the first token of its ``answer``-th answer."""
    record = {"image": "x.png", "conversations": conv}
    e = encode(render(template, normalize_turns(record), tokenizer=tok), tok, tok.convert_tokens_to_ids("<image>"),
               N_IMG, 4096)
    starts = [k for k, lab in enumerate(e.labels)
              if lab != IGNORE_INDEX and (k == 0 or e.labels[k - 1] == IGNORE_INDEX)]
    return e.input_ids[:starts[answer]]


@pytest.mark.parametrize("tok_name", ["vicuna", "vicuna_legacy", "bpe"])
@pytest.mark.parametrize("template", ["plain", "v1", "llama_2", "mpt"])
def test_apply_chat_template_gives_the_training_prompt(toks, tmp_path, tok_name, template):
    tok = toks[tok_name]
    processor = saved_processor(tok, template, tmp_path / "proc")
    image = Image.new("RGB", (SIZE, SIZE), "red")
    cases = [(1, 0)] if template == "plain" else [(1, 0), (3, 1)]  # (messages, answer index); plain: captions
    for n_messages, answer in cases:
        got = processor.apply_chat_template(messages(image, n_messages), add_generation_prompt=True, tokenize=True,
                                            return_dict=True)
        want = training_ids_before_answer(tok, template, CONV, answer)
        assert list(got["input_ids"][0]) == want, (n_messages, tok.convert_ids_to_tokens(want))
        assert len(got["pixel_values"]) == 1
        # the same prompt from LLaVA-style string content (what lmms-eval's llava_hf renders), then the
        # processor on the text with its default special tokens (what llava_hf and llava-hf's model cards do)
        text = processor.apply_chat_template([{"role": m["role"], "content": t["value"]}
                                              for m, t in zip(messages(image, n_messages), CONV)],
                                             add_generation_prompt=True)
        assert not text.startswith(tok.bos_token)
        assert list(processor(text=text, images=image)["input_ids"][0]) == want


def test_v1_prompt_text_written_out(toks):
    tok = toks["vicuna"]
    assert piece_prefix(tok) == " " and piece_prefix(toks["vicuna_legacy"]) == "" and piece_prefix(toks["bpe"]) == ""
    tok.chat_template = chat_template_for("v1", tok)
    try:
        text = tok.apply_chat_template([{"role": "user", "content": "Describe it. <image>"},
                                        {"role": "assistant", "content": "3 cats."},
                                        {"role": "user", "content": "Colour?"}], tokenize=False,
                                       add_generation_prompt=True)
    finally:
        tok.chat_template = None
    # no bos (the tokenizer adds it); the space after <image> is the dummy-prefix "▁" training's piece-wise
    # tokenization gives
    assert text == ("A chat between a curious user and an artificial intelligence assistant. The assistant gives "
                    "helpful, detailed, and polite answers to the user's questions. USER: <image> \nDescribe it. "
                    "ASSISTANT: 3 cats.</s>USER: Colour? ASSISTANT:")


def test_a_system_message_replaces_the_system_text(toks):
    tok = toks["bpe"]
    tok.chat_template = chat_template_for("mpt", tok)
    try:
        text = tok.apply_chat_template([{"role": "system", "content": "Be brief."},
                                        {"role": "user", "content": "<image>\nWhat?"}], add_generation_prompt=True,
                                       tokenize=False)
    finally:
        tok.chat_template = None
    assert text == ("<|im_start|>system\nBe brief.<|im_end|><|im_start|>user\n<image>\nWhat?<|im_end|>"
                    "<|im_start|>assistant\n")


def test_chat_template_models_keep_their_own(toks, tmp_path):
    tok = toks["qwen2"]
    processor = saved_processor(tok, "chat_template", tmp_path / "proc")
    assert processor.chat_template == testing.QWEN2_CHAT_TEMPLATE == processor.tokenizer.chat_template
    assert chat_template_for("chat_template", tok) is None
    with pytest.raises(ValueError, match="no chat template for data.template 'vicuna'"):
        chat_template_for("vicuna", tok)
