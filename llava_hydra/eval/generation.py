"""Prompts through the model's own chat template, and batched answers (left padding).

A conversation is transformers' message list (``{"role": "user", "content": [{"type": "image"},
{"type": "text", "text": ...}]}``); ``render`` turns it into the prompt string with the saved
processor's chat template and the generation prompt, which is how training rendered it (see
data/chat_template.py). Images become pixel values by training's own function
(``images.load_image``: the file checks, JPEG draft decoding, ``aspect`` square or pad, the
pixels.py pipeline), so a model is evaluated on the pixel values it was trained on for the same
file; the processor then only expands each ``<image>`` to the model's image-token run and
tokenizes as transformers' ``processor.apply_chat_template(tokenize=True)`` does: the tokenizer's
bos is added unless the prompt already starts with one (our saved templates write none, as llava-hf's;
a template that writes bos, e.g. Llama-3's, gets no second). AnyRes (``aspect`` anyres /
anyres_max_N): the saved processor makes the crops and ``image_sizes`` from the decoded image,
with the transformers image processor training used; OneVision's gets each prompt's images as one list
(``per_prompt``), so several images in one prompt take one padded view each, as in training.
OneVision videos (``videos``: training's pixels, eval/videos.py) are encoded there, without images in the batch.
"""

from __future__ import annotations

from PIL import Image

from llava_hydra.config.families import is_anyres
from llava_hydra.data.multi_view import is_multi_view
from llava_hydra.data.images import load_image, open_rgb, to_rgb
from llava_hydra.data.pixels import pipeline

_AS_GIVEN = {"do_resize": False, "do_center_crop": False, "do_rescale": False, "do_normalize": False, "do_pad": False}


def user_message(text: str, image: bool | int, video: bool = False) -> dict:
    """A user turn: ``image`` True (one image) or a count of images, or ``video`` (one), before the text."""
    media = [{"type": "video"}] if video else [{"type": "image"}] * int(image)
    return {"role": "user", "content": media + [{"type": "text", "text": text}]}


def assistant_message(text: str) -> dict:
    return {"role": "assistant", "content": [{"type": "text", "text": text}]}


def render(processor, messages: list[dict]) -> str:
    if not getattr(processor, "chat_template", None):
        raise ValueError("the model's processor has no chat template: save it with llava_hydra (stage 2 or merge) "
                         "or add one to its processor_config / tokenizer_config")
    return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def image_pixels(image, aspect: str, image_processor):
    """An image -> pixel values (C, H, W) as training makes them: a file path through
    images.load_image (what the dataset's ImageSource.load runs: checks, JPEG draft decoding,
    square or pad, pixels.pipeline); a decoded image (MMBench's base64) through pixels.pipeline;
    pixel values as they are."""
    import torch

    if isinstance(image, torch.Tensor):
        return image
    if isinstance(image, Image.Image):
        return pipeline(image_processor)(to_rgb(image), aspect)
    # PIL's own size limit, as before: training's data.max_image_pixels would end a whole eval on one image
    return load_image(image, aspect, image_processor, max_pixels=None)


def encode(processor, prompts: list[str], images: list, aspect: str, device=None, videos=None, video_rule=None):
    """Model inputs for a batch of rendered prompts (left padded) and their images in tag order
    (paths, PIL images or pixel values; see image_pixels), or their videos (OneVision: pixel values
    (frames, C, H, W) as eval/videos.py loads them, with the run's ``video_rule``; not beside images)."""
    import torch

    if videos:
        if images:
            raise ValueError("a batch of prompts with videos and images: encode them in separate batches")
        from llava_hydra.eval.videos import encode_videos

        inputs = encode_videos(processor, prompts, videos, video_rule)
        return inputs.to(device) if device is not None else inputs
    processor.tokenizer.padding_side = "left"
    if is_anyres(aspect):  # AnyRes: the saved processor makes the crops and image_sizes, as training's did
        decoded = [img if isinstance(img, Image.Image) else open_rgb(img) for img in images]
        bos = processor.tokenizer.bos_token
        written = bos is not None and all(p.startswith(bos) for p in prompts)  # the template wrote bos
        inputs = processor(text=prompts, images=per_prompt(processor, prompts, [to_rgb(im) for im in decoded]),
                           padding=True, return_tensors="pt", add_special_tokens=not written)
        return inputs.to(device) if device is not None else inputs
    pixels = [image_pixels(img, aspect, processor.image_processor) for img in images]
    # the processor expands each <image> by the pixel values' size and tokenizes; the pixel
    # values themselves are training's, passed through its image processor unchanged. bos: the
    # tokenizer's, unless the template wrote one (transformers' own rule in
    # processor.apply_chat_template): one <s>, as training had.
    bos = processor.tokenizer.bos_token
    written = bool(bos) and all(p.startswith(bos) for p in prompts)
    inputs = processor(text=prompts, images=pixels or None, padding=True, return_tensors="pt",
                       **(_AS_GIVEN if pixels else {}), **({"add_special_tokens": False} if written else {}))
    if pixels:
        inputs["pixel_values"] = torch.stack(pixels)
    return inputs.to(device) if device is not None else inputs


def per_prompt(processor, prompts: list[str], images: list) -> list | None:
    """The batch's images (in tag order) as the processor takes them: OneVision's one list per prompt, so
    that a prompt with several images gets one padded view each (its ``batch_num_images``) as training
    gave them (data/multi_view.py); a flat list for the others (None: no image)."""
    if not images:
        return None
    if not is_multi_view(processor.image_processor):
        return images
    counts, left = [p.count(processor.image_token) for p in prompts], iter(images)
    if sum(counts) != len(images):
        raise ValueError(f"{sum(counts)} {processor.image_token} tags in the prompts for {len(images)} images")
    return [[next(left) for _ in range(n)] for n in counts]


def generation_kwargs(max_new_tokens: int, temperature: float = 0.0, top_p: float | None = None,
                      num_beams: int = 1) -> dict:
    """Greedy unless ``temperature`` > 0 (LLaVA's eval scripts: temperature 0, one beam)."""
    kw = {"max_new_tokens": max_new_tokens, "num_beams": num_beams, "do_sample": temperature > 0}
    if temperature > 0:
        kw["temperature"] = temperature
        if top_p is not None:
            kw["top_p"] = top_p
    return kw


def answer(model, processor, prompts: list[str], images: list[Image.Image], aspect: str, videos=None,
           video_rule=None, **gen) -> list[str]:
    """One generated answer per rendered prompt (a batch, left padded), special tokens dropped, stripped."""
    import torch

    inputs = encode(processor, prompts, images, aspect, model.device,
                    **({"videos": videos, "video_rule": video_rule} if videos else {}))
    for key in ("pixel_values", "pixel_values_videos"):
        if key in inputs:
            inputs[key] = inputs[key].to(model.dtype)
    with torch.no_grad():
        out = model.generate(**inputs, **gen)
    start = inputs["input_ids"].shape[1]
    return [processor.tokenizer.decode(row[start:], skip_special_tokens=True).strip() for row in out]
