"""Videos at serving time (LLaVA-OneVision chat and eval): a video file -> the pixels training made of it, and
a rendered prompt's ``<video>`` tag -> its run of ``<video>`` tokens, as ``LlavaOnevisionProcessor`` expands it.

- **Frames and pixels**: the run's own rule (``video_rule``: ``data.frames_upbound`` / ``force_sample`` /
  ``video_fps`` of the spec beside the model, read where its ``data.image_aspect_ratio`` is read:
  eval/loading.py ``spec_data``; a folder without a spec, e.g. a merged model: OneVision's recipes' rule, at
  most 32 frames, one a second)
  and training's own ``VideoSource.load`` (data/video.py): the same file checks, frame sampling and
  ``frame_pixels``, so the model is asked about the pixels it was trained on for that file.
- **Prompt**: the chat template renders a ``{"type": "video"}`` part as ``<video>`` where training's record has
  its ``<image>`` tag (data/chat_template.py, as llava-hf's OneVision template); ``expand`` turns each tag into
  ``VideoTokens.tokens(frames)`` ``<video>`` tokens (data/video_tokens.py: frames x ceil(side / 2)^2 + 1), the
  count ``LlavaOnevisionProcessor.replace_video_token`` writes.
- **Encoding** (``encode_videos``): the serving processor has no video processor where torchvision is missing
  (model/onevision_processor.py), so the expanded prompts are tokenized by its tokenizer as
  ``ProcessorMixin.__call__`` tokenizes them (left padding; bos by transformers' rule: unless the template
  wrote one) and the videos stacked to ``pixel_values_videos`` (videos, frames, C, H, W): one frame count per
  call, as transformers takes them (data/video.py ``stack_videos``). Built here, not through a stock video
  processor, also where torchvision is installed: the pixels are training's, not re-processed.
"""

from __future__ import annotations

from pathlib import Path

VIDEO_TOKEN = "<video>"


# A folder without its run's spec (a merged model, llava-hf's): OneVision's recipes' rule (data=onevision_si /
# onevision_ov: finetune_{si,ov}.sh's --frames_upbound 32, one frame a second, no --force_sample).
RECIPE_RULE = {"frames_upbound": 32, "force_sample": False, "video_fps": 1}


def video_rule(path, config):
    """The ``VideoTokens`` rule of the run that wrote ``path`` (model folder, run directory or checkpoint)
    for a OneVision model ``config``: the tower's patches per side and the spec's frame rule (its
    ``data.frames_upbound`` / ``force_sample`` / ``video_fps``; RECIPE_RULE's value for a key the spec lacks:
    no spec, or one written before videos trained, whose default 0 would read every second of a clip)."""
    from llava_hydra.data.video_tokens import video_tokens_for
    from llava_hydra.eval.loading import spec_data

    vc = config.vision_config
    data = spec_data(Path(path)) if path is not None else {}
    return video_tokens_for(vc.image_size // vc.patch_size, {k: data.get(k, v) for k, v in RECIPE_RULE.items()})


def load_video(path, rule, image_processor):
    """A video file -> ``pixel_values_videos`` (frames, C, H, W) as training makes them (ImageError with the
    file and the problem: missing, unreadable, no video stream, fewer frames than its header says)."""
    from llava_hydra.data.video import VideoSource

    path = Path(path)
    return VideoSource(path.parent, rule, image_processor, allow_outside=True).load(path.name)


def video_tokens(frames: int, rule) -> str:
    """The text one video of ``frames`` frames becomes in a prompt: its run of ``<video>`` tokens."""
    return VIDEO_TOKEN * rule.tokens(frames)


def expand(prompts: list[str], videos: list, rule) -> list[str]:
    """Each ``<video>`` tag of the prompts (in order) -> the run of the next video (pixels (frames, C, H, W))."""
    tags = [p.count(VIDEO_TOKEN) for p in prompts]
    if sum(tags) != len(videos):
        raise ValueError(f"{sum(tags)} {VIDEO_TOKEN} tags in the prompts for {len(videos)} videos")
    left, out = iter(videos), []
    for prompt in prompts:
        pieces = prompt.split(VIDEO_TOKEN)
        out.append(pieces[0] + "".join(video_tokens(len(next(left)), rule) + piece for piece in pieces[1:]))
    return out


def encode_videos(processor, prompts: list[str], videos: list, rule):
    """Model inputs (input_ids, attention_mask, pixel_values_videos) for rendered prompts and their videos."""
    from llava_hydra.data.video import stack_videos

    tokenizer = processor.tokenizer
    tokenizer.padding_side = "left"
    bos = tokenizer.bos_token
    written = bool(bos) and all(p.startswith(bos) for p in prompts)  # the template wrote bos: no second one
    inputs = tokenizer(expand(prompts, videos, rule), padding=True, return_tensors="pt",
                       add_special_tokens=not written)
    inputs["pixel_values_videos"] = stack_videos(list(videos), "a batch of prompts")
    return inputs
