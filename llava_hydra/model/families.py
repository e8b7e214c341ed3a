"""The transformers classes of each model family (config/families.py names them): what assembly
builds, what ``from_pretrained`` reloads, what the saved processor is, and how to recognise a
model of any family (``is_llava_outer`` / ``is_llava_core``) however it is wrapped."""

from __future__ import annotations

from llava_hydra.config.families import FAMILIES, trained_family


def _transformers(name: str):
    import transformers

    return getattr(transformers, name)


def family_of(cfg) -> str:
    """The family this run builds (an AnyRes family under a square/pad aspect: llava)."""
    return trained_family(cfg.model.get("family", "llava"), cfg.data.image_aspect_ratio)


def model_class(family: str):
    return _transformers(FAMILIES[family].model)


def config_class(family: str):
    return _transformers(FAMILIES[family].config)


def processor_class(family: str):
    return _transformers(FAMILIES[family].processor)


def family_of_config(config) -> str:
    """The family of a (transformers) model config, by its class."""
    for name, fam in FAMILIES.items():
        if type(config).__name__ == fam.config:
            return name
    raise TypeError(f"{type(config).__name__} is no LLaVA family's config; known: "
                    + ", ".join(f.config for f in FAMILIES.values()))


def outer_classes() -> tuple:
    return tuple(_transformers(f.model) for f in FAMILIES.values())


def core_classes() -> tuple:
    from transformers.models.llava.modeling_llava import LlavaModel
    from transformers.models.llava_next.modeling_llava_next import LlavaNextModel
    from transformers.models.llava_onevision.modeling_llava_onevision import LlavaOnevisionModel

    return LlavaModel, LlavaNextModel, LlavaOnevisionModel


def is_llava_outer(module) -> bool:
    return isinstance(module, outer_classes())
