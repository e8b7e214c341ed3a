"""The ``AutoProcessor`` saved beside a trained model, so it reloads Hugging Face-natively
(``AutoProcessor.from_pretrained``) and prompts as training did: transformers'
``LlavaProcessor`` with the run's tokenizer and chat template, and an image processor that makes
the pixels training made for the run's ``image_aspect_ratio`` (model/saved_pixels.py: ``pad`` ->
``LlavaImageProcessor`` with ``do_pad``, ``square`` -> the tower's own). The AnyRes families
(``model.family``): their own processor class (``LlavaNextProcessor``; ``LlavaOnevisionProcessor``,
written by model/onevision_processor.py where transformers cannot build it without torchvision), which
expands each ``<image>`` by the image's size as data/image_tokens.py counts it."""

from __future__ import annotations

from llava_hydra.data.conversation import IMAGE_TOKEN
from llava_hydra.data.image_tokens import has_cls_token
from llava_hydra.model.families import family_of_config, processor_class


def make_processor(tokenizer, image_processor, model, template: str | None = None, aspect: str | None = None):
    """The processor for ``model``, carrying the chat template of the training ``template``
    (data/chat_template.py; a ``chat_template`` tokenizer keeps its own) and the image processor
    of the training ``aspect`` (``data.image_aspect_ratio``; None: ``image_processor`` as it is)."""
    import copy

    from transformers import LlavaProcessor

    from llava_hydra.data.chat_template import chat_template_for
    from llava_hydra.model.saved_pixels import for_aspect

    chat_template = chat_template_for(template, tokenizer) if template else None
    if chat_template:
        tokenizer = copy.deepcopy(tokenizer)  # the run's own tokenizer is left as it was
        tokenizer.chat_template = chat_template
    config = model.config
    if family_of_config(config) != "llava":
        return _anyres_processor(tokenizer, image_processor, config)
    return LlavaProcessor(image_processor=for_aspect(image_processor, aspect), tokenizer=tokenizer,
                          chat_template=getattr(tokenizer, "chat_template", None),
                          patch_size=config.vision_config.patch_size,
                          vision_feature_select_strategy=config.vision_feature_select_strategy,
                          image_token=IMAGE_TOKEN,
                          num_additional_image_tokens=1 if has_cls_token(config.vision_config) else 0)


def _anyres_processor(tokenizer, image_processor, config):
    """LlavaNextProcessor / LlavaOnevisionProcessor for an AnyRes model (a separate branch per family)."""
    family = family_of_config(config)
    common = dict(image_processor=image_processor, tokenizer=tokenizer,
                  chat_template=getattr(tokenizer, "chat_template", None), image_token=IMAGE_TOKEN,
                  vision_feature_select_strategy=config.vision_feature_select_strategy)
    if family == "llava_next":
        return processor_class(family)(patch_size=config.vision_config.patch_size,
                                       num_additional_image_tokens=1 if has_cls_token(config.vision_config) else 0,
                                       **common)
    from llava_hydra.model.onevision_processor import onevision_processor

    return onevision_processor(tokenizer, image_processor, config)
