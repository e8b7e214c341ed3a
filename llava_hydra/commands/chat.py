"""Talk to a trained model: ``python -m llava_hydra.chat RUN_OR_MODEL_DIR --image PATH [--prompt TEXT]``
(a LLaVA-OneVision model: ``--video PATH`` instead, eval/videos.py: the run's frame rule, training's pixels).

With ``--prompt`` it answers once and exits; without, it is interactive: each line is a user
turn of one conversation (the model sees the whole history), ``/image PATH`` (``/video PATH``) starts a new
conversation about another image (video), ``/reset`` starts over with the same one, ``/quit`` (or
end of input) leaves. Tokens are printed as they are generated. Decoding is greedy unless
``--temperature`` > 0 (then sampled, with ``--top-p``).

The directory is a stage 2 run, a LoRA run or checkpoint (adapter applied on the fly), a merged
model or any HF-native LLaVA folder (eval/loading.py); the prompt is rendered by the model's own
chat template, so it is the prompt the model was trained with.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from PIL import Image

from llava_hydra.config.families import is_anyres
from llava_hydra.data.images import open_rgb
from llava_hydra.eval.generation import (assistant_message, encode, generation_kwargs, image_pixels, render,
                                         user_message)

COMMANDS = "commands: /image PATH (new conversation about that image), /video PATH (OneVision), /reset, /quit"


class Chat:
    """One conversation with a model: ``ask(text)`` streams and returns the answer."""

    def __init__(self, model, processor, aspect: str, image=None, stream="stdout", video=None, video_rule=None,
                 **gen):
        """``image``: a path or PIL image (or a list of them: several images, in the first turn in that
        order), made pixel values once as training makes them (generation.image_pixels; AnyRes: kept
        decoded, the saved processor cuts it). ``video`` (OneVision, instead of images): a file, read once by
        the run's ``video_rule`` as training reads it (eval/videos.py), or its pixel values. ``stream``: where
        tokens are written as generated (``"stdout"``: sys.stdout at the time; None: nowhere)."""
        self.model, self.processor, self.aspect, self.gen, self.stream = model, processor, aspect, gen, stream
        self.video_rule, self.video = video_rule, None
        self.images, self.messages = [], []
        self.reset(image, video)

    @property
    def image(self):
        return self.images[0] if self.images else None

    def reset(self, image=None, video=None) -> None:
        """A new conversation (about ``image`` -- one or a list -- or ``video`` if given; ImageError if one is
        unusable)."""
        if video is not None:
            if self.video_rule is None:
                raise ValueError("videos are answered by LLaVA-OneVision models (no video rule for this model)")
            from llava_hydra.eval.videos import load_video

            self.video = video if not isinstance(video, (str, Path)) else load_video(
                video, self.video_rule, self.processor.image_processor)
            self.images = []
        elif image is not None:
            self.video = None
            many = image if isinstance(image, (list, tuple)) else [image]
            self.images = [open_rgb(im) if is_anyres(self.aspect) and not isinstance(im, Image.Image)
                           else im if is_anyres(self.aspect)
                           else image_pixels(im, self.aspect, self.processor.image_processor) for im in many]
        self.messages = []

    def ask(self, text: str) -> str:
        import torch

        first = not self.messages
        self.messages.append(user_message(text, image=len(self.images) if first else 0,
                                          video=first and self.video is not None))
        images = list(self.images)
        inputs = encode(self.processor, [render(self.processor, self.messages)], images, self.aspect,
                        self.model.device, [self.video] if self.video is not None else None, self.video_rule)
        for key in ("pixel_values", "pixel_values_videos"):
            if key in inputs:
                inputs[key] = inputs[key].to(self.model.dtype)
        stream = sys.stdout if self.stream == "stdout" else self.stream
        streamer = _Streamer(self.processor.tokenizer, stream) if stream is not None else None
        with torch.no_grad():
            out = self.model.generate(**inputs, streamer=streamer, **self.gen)
        reply = self.processor.tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
        reply = reply.strip()
        self.messages.append(assistant_message(reply))
        return reply


def _Streamer(tokenizer, stream):
    from transformers import TextStreamer

    class Streamer(TextStreamer):
        def on_finalized_text(self, text: str, stream_end: bool = False):
            stream.write(text + ("\n" if stream_end else ""))
            stream.flush()

    return Streamer(tokenizer, skip_prompt=True, skip_special_tokens=True)


def interact(chat: Chat, lines=None, out=None) -> None:
    out = out or sys.stdout
    out.write(COMMANDS + "\n")
    lines = lines if lines is not None else iter(lambda: input("USER: "), None)
    try:
        for line in lines:
            line = line.strip()
            if not line:
                continue
            if line in ("/quit", "/exit"):
                return
            if line == "/reset":
                chat.reset()
                out.write("(new conversation)\n")
            elif line.startswith("/image") or line.startswith("/video"):
                kind, path = line[1:6], line[len("/image"):].strip()
                try:
                    chat.reset(**{kind: path})
                    out.write(f"(new conversation about {path})\n")
                except (OSError, ValueError) as err:
                    out.write(f"cannot use {path!r}: {err}\n")
            elif line.startswith("/"):
                out.write(f"unknown command {line.split()[0]}; {COMMANDS}\n")
            else:
                out.write("ASSISTANT: ")
                chat.ask(line)
    except (EOFError, KeyboardInterrupt):
        out.write("\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llava_hydra.chat", description=__doc__.split("\n\n")[0])
    parser.add_argument("model_dir", help="a stage 2 / LoRA run directory, a checkpoint, or a LLaVA model folder")
    parser.add_argument("--image", action="append",
                        help="the image to talk about (change it with /image PATH); give it again for several "
                             "images in the first turn, in that order")
    parser.add_argument("--video", help="a video to talk about (LLaVA-OneVision; instead of --image): its frames "
                                        "sampled as the run's spec says (data.frames_upbound, force_sample, video_fps)")
    parser.add_argument("--prompt", help="ask this once, print the answer and exit")
    parser.add_argument("--max-new-tokens", type=int, default=512)
    parser.add_argument("--temperature", type=float, default=0.0, help="0: greedy (default); > 0: sample")
    parser.add_argument("--top-p", type=float, default=None)
    parser.add_argument("--image-aspect-ratio", choices=["square", "pad"], default=None,
                        help="default: the run's data.image_aspect_ratio, else pad (LLaVA-1.5)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None)
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    args = parser.parse_args(argv)

    from llava_hydra.eval.loading import load_for_inference

    for image in args.image or []:
        if not Path(image).is_file():  # before the model loads
            parser.error(f"--image {image}: no such file")
    if args.video is not None and args.image:
        parser.error("--video and --image: a conversation is about a video or images (OneVision trains them apart)")
    if args.video is not None and not Path(args.video).is_file():
        parser.error(f"--video {args.video}: no such file")
    model, processor, aspect = load_for_inference(args.model_dir, args.dtype, args.device)
    rule = None
    from llava_hydra.model.families import family_of_config

    if family_of_config(model.config) == "llava_onevision":
        from llava_hydra.eval.videos import video_rule

        rule = video_rule(args.model_dir, model.config)
    elif args.video is not None:
        parser.error(f"--video: {args.model_dir} is not a LLaVA-OneVision model; only OneVision models take videos")
    chat = Chat(model, processor, args.image_aspect_ratio or aspect, args.image, video=args.video, video_rule=rule,
                **generation_kwargs(args.max_new_tokens, args.temperature, args.top_p))
    if args.prompt is not None:
        chat.ask(args.prompt)
    else:
        interact(chat)
    return 0


if __name__ == "__main__":
    sys.exit(main())
