"""Assemble transformers' ``LlavaForConditionalGeneration`` from a separately pretrained LLM and
vision tower, load a stage 1 projector into it, and freeze all but ``stage.trainable``.

The LLM and vision tower modules are moved into the Llava skeleton (built on the meta
device), not copied, so assembly costs no second copy of the weights.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path

import torch

from llava_hydra.data.conversation import IMAGE_TOKEN
from llava_hydra.tiny import resolve

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
SELECT_STRATEGY = {"patch": "default", "cls_patch": "full"}
PROJECTOR_FILE = "mm_projector.safetensors"


def pick_dtype(name: str, bf16: bool, fp16: bool) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if bf16 else torch.float16 if fp16 else torch.float32
    if name not in DTYPES:
        raise ValueError(f"model.dtype must be auto or one of {sorted(DTYPES)}, got {name!r}")
    return DTYPES[name]


def pick_attention(name: str) -> str:
    """``auto``: flash_attention_2 when flash-attn is installed and a GPU is present, else sdpa."""
    if name != "auto":
        return name
    try:
        import flash_attn  # noqa: F401

        has_flash = True
    except ImportError:
        has_flash = False
    choice = "flash_attention_2" if has_flash and torch.cuda.is_available() else "sdpa"
    why = "flash-attn installed and a GPU present" if choice != "sdpa" else (
        "flash-attn not installed" if not has_flash else "no GPU")
    log.info("attention: %s (%s)", choice, why)
    return choice


def load_tokenizer(llm_path: str, model_max_length: int, trust_remote_code: bool = False):
    """The LLM's fast tokenizer with the image token added and a pad token guaranteed."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(llm_path, model_max_length=model_max_length, padding_side="right",
                                        trust_remote_code=trust_remote_code)
    if not tok.is_fast:
        raise ValueError(f"{llm_path}: a fast tokenizer is needed (labels come from character offsets)")
    if tok.pad_token is None:
        if tok.unk_token is not None:  # LLaVA's choice for Llama/Vicuna
            tok.pad_token = tok.unk_token
        else:
            tok.add_special_tokens({"pad_token": "<pad>"})
    if IMAGE_TOKEN not in tok.get_vocab():
        tok.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    return tok


def load_vision_tower(path: str, dtype: torch.dtype):
    from transformers import AutoConfig, CLIPVisionModel, SiglipVisionModel

    kind = AutoConfig.from_pretrained(path).model_type
    classes = {"clip": CLIPVisionModel, "clip_vision_model": CLIPVisionModel,
               "siglip": SiglipVisionModel, "siglip_vision_model": SiglipVisionModel}
    if kind not in classes:
        raise ValueError(f"{path}: vision tower type {kind!r} is not supported; supported: {sorted(classes)}")
    return classes[kind].from_pretrained(path, dtype=dtype)


def load_projector(model, path: str | Path, model_name: str = "<model>") -> None:
    """Load our ``mm_projector.safetensors`` or LLaVA's ``mm_projector.bin`` into the projector."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"stage 1 projector not found: {path}\n"
            f"  it is written by: python -m llava_hydra stage=pretrain model={model_name}\n"
            f"  or point stage.pretrain_mm_mlp_adapter at a projector file (ours or LLaVA's mm_projector.bin)")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        raw = load_file(str(path))
    else:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    llava_names = {"0": "linear_1", "2": "linear_2"}  # LLaVA's nn.Sequential(Linear, GELU, Linear)
    state = {}
    for key, value in raw.items():
        for marker in ("multi_modal_projector.", "mm_projector."):
            if marker in key:
                sub = key.split(marker, 1)[1]
                head, _, rest = sub.partition(".")
                state[f"{llava_names.get(head, head)}.{rest}"] = value
    projector = model.model.multi_modal_projector
    expected = projector.state_dict()
    if set(state) != set(expected):
        raise ValueError(f"{path}: projector keys {sorted(state)} do not match the model's {sorted(expected)}")
    for key, value in state.items():
        if value.shape != expected[key].shape:
            raise ValueError(f"{path}: {key} has shape {tuple(value.shape)}, the model expects "
                             f"{tuple(expected[key].shape)} (different LLM or vision tower?)")
    projector.load_state_dict(state)
    log.info("loaded projector weights from %s", path)


def projector_state(model) -> dict[str, torch.Tensor]:
    """The projector's weights under the Llava checkpoint's own key names."""
    return {f"multi_modal_projector.{k}": v.detach().cpu().contiguous()
            for k, v in model.model.multi_modal_projector.state_dict().items()}


def trainable_modules(model, parts: list[str]) -> list[torch.nn.Module]:
    """The modules that ``stage.trainable`` names (``llm`` is the decoder and its lm_head)."""
    inner = model.model
    table = {"mm_projector": [inner.multi_modal_projector], "llm": [inner.language_model, model.lm_head],
             "vision_tower": [inner.vision_tower]}
    unknown = set(parts) - set(table)
    if unknown:
        raise ValueError(f"stage.trainable has unknown part(s) {sorted(unknown)}; choose from {sorted(table)}")
    return [module for part in parts for module in table[part]]


def freeze_all_but(model, parts: list[str]) -> None:
    model.requires_grad_(False)
    for module in trainable_modules(model, parts):
        module.requires_grad_(True)


@contextmanager
def _zero3_init_paused():
    """Build the empty Llava skeleton (its parts are replaced at once) without transformers'
    ZeRO-3 weight init, which cannot run on the meta device; the real LLM and vision tower are
    still loaded partitioned. transformers exposes the switch only through this module global."""
    from transformers.integrations import deepspeed as hf_ds

    saved = hf_ds._hf_deepspeed_config_weak_ref
    hf_ds._hf_deepspeed_config_weak_ref = None
    try:
        yield
    finally:
        hf_ds._hf_deepspeed_config_weak_ref = saved


def build_model(cfg):
    """(model, tokenizer, image_processor) for the composed spec."""
    from transformers import AutoImageProcessor, AutoModelForCausalLM, LlavaConfig, LlavaForConditionalGeneration
    from transformers.models.llava.modeling_llava import LlavaMultiModalProjector

    m, cache = cfg.model, cfg.paths.cache_dir
    if m.mm_projector_type != "mlp2x_gelu":
        raise ValueError(f"model.mm_projector_type {m.mm_projector_type!r} is not supported; supported: mlp2x_gelu")
    if m.mm_vision_select_feature not in SELECT_STRATEGY:
        raise ValueError(f"model.mm_vision_select_feature must be one of {sorted(SELECT_STRATEGY)}")
    llm_path, vt_path = resolve(m.llm, cache), resolve(m.vision_tower, cache)
    dtype = pick_dtype(m.dtype, cfg.training.bf16, cfg.training.fp16)
    attn = pick_attention(m.attn_implementation)

    tokenizer = load_tokenizer(llm_path, m.model_max_length, m.trust_remote_code)
    llm = AutoModelForCausalLM.from_pretrained(llm_path, dtype=dtype, attn_implementation=attn,
                                               trust_remote_code=m.trust_remote_code)
    vision = load_vision_tower(vt_path, dtype)
    image_processor = AutoImageProcessor.from_pretrained(vt_path)

    vc = vision.config
    num_patches = (vc.image_size // vc.patch_size) ** 2
    config = LlavaConfig(
        vision_config=vc, text_config=llm.config,
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        image_seq_length=num_patches + (1 if m.mm_vision_select_feature == "cls_patch" else 0),
        vision_feature_layer=m.mm_vision_select_layer,
        vision_feature_select_strategy=SELECT_STRATEGY[m.mm_vision_select_feature],
        projector_hidden_act="gelu", multimodal_projector_bias=True,
        tie_word_embeddings=getattr(llm.config, "tie_word_embeddings", False),
    )
    config.text_config._attn_implementation = attn
    with torch.device("meta"), _zero3_init_paused():
        model = LlavaForConditionalGeneration(config)
    model.model.language_model = llm.model
    model.lm_head = llm.lm_head
    model.model.vision_tower = vision
    model.model.multi_modal_projector = LlavaMultiModalProjector(config).to(dtype)
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=True)
    model.config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id

    if cfg.stage.pretrain_mm_mlp_adapter:
        load_projector(model, cfg.stage.pretrain_mm_mlp_adapter, m.name)
    freeze_all_but(model, list(cfg.stage.trainable))
    if cfg.training.gradient_checkpointing:
        model.enable_input_require_grads()
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    n_all = sum(p.numel() for p in model.parameters())
    log.info("model: %s + %s, %d image tokens, dtype %s; trainable %s: %.2fM of %.2fM parameters",
             m.llm, m.vision_tower, config.image_seq_length, dtype, list(cfg.stage.trainable), n_train / 1e6, n_all / 1e6)
    return model, tokenizer, image_processor


def make_processor(tokenizer, image_processor, model):
    """The ``AutoProcessor`` saved beside a trained model, so it reloads Hugging Face-natively."""
    from transformers import LlavaProcessor

    return LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer,
                          patch_size=model.config.vision_config.patch_size,
                          vision_feature_select_strategy=model.config.vision_feature_select_strategy,
                          image_token=IMAGE_TOKEN, num_additional_image_tokens=1)
