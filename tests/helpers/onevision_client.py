"""A stock transformers client of a saved OneVision folder: ``LlavaOnevisionProcessor`` from the folder's own
files. Where torchvision is installed that is ``AutoProcessor.from_pretrained``; without it (this project's
CPU install) transformers cannot build the class's video processor, so the same class is built from the
folder's tokenizer, image processor, chat template and processor_config.json with the video processor left
out (only the type check of that one argument is bypassed; images never touch it)."""

from __future__ import annotations

import json
from pathlib import Path
from unittest import mock


def stock_processor(folder):
    from transformers import AutoImageProcessor, AutoProcessor, AutoTokenizer, LlavaOnevisionProcessor
    from transformers.processing_utils import ProcessorMixin
    from transformers.utils import is_torchvision_available

    folder = Path(folder)
    if is_torchvision_available():
        return AutoProcessor.from_pretrained(folder)
    saved = json.loads((folder / "processor_config.json").read_text())
    assert saved["processor_class"] == "LlavaOnevisionProcessor"
    kwargs = {k: v for k, v in saved.items() if k not in ("image_processor", "video_processor", "processor_class")}
    check = ProcessorMixin.check_argument_for_proper_class

    def all_but_video(self, name, arg):
        return None if name == "video_processor" and arg is None else check(self, name, arg)

    with mock.patch.object(ProcessorMixin, "check_argument_for_proper_class", all_but_video):
        return LlavaOnevisionProcessor(image_processor=AutoImageProcessor.from_pretrained(folder),
                                       tokenizer=AutoTokenizer.from_pretrained(folder), video_processor=None,
                                       chat_template=(folder / "chat_template.jinja").read_text(), **kwargs)
