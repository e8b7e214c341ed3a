"""The processor saved beside a LLaVA-OneVision model: transformers' ``LlavaOnevisionProcessor``.

That class takes a video processor as well as the image one, and transformers' video processors
need torchvision (``BaseVideoProcessor``); its image processor does not (``LlavaOnevisionImageProcessorPil``).
With torchvision installed the processor is transformers' own object. Without it (this project's CPU
install: PyPI's torchvision wheel for torch 2.13 is a CUDA build whose operators do not register on the
CPU torch) ``SavedOnevisionProcessor`` writes the very files ``LlavaOnevisionProcessor.save_pretrained``
writes -- tokenizer files, ``chat_template.jinja`` and ``processor_config.json`` with the image and
video processors nested in it (tests compare the two byte for byte) -- so wherever torchvision is
installed (any GPU install, vLLM, lmms-eval) ``AutoProcessor.from_pretrained`` loads the folder as a
``LlavaOnevisionProcessor``. The video processor is written with the tower's input size and mean / std
(OneVision's frames are the tower's view of each frame, as training makes them: data/video.py).
For generation without torchvision (``inference_processor`` from a folder; ``serving`` for the object made in
memory for a LoRA run) the same class is built without its video processor, for images and text.
"""

from __future__ import annotations

import json
import os

PROCESSOR = "LlavaOnevisionProcessor"
VIDEO_PROCESSOR = "LlavaOnevisionVideoProcessor"


def video_processor_dict(image_processor) -> dict:
    """The video processor's config: frames resized to the tower's input size, its mean / std and
    resampling (LlavaOnevisionVideoProcessor's other defaults stand)."""
    return {"size": dict(image_processor.size), "image_mean": list(image_processor.image_mean),
            "image_std": list(image_processor.image_std), "resample": int(image_processor.resample),
            "do_resize": True, "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
            "do_convert_rgb": True, "do_sample_frames": False, "video_processor_type": VIDEO_PROCESSOR}


def processor_kwargs(config) -> dict:
    """LlavaOnevisionProcessor's own arguments for a model config: the base view's token count
    (no CLS token is counted: SigLIP has none), the select strategy, the AnyRes mode."""
    from llava_hydra.data.conversation import IMAGE_TOKEN

    vc = config.vision_config
    return {"num_image_tokens": (vc.image_size // vc.patch_size) ** 2,
            "vision_feature_select_strategy": config.vision_feature_select_strategy,
            "image_token": IMAGE_TOKEN, "video_token": "<video>",
            "vision_aspect_ratio": getattr(config, "vision_aspect_ratio", None) or "anyres_max_9"}


def has_video_processors() -> bool:
    from transformers.utils import is_torchvision_available

    return is_torchvision_available()


def onevision_processor(tokenizer, image_processor, config):
    """transformers' LlavaOnevisionProcessor where torchvision is installed, else the file writer below."""
    chat_template = getattr(tokenizer, "chat_template", None)
    if has_video_processors():
        import transformers

        video = getattr(transformers, VIDEO_PROCESSOR)(**{k: v for k, v in video_processor_dict(image_processor).items()
                                                           if k != "video_processor_type"})
        return transformers.LlavaOnevisionProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                                    video_processor=video, chat_template=chat_template,
                                                    **processor_kwargs(config))
    return SavedOnevisionProcessor(tokenizer, image_processor, config)


class SavedOnevisionProcessor:
    """What a run saves for a OneVision model where transformers cannot build its processor (no
    torchvision): ``save_pretrained`` writes LlavaOnevisionProcessor's files. ``tokenizer`` and
    ``image_processor`` are the real ones (the data side and chat use them directly)."""

    def __init__(self, tokenizer, image_processor, config):
        self.tokenizer, self.image_processor = tokenizer, image_processor
        self.chat_template = getattr(tokenizer, "chat_template", None)
        self.kwargs = processor_kwargs(config)

    def to_dict(self) -> dict:
        return {**self.kwargs, "image_processor": self.image_processor.to_dict(),
                "video_processor": video_processor_dict(self.image_processor), "processor_class": PROCESSOR}

    def save_pretrained(self, save_directory) -> None:
        os.makedirs(save_directory, exist_ok=True)
        self.tokenizer._set_processor_class(PROCESSOR)  # as ProcessorMixin.save_pretrained does
        self.tokenizer.save_pretrained(save_directory)  # tokenizer files + chat_template.jinja
        if self.chat_template:
            with open(os.path.join(save_directory, "chat_template.jinja"), "w", encoding="utf-8") as f:
                f.write(self.chat_template)
        with open(os.path.join(save_directory, "processor_config.json"), "w", encoding="utf-8") as f:
            f.write(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    def for_inference(self):
        """The processor a client gets from the files ``save_pretrained`` writes (``inference_processor``),
        built from the same parts without the round trip: what chat / eval use for a LoRA run, whose
        processor is made in memory from the rebuilt base rather than loaded from a folder."""
        return _image_only_class()(image_processor=self.image_processor, tokenizer=self.tokenizer,
                                   chat_template=self.chat_template, **self.kwargs)


def load_parts(path, trust_remote_code: bool = False):
    """A saved OneVision folder's tokenizer and image processor (``.tokenizer``, ``.image_processor``), which
    need no torchvision: what training from an assembled OneVision model (``model.pretrained_llava``) uses."""
    from types import SimpleNamespace

    from transformers import AutoImageProcessor, AutoTokenizer

    return SimpleNamespace(tokenizer=AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code),
                           image_processor=AutoImageProcessor.from_pretrained(path, trust_remote_code=trust_remote_code))


_IMAGE_ONLY = []


def _image_only_class():
    """LlavaOnevisionProcessor without its video processor (images and text only): its own expansion of
    each <image>, chat template and tokenizing, built where torchvision is absent."""
    if not _IMAGE_ONLY:
        from transformers import LlavaOnevisionProcessor

        class ImageOnlyOnevisionProcessor(LlavaOnevisionProcessor):
            def __init__(self, image_processor=None, tokenizer=None, **kwargs):
                super().__init__(image_processor, tokenizer, None, **kwargs)

        _IMAGE_ONLY.append(ImageOnlyOnevisionProcessor)
    return _IMAGE_ONLY[0]


def serving(processor):
    """``processor`` ready to prompt and encode: a ``SavedOnevisionProcessor`` (no torchvision) becomes its
    image-and-text ``LlavaOnevisionProcessor``; transformers' own processor is returned as it is."""
    return processor.for_inference() if isinstance(processor, SavedOnevisionProcessor) else processor


def inference_processor(path):
    """The processor of a saved OneVision folder for generation: AutoProcessor (LlavaOnevisionProcessor) where
    torchvision is installed, else the same class's image-and-text part built from the folder's files."""
    from pathlib import Path

    from transformers import AutoProcessor

    path = Path(path)
    if has_video_processors():
        return AutoProcessor.from_pretrained(path)
    saved = json.loads((path / "processor_config.json").read_text())
    kwargs = {k: v for k, v in saved.items() if k not in ("image_processor", "video_processor", "processor_class")}
    parts = load_parts(path)
    template = path / "chat_template.jinja"
    return _image_only_class()(image_processor=parts.image_processor, tokenizer=parts.tokenizer,
                               chat_template=template.read_text() if template.exists() else None, **kwargs)
