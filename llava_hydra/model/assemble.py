"""The base model before any training choice: transformers' ``LlavaForConditionalGeneration``
(or, by ``model.family``, ``LlavaNextForConditionalGeneration`` / ``LlavaOnevisionForConditionalGeneration``),
either assembled from a separately pretrained LLM and vision tower (``model.llm``,
``model.vision_tower``) with a new projector, or loaded whole from an already-assembled LLaVA
checkpoint (``model.pretrained_llava``). Each returns (model, tokenizer, image_processor).

Assembly moves the LLM and vision tower modules into a Llava skeleton built on the meta
device, so it costs no second copy of the weights; under ZeRO-3 they arrive partitioned
from ``from_pretrained`` and the new projector is created partitioned too. With ``lora.bits``
4 or 8 the LLM alone is loaded quantized (bitsandbytes); vision tower and projector never are.
"""

from __future__ import annotations

import logging
import math

import torch

from llava_hydra.data.conversation import IMAGE_TOKEN
from llava_hydra.data.image_tokens import has_cls_token, image_token_count, select_feature, select_strategy
from llava_hydra.data.tokenizer import finish_tokenizer, load_tokenizer
from llava_hydra.config.families import pinpoints_for
from llava_hydra.data.anyres import family_image_processor
from llava_hydra.model.families import config_class, family_of, family_of_config, model_class
from llava_hydra.model.llava import PROJECTOR_ACT, projector_type
from llava_hydra.model.projector import init_projector
from llava_hydra.model.zero3 import full_shape, gathered, partitioned_init, zero3_init_paused
from llava_hydra.data.tiny import pretrained_path

log = logging.getLogger(__name__)


def load_vision_tower(path: str, dtype: torch.dtype):
    from transformers import AutoConfig, CLIPVisionModel, SiglipVisionModel

    kind = AutoConfig.from_pretrained(path).model_type
    classes = {"clip": CLIPVisionModel, "clip_vision_model": CLIPVisionModel,
               "siglip": SiglipVisionModel, "siglip_vision_model": SiglipVisionModel}
    if kind not in classes:
        raise ValueError(f"{path}: vision tower type {kind!r} is not supported; supported: {sorted(classes)}")
    return classes[kind].from_pretrained(path, dtype=dtype)


def quantization_config(lora, dtype: torch.dtype, skip: list[str]):
    """bitsandbytes settings for ``lora.bits`` 4 (QLoRA: NF4, double quant) or 8; None for 16.
    ``skip`` names the modules left unquantized, by full path."""
    if lora.bits == 16:
        return None
    if lora.bits not in (4, 8):
        raise ValueError(f"lora.bits must be 16, 8 or 4, got {lora.bits}")
    if not lora.enable:
        raise ValueError(f"lora.bits={lora.bits} quantizes the frozen LLM and needs LoRA adapters to train: "
                         f"set lora.enable=true (or use lora=qlora)")
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=lora.bits == 4, load_in_8bit=lora.bits == 8,
                              bnb_4bit_quant_type=lora.quant_type, bnb_4bit_use_double_quant=lora.double_quant,
                              bnb_4bit_compute_dtype=dtype, llm_int8_skip_modules=skip)


def resize_embeddings(model, size: int) -> None:
    """Grow the vocabulary to ``size``; new rows (image and pad tokens) are the mean of the old
    ones, deterministically, so a rebuilt base (resume, merge) has identical new rows
    (transformers' ``mean_resizing`` samples around the mean: not reproducible)."""
    old = full_shape(model.get_input_embeddings().weight)[0]
    if size <= old:
        return
    model.resize_token_embeddings(size, mean_resizing=False)
    tables = [model.get_input_embeddings().weight]
    if model.get_output_embeddings() is not None and model.get_output_embeddings().weight is not tables[0]:
        tables.append(model.get_output_embeddings().weight)
    with gathered(tables, modify=True), torch.no_grad():
        for table in tables:
            if table.numel():
                table[old:] = table[:old].mean(dim=0, keepdim=True).to(table.dtype)


def assemble(cfg, dtype: torch.dtype, attn: str):
    """(model, tokenizer, image_processor) from ``model.llm`` + ``model.vision_tower`` + a new projector
    (and, for an AnyRes family, a new row-newline embedding), as ``model.family``'s transformers class."""
    from transformers import AutoImageProcessor, AutoModelForCausalLM

    m, cache = cfg.model, cfg.paths.cache_dir
    family = family_of(cfg)
    llm_path, vt_path = pretrained_path(m.llm, cache), pretrained_path(m.vision_tower, cache)
    quant = quantization_config(cfg.lora, dtype, skip=["lm_head"])  # the LLM alone; tower + projector never quantized

    tokenizer = load_tokenizer(llm_path, m.model_max_length, m.trust_remote_code)
    llm = AutoModelForCausalLM.from_pretrained(llm_path, dtype=dtype, attn_implementation=attn,
                                               quantization_config=quant, trust_remote_code=m.trust_remote_code)
    vision = load_vision_tower(vt_path, dtype)
    image_processor = AutoImageProcessor.from_pretrained(vt_path)

    vc = vision.config
    strategy = select_strategy(m.mm_vision_select_feature, has_cls_token(vc))
    extra = {}
    if family != "llava":  # AnyRes: the grid's pinpoints, the family's image processor around the tower's
        extra["image_grid_pinpoints"] = pinpoints_for(family, m.get("image_grid_pinpoints"), vc.image_size)
        if family == "llava_onevision":
            extra["vision_aspect_ratio"] = cfg.data.image_aspect_ratio
            # LlavaOnevisionProcessor counts its video token in every prompt: it must be a token of its own
            # (else it is the unk id, and padding a batch trips the processor's count), as in llava-hf's models
            tokenizer.add_tokens(["<video>"], special_tokens=True)
            extra["video_token_index"] = tokenizer.convert_tokens_to_ids("<video>")
        image_processor = family_image_processor(family, image_processor, vc, extra["image_grid_pinpoints"])
    config = config_class(family)(
        vision_config=vc, text_config=llm.config,
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        image_seq_length=image_token_count(vc, strategy),
        vision_feature_layer=m.mm_vision_select_layer,
        vision_feature_select_strategy=strategy,
        projector_hidden_act=PROJECTOR_ACT[m.mm_projector_type], multimodal_projector_bias=True,
        tie_word_embeddings=getattr(llm.config, "tie_word_embeddings", False),
        mm_projector_type=m.mm_projector_type, **extra,
    )
    config.text_config._attn_implementation = attn
    zero3_config = []  # ZeRO-3's switch, set again after the skeleton: it lives as long as the model
    with torch.device("meta"), zero3_init_paused(zero3_config):
        model = model_class(family)(config)
    projector_cls = type(model.model.multi_modal_projector)
    model._zero3_config = zero3_config
    model.model.language_model = llm.model
    model.lm_head = llm.lm_head
    model.model.vision_tower = vision
    with partitioned_init():
        model.model.multi_modal_projector = projector_cls(config).to(dtype)
    init_projector(model.model.multi_modal_projector, m.mm_projector_type)
    if hasattr(model.model, "image_newline"):  # LLaVA-NeXT's init: randn / sqrt(hidden size)
        # from a fixed seed: under LoRA it stays frozen (not in the adapter), and the base that merge / eval
        # rebuild must hold the newline training saw
        hidden, fixed = config.text_config.hidden_size, torch.Generator().manual_seed(0)
        newline = torch.randn(hidden, generator=fixed) / math.sqrt(hidden)
        model.model.image_newline = torch.nn.Parameter(newline.to(dtype))
    if quant is not None:  # what PEFT and Trainer look at to treat the model as k-bit
        model.hf_quantizer = llm.hf_quantizer
        model.is_loaded_in_4bit, model.is_loaded_in_8bit = cfg.lora.bits == 4, cfg.lora.bits == 8
        model.quantization_method = llm.quantization_method
    resize_embeddings(model, len(tokenizer))
    return model, tokenizer, image_processor


def load_pretrained_llava(cfg, dtype: torch.dtype, attn: str):
    """(model, tokenizer, image_processor) from an already-assembled Hugging Face LLaVA checkpoint."""
    from transformers import AutoConfig, AutoProcessor

    m = cfg.model
    path = pretrained_path(m.pretrained_llava, cfg.paths.cache_dir)
    quant = quantization_config(cfg.lora, dtype,  # transformers 5 wants full module paths here
                                skip=["model.vision_tower", "model.multi_modal_projector", "lm_head"])
    family = family_of_config(AutoConfig.from_pretrained(path, trust_remote_code=m.trust_remote_code))
    if family == "llava_onevision":  # its AutoProcessor needs torchvision (model/onevision_processor.py)
        from llava_hydra.model.onevision_processor import load_parts

        processor = load_parts(path, m.trust_remote_code)
    else:
        processor = AutoProcessor.from_pretrained(path, trust_remote_code=m.trust_remote_code)
    tokenizer = finish_tokenizer(processor.tokenizer, path, m.model_max_length)
    model = model_class(family).from_pretrained(path, dtype=dtype, attn_implementation=attn,
                                                          quantization_config=quant,
                                                          trust_remote_code=m.trust_remote_code)
    if model.config.image_token_index != tokenizer.convert_tokens_to_ids(IMAGE_TOKEN):
        raise ValueError(f"{path}: config.image_token_index {model.config.image_token_index} is not the "
                         f"tokenizer's {IMAGE_TOKEN} id {tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)}")
    spec = {"mm_projector_type": m.mm_projector_type, "mm_vision_select_layer": m.mm_vision_select_layer,
            "mm_vision_select_feature": m.mm_vision_select_feature}
    found = {"mm_projector_type": projector_type(model.config),
             "mm_vision_select_layer": model.config.vision_feature_layer,
             "mm_vision_select_feature": select_feature(model.config.vision_feature_select_strategy,
                                                        has_cls_token(model.config.vision_config))}
    for key in spec:
        if spec[key] != found[key]:
            log.warning("model.%s=%s, but %s was built with %s: the checkpoint's value is used",
                        key, spec[key], path, found[key])
    model.config.mm_projector_type = found["mm_projector_type"]
    resize_embeddings(model, len(tokenizer))
    return model, tokenizer, processor.image_processor


def build_base(cfg, dtype: torch.dtype, attn: str):
    """The base the spec names: a whole LLaVA checkpoint (``model.pretrained_llava``) or the parts."""
    build = load_pretrained_llava if cfg.model.get("pretrained_llava") else assemble
    return build(cfg, dtype, attn)


def set_special_token_ids(model, tokenizer) -> None:
    """pad / eos / bos of the tokenizer into the model's config and generation config."""
    model.config.pad_token_id = tokenizer.pad_token_id
    for key in ("pad_token_id", "eos_token_id", "bos_token_id"):
        setattr(model.generation_config, key, getattr(tokenizer, key))
