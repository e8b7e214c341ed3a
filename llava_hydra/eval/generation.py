"""Prompts through the model's own chat template, and batched answers (left padding).

A conversation is transformers' message list (``{"role": "user", "content": [{"type": "image"},
{"type": "text", "text": ...}]}``); ``render`` turns it into the prompt string with the saved
processor's chat template and the generation prompt, which is how training rendered it (see
data/chat_template.py). Images are made square as training made them (``aspect``) and then go
through the processor with the text, which expands ``<image>`` to the model's image tokens.
"""

from __future__ import annotations

from PIL import Image

from llava_hydra.data.images import open_rgb
from llava_hydra.data.pixels import expand2square, mean_colour


def user_message(text: str, image: bool) -> dict:
    return {"role": "user", "content": ([{"type": "image"}] if image else []) + [{"type": "text", "text": text}]}


def assistant_message(text: str) -> dict:
    return {"role": "assistant", "content": [{"type": "text", "text": text}]}


def render(processor, messages: list[dict]) -> str:
    if not getattr(processor, "chat_template", None):
        raise ValueError("the model's processor has no chat template: save it with llava_hydra (stage 2 or merge) "
                         "or add one to its processor_config / tokenizer_config")
    return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def square(image: Image.Image | str, aspect: str, image_processor) -> Image.Image:
    """An RGB image as training fed it to the image processor (``pad``: expanded with the mean colour)."""
    img = open_rgb(image) if not isinstance(image, Image.Image) else image.convert("RGB")
    if aspect == "pad":
        return expand2square(img, mean_colour(image_processor))
    if aspect != "square":
        raise ValueError(f"image aspect must be square or pad, got {aspect!r}")
    return img


def encode(processor, prompts: list[str], images: list[Image.Image], aspect: str, device=None):
    """Model inputs for a batch of rendered prompts (left padded) and their images, in order."""
    squared = [square(img, aspect, processor.image_processor) for img in images]
    processor.tokenizer.padding_side = "left"
    inputs = processor(text=prompts, images=squared or None, padding=True, return_tensors="pt")
    return inputs.to(device) if device is not None else inputs


def generation_kwargs(max_new_tokens: int, temperature: float = 0.0, top_p: float | None = None,
                      num_beams: int = 1) -> dict:
    """Greedy unless ``temperature`` > 0 (LLaVA's eval scripts: temperature 0, one beam)."""
    kw = {"max_new_tokens": max_new_tokens, "num_beams": num_beams, "do_sample": temperature > 0}
    if temperature > 0:
        kw["temperature"] = temperature
        if top_p is not None:
            kw["top_p"] = top_p
    return kw


def answer(model, processor, prompts: list[str], images: list[Image.Image], aspect: str, **gen) -> list[str]:
    """One generated answer per rendered prompt (a batch, left padded), special tokens dropped, stripped."""
    import torch

    inputs = encode(processor, prompts, images, aspect, model.device)
    if "pixel_values" in inputs:
        inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
    with torch.no_grad():
        out = model.generate(**inputs, **gen)
    start = inputs["input_ids"].shape[1]
    return [processor.tokenizer.decode(row[start:], skip_special_tokens=True).strip() for row in out]
