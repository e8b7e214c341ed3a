"""What learns: exactly the parts ``stage.trainable`` names, never the parts no gradient can
reach, and no backward pass through a frozen vision tower under gradient checkpointing."""

from __future__ import annotations

from llava_hydra.model.llava import find_llava_model, projector_type, trainable_modules


def unused_vision_layers(config) -> list[str]:
    """Name fragments of the vision tower's parts that never reach the projector: the encoder
    layers after ``vision_feature_layer`` (LLaVA's features come from layer -2) and the final
    layer norm and SigLIP's attention-pooling head (they only feed the pooled output)."""
    n = config.vision_config.num_hidden_layers
    selected = config.vision_feature_layer
    selected = list(selected) if isinstance(selected, (list, tuple)) else [selected]
    used = max(k % (n + 1) for k in selected)  # hidden_states[k]: the output of the first k layers
    return ([f"vision_tower.encoder.layers.{k}." for k in range(used, n)]
            + ["vision_tower.post_layernorm.", "vision_tower.head."])


def freeze_fixed_parts(model) -> None:
    """Parameters that never train whatever ``stage.trainable`` says (in every copy, PEFT's
    included): the identity half of a ``linear`` projector, and the vision tower's layers that
    its selected features never pass through (left trainable they would get no gradient, which
    DDP with gradient checkpointing refuses)."""
    config = find_llava_model(model).config
    fixed = unused_vision_layers(config)
    if projector_type(config) == "linear":
        fixed.append("multi_modal_projector.linear_2.")
    for name, p in model.named_parameters():
        if any(part in name for part in fixed):
            p.requires_grad_(False)


def freeze_all_but(model, parts: list[str]) -> None:
    model.requires_grad_(False)
    for module in trainable_modules(model, parts):
        module.requires_grad_(True)
    freeze_fixed_parts(model)


def hook_input_grads_on_text_only(model) -> None:
    """Make ``model.enable_input_require_grads`` (a LlavaForConditionalGeneration) hook the
    LLM's token embeddings only.

    Gradient checkpointing (the Trainer's ``activation_checkpointing_enable``), PEFT and QLoRA
    call it so that gradients reach checkpointed layers whose own inputs are frozen. transformers
    hooks the input embeddings of every sub-model, CLIP's patch embedding included: a frozen
    vision tower then keeps its activations, is recomputed under checkpointing and runs a
    backward pass whose result nothing uses. Only for a frozen vision tower (a trainable one
    needs no hook: its parameters carry the gradient)."""
    def output_requires_grad(module, inputs, output):
        output.requires_grad_(True)

    def enable_input_require_grads():
        for hook in getattr(model, "_require_grads_hooks", []):  # called again by each caller: one hook
            hook.remove()
        model._require_grads_hooks = [model.get_input_embeddings().register_forward_hook(output_requires_grad)]
        model._require_grads_hook = model._require_grads_hooks[0]  # what disable_input_require_grads removes

    model.enable_input_require_grads = enable_input_require_grads
