"""What a Llava model is made of, as the rest of the package names it: the ``LlavaModel``
inside a (PEFT-wrapped) model, its projector type, the parts ``stage.trainable`` names and
the part a parameter belongs to.

Projectors (``model.mm_projector_type``), both transformers' own ``LlavaMultiModalProjector``
so a checkpoint reloads with ``from_pretrained`` alone:

- ``mlp2x_gelu`` (LLaVA-1.5): linear_1 -> GELU -> linear_2.
- ``linear`` (LLaVA v1): linear_1 alone; linear_2 is a frozen identity behind an identity
  activation (``projector_hidden_act: linear``), so forward, gradients and the trained
  weights are those of one Linear layer. The type is recorded in the saved config
  (``mm_projector_type``).
"""

from __future__ import annotations

PROJECTOR_ACT = {"mlp2x_gelu": "gelu", "linear": "linear"}  # mm_projector_type -> projector_hidden_act


def find_llava_model(model):
    """The LlavaModel inside ``model`` (plain, PEFT-wrapped or not)."""
    from transformers.models.llava.modeling_llava import LlavaModel

    for module in model.modules():
        if isinstance(module, LlavaModel):
            return module
    raise TypeError(f"{type(model).__name__} contains no LlavaModel")


def projector_type(config) -> str:
    """The projector type a Llava config describes (ours record it; others: from the activation)."""
    recorded = getattr(config, "mm_projector_type", None)
    if recorded:
        return recorded
    return "linear" if getattr(config, "projector_hidden_act", "gelu") == "linear" else "mlp2x_gelu"


def trainable_modules(model, parts: list[str]) -> list:
    """The modules that ``stage.trainable`` names (``llm`` is the decoder and its lm_head)."""
    inner = model.model
    table = {"mm_projector": [inner.multi_modal_projector], "llm": [inner.language_model, model.lm_head],
             "vision_tower": [inner.vision_tower]}
    unknown = set(parts) - set(table)
    if unknown:
        raise ValueError(f"stage.trainable has unknown part(s) {sorted(unknown)}; choose from {sorted(table)}")
    return [module for part in parts for module in table[part]]


def part_of(name: str) -> str:
    """The part of a Llava (plain or PEFT-wrapped) a parameter belongs to, for the dtype report."""
    if ".lora_" in name:
        return "lora_adapters"
    if "vision_tower." in name:
        return "vision_tower"
    if "multi_modal_projector." in name:
        return "projector"
    if "embed_tokens." in name:
        return "embeddings"
    if "lm_head." in name:
        return "lm_head"
    if "norm." in name:  # input_layernorm, post_attention_layernorm, the final norm
        return "norms"
    return "llm_body"
