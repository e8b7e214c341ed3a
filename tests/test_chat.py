"""Chat answers exactly what plain transformers `generate` answers on the same prompt, for a saved
model, a LoRA run (adapter applied on the fly) and its merge; interactive commands work."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent / "helpers"))
from saved_models import saved_model  # noqa: E402

from llava_hydra.commands.chat import Chat, interact, main  # noqa: E402

QUESTION = "What shape is in the picture?"


def plain_generate(model_dir: Path, image: Image.Image, max_new_tokens: int = 6) -> str:
    """What a transformers user writes: AutoProcessor's chat template (tokenized by it: the template
    writes no bos, the processor adds the tokenizer's one), generate, decode."""
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    model = LlavaForConditionalGeneration.from_pretrained(model_dir).eval()
    processor = AutoProcessor.from_pretrained(model_dir)
    messages = [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": QUESTION}]}]
    inputs = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True,
                                           return_tensors="pt")
    assert inputs["input_ids"][0].tolist().count(processor.tokenizer.bos_token_id) == 1
    out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    return processor.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()


@pytest.fixture
def image_file(tmp_path):
    path = tmp_path / "img.png"
    Image.new("RGB", (28, 28), (200, 30, 30)).save(path)  # square: pad and square agree
    return path


def test_one_shot_equals_plain_generate_on_a_saved_model(compose_spec, parts, tmp_path, image_file, capsys):
    model_dir = saved_model(compose_spec, parts, tmp_path / "model")
    expected = plain_generate(model_dir, Image.open(image_file))
    assert expected  # a non-empty answer, so the comparison means something
    assert main([str(model_dir), "--image", str(image_file), "--prompt", QUESTION, "--max-new-tokens", "6",
                 "--device", "cpu"]) == 0
    assert capsys.readouterr().out.strip() == expected  # streamed as generated, the same text


def test_lora_run_chats_as_its_merged_model(compose_spec, parts, tmp_path, image_file, capsys):
    from llava_hydra.commands.merge import merge

    run_dir = saved_model(compose_spec, parts, tmp_path / "lora_run", lora=True)
    merged = merge(run_dir, tmp_path / "merged")
    expected = plain_generate(merged, Image.open(image_file))
    main([str(run_dir), "--image", str(image_file), "--prompt", QUESTION, "--max-new-tokens", "6"])
    assert capsys.readouterr().out.strip() == expected


def test_interactive_multi_turn_reset_and_image(compose_spec, parts, tmp_path, image_file):
    from llava_hydra.eval.loading import load_for_inference

    model_dir = saved_model(compose_spec, parts, tmp_path / "model")
    model, processor, aspect = load_for_inference(model_dir, device="cpu")
    chat = Chat(model, processor, aspect, Image.open(image_file), stream=None, max_new_tokens=3, do_sample=False)
    out = io.StringIO()
    interact(chat, ["hello", "and then?"], out=out)
    assert [m["role"] for m in chat.messages] == ["user", "assistant", "user", "assistant"]
    assert [c["type"] for c in chat.messages[0]["content"]] == ["image", "text"]  # the image in the first turn only
    assert [c["type"] for c in chat.messages[2]["content"]] == ["text"]
    first = chat.messages[1]["content"][0]["text"]
    interact(chat, ["/reset", "hello", f"/image {tmp_path / 'missing.png'}", "/bogus"], out=out)
    assert len(chat.messages) == 2 and chat.messages[1]["content"][0]["text"] == first  # greedy: same answer
    assert "cannot use" in out.getvalue() and "unknown command /bogus" in out.getvalue()
    interact(chat, [f"/image {image_file}"], out=out)
    assert chat.messages == []
