"""The vision tower and projector run on every training micro-batch, images or not: a micro-batch
without an image runs them on one zero image whose features enter the forward pass multiplied
by zero. Loss, logits and every existing gradient are exactly what they would be without it; the
tower's and projector's trainable weights get a zero gradient instead of none.

Why: with several processes the ranks must run the same collectives. A rank whose micro-batch is
text-only would otherwise skip the tower while another rank runs it: under ZeRO-3 the tower's
weights are partitioned (frozen ones too) and gathered as it runs, so the gathers no longer match
(gloo aborts with "collective mismatch", NCCL hangs); under ZeRO-2 and DDP the projector's (and a
trainable tower's) gradients are reduced by buckets that one rank never fills (DDP with gradient
checkpointing hangs). LLaVA survives this because its text-only samples carry a zero image.

It also runs in one process when the tower or projector trains, so that a step without any image
updates the optimizer state (zero gradient: AdamW's moments decay) as it does with several
processes and as LLaVA does. Cost: one tower + projector forward (and backward where they train)
on a single image per text-only micro-batch. Not in eval mode or without gradients (generation,
held-out evaluation)."""

from __future__ import annotations

import torch

from llava_hydra.config.distributed import world_size
from llava_hydra.model.llava import find_llava_model


def placeholder_image(llava_model, device) -> torch.Tensor:
    """One zero image of the size the vision tower takes, in the tower's dtype."""
    vision = llava_model.config.vision_config
    dtype = next(llava_model.vision_tower.parameters()).dtype
    size = vision.image_size
    return torch.zeros(1, getattr(vision, "num_channels", 3), size, size, dtype=dtype, device=device)


def placeholder_inputs(llava_model, device) -> dict:
    """get_image_features' image inputs for the zero image: an AnyRes model (LLaVA-NeXT / OneVision)
    also takes its size and the crops its grid cuts it into (base view + crops, 4-D concatenated)."""
    pixels = placeholder_image(llava_model, device)
    pinpoints = getattr(llava_model.config, "image_grid_pinpoints", None)
    if not pinpoints:
        return {"pixel_values": pixels}
    from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches

    size = pixels.shape[-1]
    n = image_size_to_num_patches(image_size=(size, size), grid_pinpoints=pinpoints, patch_size=size)
    extra = {"pixel_values": pixels.expand(n, -1, -1, -1).contiguous(),
             "image_sizes": torch.tensor([[size, size]], device=device)}
    if getattr(llava_model.config, "vision_aspect_ratio", None):  # OneVision
        extra["vision_aspect_ratio"] = llava_model.config.vision_aspect_ratio
    return extra


def placeholder_needed(llava_model) -> bool:
    """Several processes (their collectives must match), or a tower / projector that learns."""
    if world_size() > 1:
        return True
    parts = (llava_model.vision_tower, llava_model.multi_modal_projector)
    return any(p.requires_grad for part in parts for p in part.parameters())


def zero_from_placeholder(llava_model, device, vision_feature_layer=None, vision_feature_select_strategy=None):
    """A scalar zero that depends on the tower's and projector's output for the placeholder image
    (``(features * 0).sum()``: zero even where a sum of the features would overflow)."""
    out = llava_model.get_image_features(**placeholder_inputs(llava_model, device),
                                         vision_feature_layer=vision_feature_layer,
                                         vision_feature_select_strategy=vision_feature_select_strategy,
                                         return_dict=True)
    return sum((f * 0).sum() for f in out.pooler_output)


def run_tower_on_text_only(model) -> None:
    """Make the LlavaModel inside ``model`` (plain or PEFT-wrapped) run the placeholder image
    whenever a training forward comes without pixels. The token embeddings are taken first and
    the tower runs after them, in the order a forward with an image runs them (ZeRO-3 gathers
    parameters in that order on every rank)."""
    inner = find_llava_model(model)
    if getattr(inner, "_placeholder_installed", False):
        return
    original = inner.forward

    def forward(input_ids=None, pixel_values=None, *args, inputs_embeds=None, **kwargs):
        if (args or pixel_values is not None or kwargs.get("mm_encoder_outputs") is not None
                or kwargs.get("pixel_values_videos") is not None  # a video runs the tower itself
                or not inner.training or not torch.is_grad_enabled() or not placeholder_needed(inner)):
            return original(input_ids, pixel_values, *args, inputs_embeds=inputs_embeds, **kwargs)
        if inputs_embeds is None:
            inputs_embeds = inner.get_input_embeddings()(input_ids)
        zero = zero_from_placeholder(inner, inputs_embeds.device, kwargs.get("vision_feature_layer"),
                                     kwargs.get("vision_feature_select_strategy"))
        return original(None, None, inputs_embeds=inputs_embeds + zero.to(inputs_embeds.dtype), **kwargs)

    inner.forward = forward
    inner._placeholder_installed = True
