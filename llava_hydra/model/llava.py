"""What a Llava model is made of, as the rest of the package names it: the ``LlavaModel``
inside a (PEFT-wrapped) model, its projector type, the parts ``stage.trainable`` names
(``PARTS``: the one table of which modules make each part and which ``training.*`` key gives
it its own learning rate; freezing, LoRA, the optimizer's groups and the trackers read it) and
the part a parameter belongs to in the dtype report.

Projectors (``model.mm_projector_type``), both transformers' own ``LlavaMultiModalProjector``
so a checkpoint reloads with ``from_pretrained`` alone:

- ``mlp2x_gelu`` (LLaVA-1.5): linear_1 -> GELU -> linear_2.
- ``linear`` (LLaVA v1): linear_1 alone; linear_2 is a frozen identity behind an identity
  activation (``projector_hidden_act: linear``), so forward, gradients and the trained
  weights are those of one Linear layer. The type is recorded in the saved config
  (``mm_projector_type``).
"""

from __future__ import annotations

from typing import NamedTuple

PROJECTOR_ACT = {"mlp2x_gelu": "gelu", "linear": "linear"}  # mm_projector_type -> projector_hidden_act


def find_llava_model(model):
    """The LlavaModel (or LlavaNextModel, LlavaOnevisionModel) inside ``model`` (plain, PEFT-wrapped or not)."""
    from llava_hydra.model.families import core_classes

    cores = core_classes()
    for module in model.modules():
        if isinstance(module, cores):
            return module
    raise TypeError(f"{type(model).__name__} contains no LlavaModel")


def projector_type(config) -> str:
    """The projector type a Llava config describes (ours record it; others: from the activation)."""
    recorded = getattr(config, "mm_projector_type", None)
    if recorded:
        return recorded
    return "linear" if getattr(config, "projector_hidden_act", "gelu") == "linear" else "mlp2x_gelu"


class Part(NamedTuple):
    modules: tuple[str, ...]  # attribute paths inside a LlavaForConditionalGeneration
    lr_key: str | None  # the training.* key of the part's own learning rate (None: training.learning_rate)


# stage.trainable's parts, in the order the logs list them (config.CHOICES names them for the pre-flight)
PARTS = {
    # the decoder, its token embeddings, lm_head; AnyRes: the row-newline embedding too (LLaVA-NeXT trains
    # it with the LLM: mm_tunable_parts=mm_language_model, not mm_mlp_adapter)
    "llm": Part(("model.language_model", "lm_head", "model.image_newline"), None),
    "mm_projector": Part(("model.multi_modal_projector",), "mm_projector_lr"),
    "vision_tower": Part(("model.vision_tower",), "vision_tower_lr"),
}
OWN_LR = {part: p.lr_key for part, p in PARTS.items() if p.lr_key}  # part -> training.<key> of its own rate


def part_modules(model) -> dict[str, list]:
    """Each part of ``PARTS`` -> its modules in ``model`` (plain or PEFT-wrapped; a part PEFT
    trains whole is its ``modules_to_save`` wrapper)."""
    from llava_hydra.model.families import is_llava_outer

    outer = next((m for m in model.modules() if is_llava_outer(m)), None)
    if outer is None:
        raise TypeError(f"{type(model).__name__} contains no LlavaForConditionalGeneration")
    return {part: [m for m in (_member(outer, path) for path in p.modules) if m is not None]
            for part, p in PARTS.items()}


class ParamMember:
    """A bare parameter of a part (LlavaNext's ``image_newline``), with the two calls freezing and
    the optimizer's groups make on a part's modules."""

    def __init__(self, param):
        self.param = param

    def parameters(self):
        return iter([self.param])

    def requires_grad_(self, flag: bool = True):
        self.param.requires_grad_(flag)
        return self


def _member(outer, path: str):
    """The module at ``path``, a bare parameter there (ParamMember), or None where this family has none."""
    try:
        return outer.get_submodule(path)
    except AttributeError:
        try:
            return ParamMember(outer.get_parameter(path))
        except AttributeError:
            return None


def trainable_modules(model, parts: list[str]) -> list:
    """The modules that ``stage.trainable`` names."""
    unknown = set(parts) - set(PARTS)
    if unknown:
        raise ValueError(f"stage.trainable has unknown part(s) {sorted(unknown)}; choose from {sorted(PARTS)}")
    found = part_modules(model)
    return [module for part in parts for module in found[part]]


def part_of(name: str) -> str:
    """The part of a Llava (plain or PEFT-wrapped) a parameter belongs to, for the dtype report."""
    if ".lora_" in name:
        return "lora_adapters"
    if "vision_tower." in name:
        return "vision_tower"
    if "multi_modal_projector." in name:
        return "projector"
    if "image_newline" in name:
        return "newline"
    if "embed_tokens." in name:
        return "embeddings"
    if "lm_head." in name:
        return "lm_head"
    if "norm." in name:  # input_layernorm, post_attention_layernorm, the final norm
        return "norms"
    return "llm_body"
