"""Evaluation asks the model from exactly the tokens it was trained to answer after."""

from __future__ import annotations

import json

import pytest

import stand_ins as testing
from llava_hydra.data.dataset import LazySupervisedDataset
from llava_hydra.data.labels import IGNORE_INDEX
from llava_hydra.eval.heldout import normalize_answer, prompt_and_reference

CONVERSATION = [{"from": "human", "value": "<image>\nWhat shape is in the picture?"},
                {"from": "gpt", "value": "A red circle."}]


@pytest.fixture(scope="module")
def toks(tmp_path_factory):
    root = tmp_path_factory.mktemp("tok")
    return {"sentencepiece": testing.sentencepiece_tokenizer(root / "sp"),
            "llama3": testing.llama3_tokenizer(root / "llama3"), "qwen2": testing.qwen2_tokenizer(root / "qwen2"),
            "vicuna": testing.vicuna_tokenizer(root / "vicuna"),
            "vicuna_legacy": testing.vicuna_tokenizer(root / "vicuna_legacy", legacy=True)}


@pytest.mark.parametrize("template,tok_name", [("v1", "sentencepiece"), ("llama_2", "sentencepiece"),
                                               ("mpt", "sentencepiece"), ("plain", "sentencepiece"),
                                               ("chat_template", "llama3"), ("chat_template", "qwen2"),
                                               ("v1", "vicuna"), ("llama_2", "vicuna"), ("plain", "vicuna"),
                                               ("v1", "vicuna_legacy"), ("llama_2", "vicuna_legacy")])
@pytest.mark.parametrize("answer", ["A red circle.", "3 circles."])  # a digit: the separator "▁" is the answer's
def test_prompt_is_the_training_sample_up_to_its_answer(toks, tmp_path, template, tok_name, answer):
    tok = toks[tok_name]
    path = tmp_path / "eval.json"
    conversation = [CONVERSATION[0], {"from": "gpt", "value": answer}]
    path.write_text(json.dumps([{"id": "q0", "image": "x.png", "conversations": conversation}]))
    dataset = LazySupervisedDataset(path, tok, image_processor=None, template=template, num_image_tokens=4)
    trained, _ = dataset.encode(0)
    first_answer_token = next(k for k, label in enumerate(trained.labels) if label != IGNORE_INDEX)
    prompt, reference = prompt_and_reference(dataset, 0)
    assert prompt == trained.input_ids[:first_answer_token]
    assert prompt.count(dataset.image_token_id) == 4 and reference == answer


def test_answers_compare_without_case_space_or_final_stop():
    assert normalize_answer(" A red Circle. ") == normalize_answer("a red circle")
    assert normalize_answer("a red circle") != normalize_answer("a blue circle")
