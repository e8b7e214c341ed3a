"""Exactly one bos, whoever tokenizes the saved prompt. The saved chat template writes no bos at
its start (as llava-hf's llava-1.5 templates): the tokenizer adds it, as in training. So a stock
``processor.apply_chat_template(tokenize=True)`` (and the image-text-to-text pipeline, which calls
it), ``processor(text=rendered)`` (lmms-eval's ``llava_hf``, llava-hf's model cards) and our eval
app's ``encode`` all give the ids training gives, one ``<s>`` first. LLaVA's llama_2 separator
``</s><s>`` between turns stays text of the prompt. Training with a tokenizer's own template that
writes no bos (``data.template=chat_template``) gets the bos its clients get.

Default suite (a few seconds): SentencePiece Vicuna stand-in (legacy false), CLIP at 28 px."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from PIL import Image

import stand_ins as testing
from llava_hydra.data.conversation import render
from llava_hydra.data.labels import IGNORE_INDEX, encode, tokenize
from llava_hydra.data.records import normalize_turns
from llava_hydra.model import make_processor

SIZE, PATCH = 28, 14
N_IMG = (SIZE // PATCH) ** 2
QUESTION = "What color is it?"
# lmms-eval 0.7.3's default for llava-hf/llava-1.5 models (llava_hf.py VICUNA_CHAT_TEMPLATE): no bos
LLAVA_HF_STYLE = ("{% for message in messages %}{% if loop.index0 == 0 %}A chat between a curious user and an "
                  "artificial intelligence assistant. The assistant gives helpful, detailed, and polite answers to "
                  "the user's questions. USER: {{ message['content'] }} {% elif message['role'] == 'user' %}USER: "
                  "{{ message['content'] }} {% else %} ASSISTANT: {{ message['content'] }}{{ eos_token }}{% endif %}"
                  "{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}")


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return testing.vicuna_tokenizer(tmp_path_factory.mktemp("vicuna") / "tok", legacy=False)


def saved_processor(tok, template, path):
    from transformers import AutoProcessor, CLIPVisionConfig, LlamaConfig, LlavaConfig

    config = LlavaConfig(vision_config=CLIPVisionConfig(image_size=SIZE, patch_size=PATCH), text_config=LlamaConfig())
    processor = make_processor(tok, testing.clip_processor(SIZE), SimpleNamespace(config=config), template, "pad")
    processor.save_pretrained(path)
    return AutoProcessor.from_pretrained(path)


def training_prompt_ids(tok, template, conv):
    """Training's ids of ``conv`` (human, gpt, ...) up to its last answer's first token."""
    e = encode(render(template, normalize_turns({"image": "x.png", "conversations": conv}), tokenizer=tok), tok,
               tok.convert_tokens_to_ids("<image>"), N_IMG, 4096)
    last = max(k for k, lab in enumerate(e.labels) if lab != IGNORE_INDEX and e.labels[k - 1] == IGNORE_INDEX)
    return e.input_ids[:last]


def test_v1_prompt_has_no_bos_and_every_client_gets_exactly_one(tok, tmp_path):
    from llava_hydra.eval.generation import encode as eval_app_encode

    processor = saved_processor(tok, "v1", tmp_path / "proc")
    image = Image.new("RGB", (40, 17), (200, 30, 30))
    messages = [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": QUESTION}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    assert text == ("A chat between a curious user and an artificial intelligence assistant. The assistant gives "
                    "helpful, detailed, and polite answers to the user's questions. USER: <image> \nWhat color is it? "
                    "ASSISTANT:")
    stock = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                          return_dict=True)["input_ids"][0]             # transformers, pipeline
    lmms = processor(text=text, images=image)["input_ids"][0]                             # lmms-eval's llava_hf
    ours = eval_app_encode(processor, [text], [image], "pad")["input_ids"][0].tolist()    # eval app, chat
    want = training_prompt_ids(tok, "v1", [{"from": "human", "value": f"<image>\n{QUESTION}"},
                                           {"from": "gpt", "value": "Red."}])
    assert list(stock) == list(lmms) == ours == want
    tokens = tok.convert_ids_to_tokens(want)
    assert tokens.count("<s>") == 1
    assert tokens[:3] == ["<s>", "▁A", "▁chat"]
    assert tokens[tokens.index("<image>") - 2:tokens.index("<image>") + N_IMG + 2] == (
        [":", "▁"] + ["<image>"] * N_IMG + ["▁", "<0x0A>"])


def test_llama_2_keeps_llavas_bos_between_turns(tok, tmp_path):
    processor = saved_processor(tok, "llama_2", tmp_path / "proc")
    image = Image.new("RGB", (SIZE, SIZE), "red")
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]},
                {"role": "assistant", "content": [{"type": "text", "text": "Red."}]},
                {"role": "user", "content": [{"type": "text", "text": "Sure?"}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    assert text.startswith("[INST] <<SYS>>\n") and text.endswith(" [/INST] Red. </s><s>[INST] Sure? [/INST]")
    ids = list(processor(text=text, images=image)["input_ids"][0])
    want = training_prompt_ids(tok, "llama_2", [{"from": "human", "value": f"<image>\n{QUESTION}"},
                                                {"from": "gpt", "value": "Red."}, {"from": "human", "value": "Sure?"},
                                                {"from": "gpt", "value": "Yes."}])
    assert ids == want
    tokens = tok.convert_ids_to_tokens(ids)
    assert [k for k, t in enumerate(tokens) if t == "<s>"] == [0, tokens.index("</s>") + 1]  # two turns, two bos


def test_training_on_a_template_without_bos_gets_the_tokenizers_bos(tok):
    """data.template=chat_template with a llava-hf-style template (no bos): the training text gets the
    bos a processor adds (written ``<s> `` so that the first word keeps its dummy prefix ``▁A``)."""
    conv = [{"from": "human", "value": f"<image>\n{QUESTION}"}, {"from": "gpt", "value": "Red."}]
    tok.chat_template = LLAVA_HF_STYLE
    try:
        served = tok.apply_chat_template([{"role": "user", "content": f"<image>\n{QUESTION}"}], tokenize=False,
                                         add_generation_prompt=True)
        rendered = render("chat_template", conv, tokenizer=tok)
        prompt = render("chat_template", conv[:1], tokenizer=tok)  # the generation prompt (in-run eval)
        e = encode(rendered, tok, tok.convert_tokens_to_ids("<image>"), 1, 4096)
    finally:
        tok.chat_template = None
    assert prompt.text == "<s> " + served and served.startswith("A chat between")
    # training tokenizes the rendering whole, bos as text: the ids processor(text=served) gives
    assert tokenize(prompt.text, tok, tok.convert_tokens_to_ids("<image>"), prompt.add_special_tokens)[0] == \
        tok(served)["input_ids"]
    assert rendered.text.startswith("<s> A chat between") and rendered.text.endswith("ASSISTANT: Red.</s>")
    assert rendered.text[rendered.answer_spans[0][0]:rendered.answer_spans[0][1]] == "Red.</s>"
    assert tok.convert_ids_to_tokens(e.input_ids[:3]) == ["<s>", "▁A", "▁chat"]
    assert e.input_ids.count(tok.bos_token_id) == 1
    assert tok.convert_ids_to_tokens([i for i, lab in zip(e.input_ids, e.labels) if lab != IGNORE_INDEX]) == \
        ["▁Red", ".", "</s>"]
