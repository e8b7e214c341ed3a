"""The model a run trains, from the spec: the base (``model.assemble``), the stage 1
projector loaded into it, then exactly ``stage.trainable`` made to learn, fully or through
LoRA adapters on the LLM (``lora.enable``), in the precision the spec asks for."""

from __future__ import annotations

import logging

from llava_hydra.model.assemble import build_base, set_special_token_ids
from llava_hydra.model.freezing import freeze_all_but, hook_input_grads_on_text_only
from llava_hydra.model.llava import projector_type, trainable_modules
from llava_hydra.model.lora import apply_lora, lora_base_name
from llava_hydra.model.placeholder import run_tower_on_text_only
from llava_hydra.model.precision import fp32_masters, hold_trainable_in_fp32, part_dtypes, pick_attention, pick_dtype
from llava_hydra.model.projector import load_projector
from llava_hydra.model.zero3 import full_numel, zero3_enabled
from llava_hydra.config.validate import check_choice

log = logging.getLogger(__name__)


def build_model(cfg):
    """(model, tokenizer, image_processor) for the composed spec. With ``lora.enable`` the model
    is a PEFT model: LoRA on the LLM's linear layers, the other trainable parts trained whole."""
    m = cfg.model
    for key in ("mm_projector_type", "mm_vision_select_feature"):  # before anything loads
        check_choice(f"model.{key}", m[key])
    dtype = pick_dtype(m.dtype, cfg.training.bf16, cfg.training.fp16)
    attn = pick_attention(m.attn_implementation)
    if cfg.lora.enable and cfg.lora.bits < 16 and zero3_enabled():
        raise ValueError(f"lora.bits={cfg.lora.bits} cannot be partitioned by ZeRO-3: use deepspeed=zero2 "
                         f"(LLaVA's QLoRA recipe) or deepspeed=none")

    model, tokenizer, image_processor = build_base(cfg, dtype, attn)
    set_special_token_ids(model, tokenizer)

    if cfg.stage.pretrain_mm_mlp_adapter:
        load_projector(model, cfg.stage.pretrain_mm_mlp_adapter, m.name)
    parts = list(cfg.stage.trainable)
    trainable_modules(model, parts)  # rejects an unknown part by name
    if "vision_tower" not in parts:
        hook_input_grads_on_text_only(model)
    if cfg.lora.enable:
        model = apply_lora(model, cfg.lora, parts, cfg.training.gradient_checkpointing, lora_base_name(cfg))
    else:
        freeze_all_but(model, parts)
        if cfg.training.gradient_checkpointing:
            model.enable_input_require_grads()
    if fp32_masters(cfg, dtype):
        hold_trainable_in_fp32(model)
    run_tower_on_text_only(model)  # every rank runs the same collectives, images or not (model.placeholder)
    n_train = sum(full_numel(p) for p in model.parameters() if p.requires_grad)
    n_all = sum(full_numel(p) for p in model.parameters())
    source = m.pretrained_llava if getattr(m, "pretrained_llava", None) else f"{m.llm} + {m.vision_tower}"
    log.info("model: %s, %s projector, %d image tokens, dtype %s%s; trainable %s%s: %.2fM of %.2fM parameters",
             source, projector_type(model.config), model.config.image_seq_length, dtype,
             f", {cfg.lora.bits}-bit LLM" if cfg.lora.enable and cfg.lora.bits < 16 else "", parts,
             " (llm through LoRA)" if cfg.lora.enable else "", n_train / 1e6, n_all / 1e6)
    log.info("dtypes: %s", "; ".join(f"{part} {', '.join(sorted(kinds))}" for part, kinds in part_dtypes(model).items()))
    return model, tokenizer, image_processor
