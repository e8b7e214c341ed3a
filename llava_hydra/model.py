"""Build the model a run trains: transformers' ``LlavaForConditionalGeneration``, either
assembled from a separately pretrained LLM and vision tower (``model.llm``,
``model.vision_tower``) or loaded whole from an already-assembled LLaVA checkpoint
(``model.pretrained_llava``); then load a stage 1 projector into it and make exactly
``stage.trainable`` learn (fully, or through LoRA adapters when ``lora.enable``).

Assembly moves the LLM and vision tower modules into a Llava skeleton built on the meta
device, so it costs no second copy of the weights; under ZeRO-3 they arrive partitioned
from ``from_pretrained`` and the new projector is created partitioned too.

Projectors (``model.mm_projector_type``), both transformers' own ``LlavaMultiModalProjector``
so a checkpoint reloads with ``from_pretrained`` alone:

- ``mlp2x_gelu`` (LLaVA-1.5): linear_1 -> GELU -> linear_2.
- ``linear`` (LLaVA v1): linear_1 alone; linear_2 is a frozen identity behind an identity
  activation (``projector_hidden_act: linear``), so forward, gradients and the trained
  weights are those of one Linear layer. The type is recorded in the saved config
  (``mm_projector_type``).
"""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path

import torch

from llava_hydra.data.conversation import IMAGE_TOKEN
from llava_hydra.tiny import resolve

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
SELECT_FEATURES = ("patch", "cls_patch")
PROJECTOR_ACT = {"mlp2x_gelu": "gelu", "linear": "linear"}  # mm_projector_type -> projector_hidden_act
PROJECTOR_FILE = "mm_projector.safetensors"


def pick_dtype(name: str, bf16: bool, fp16: bool) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if bf16 else torch.float16 if fp16 else torch.float32
    if name not in DTYPES:
        raise ValueError(f"model.dtype must be auto or one of {sorted(DTYPES)}, got {name!r}")
    return DTYPES[name]


def has_cls_token(vision_config) -> bool:
    """CLIP's tower prepends a CLS token to its patch features; SigLIP's has none."""
    return vision_config.model_type.startswith("clip")


def select_strategy(feature: str, has_cls: bool) -> str:
    """transformers' ``vision_feature_select_strategy`` for LLaVA's ``mm_vision_select_feature``:
    ``default`` drops the first token (CLS), ``full`` keeps all. ``patch`` on a tower without a
    CLS token (SigLIP) keeps all its tokens, which are all patches."""
    if feature not in SELECT_FEATURES:
        raise ValueError(f"model.mm_vision_select_feature must be one of {list(SELECT_FEATURES)}, got {feature!r}")
    if feature == "cls_patch" and not has_cls:
        raise ValueError("model.mm_vision_select_feature=cls_patch: this vision tower (SigLIP) has no CLS token; "
                         "use patch")
    return "default" if feature == "patch" and has_cls else "full"


def select_feature(strategy: str, has_cls: bool) -> str:
    """The inverse of ``select_strategy``: the mm_vision_select_feature a Llava config describes."""
    return "cls_patch" if strategy == "full" and has_cls else "patch"


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


# -- ZeRO-3 helpers: no-ops without DeepSpeed ------------------------------------------------

def _zero3_enabled() -> bool:
    try:
        from transformers.integrations import is_deepspeed_zero3_enabled
    except ImportError:  # pragma: no cover
        return False
    return is_deepspeed_zero3_enabled()


def _partitioned_init():
    """Create new modules already partitioned when ZeRO-3 is on (no full copy per rank)."""
    if not _zero3_enabled():
        return contextlib.nullcontext()
    import deepspeed
    from transformers.integrations.deepspeed import deepspeed_config

    return deepspeed.zero.Init(config_dict_or_path=deepspeed_config())


@contextlib.contextmanager
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


def _gathered(params, modify: bool):
    """Full tensors of ZeRO-3-partitioned ``params`` inside the block; edits made on rank 0 are
    scattered back when ``modify``. A no-op for ordinary parameters."""
    params = [p for p in params if hasattr(p, "ds_id")]
    if not params:
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(params, modifier_rank=0 if modify else None)


# -- parts -------------------------------------------------------------------------------------

def _finish_tokenizer(tok, source: str, model_max_length: int):
    """Right padding, the spec's length, a pad token and the image token."""
    if not tok.is_fast:
        raise ValueError(f"{source}: a fast tokenizer is needed (labels come from character offsets)")
    tok.padding_side = "right"
    tok.model_max_length = model_max_length
    if tok.pad_token is None:
        if tok.unk_token is not None:  # LLaVA's choice for Llama/Vicuna
            tok.pad_token = tok.unk_token
        else:  # Llama 3 has neither pad nor unk
            tok.add_special_tokens({"pad_token": "<pad>"})
    if IMAGE_TOKEN not in tok.get_vocab():
        tok.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    if isinstance(getattr(tok, "legacy", None), bool):  # transformers 5 drops it on save; a reload would
        tok.init_kwargs["legacy"] = tok.legacy          # then tokenize text after special tokens differently
    return tok


def load_tokenizer(llm_path: str, model_max_length: int, trust_remote_code: bool = False):
    """The LLM's fast tokenizer with the image token added and a pad token guaranteed."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(llm_path, model_max_length=model_max_length, padding_side="right",
                                        trust_remote_code=trust_remote_code)
    return _finish_tokenizer(tok, llm_path, model_max_length)


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


def projector_type(config) -> str:
    """The projector type a Llava config describes (ours record it; others: from the activation)."""
    recorded = getattr(config, "mm_projector_type", None)
    if recorded:
        return recorded
    return "linear" if getattr(config, "projector_hidden_act", "gelu") == "linear" else "mlp2x_gelu"


def _init_projector(projector, kind: str) -> None:
    if kind != "linear":
        return
    with _gathered(projector.linear_2.parameters(), modify=True), torch.no_grad():
        weight = projector.linear_2.weight
        if weight.numel():  # on the rank that holds the full tensor
            weight.copy_(torch.eye(weight.shape[0], weight.shape[1], dtype=weight.dtype, device=weight.device))
            projector.linear_2.bias.zero_()


def _resize_embeddings(model, size: int) -> None:
    """Grow the vocabulary to ``size``; new rows (image and pad tokens) are the mean of the old
    ones, deterministically, so a rebuilt base (resume, merge) has identical new rows."""
    old = model.get_input_embeddings().weight.shape[0]
    if hasattr(model.get_input_embeddings().weight, "ds_id"):
        old = model.get_input_embeddings().weight.ds_shape[0]
    if size <= old:
        return
    model.resize_token_embeddings(size, mean_resizing=False)
    tables = [model.get_input_embeddings().weight]
    if model.get_output_embeddings() is not None and model.get_output_embeddings().weight is not tables[0]:
        tables.append(model.get_output_embeddings().weight)
    with _gathered(tables, modify=True), torch.no_grad():
        for table in tables:
            if table.numel():
                table[old:] = table[:old].mean(dim=0, keepdim=True).to(table.dtype)


def assemble(cfg, dtype: torch.dtype, attn: str):
    """(model, tokenizer, image_processor) from ``model.llm`` + ``model.vision_tower`` + a new projector."""
    from transformers import AutoImageProcessor, AutoModelForCausalLM, LlavaConfig, LlavaForConditionalGeneration
    from transformers.models.llava.modeling_llava import LlavaMultiModalProjector

    m, cache = cfg.model, cfg.paths.cache_dir
    llm_path, vt_path = resolve(m.llm, cache), resolve(m.vision_tower, cache)
    quant = quantization_config(cfg.lora, dtype, skip=["lm_head"])  # the LLM alone; tower + projector never quantized

    tokenizer = load_tokenizer(llm_path, m.model_max_length, m.trust_remote_code)
    llm = AutoModelForCausalLM.from_pretrained(llm_path, dtype=dtype, attn_implementation=attn,
                                               quantization_config=quant, trust_remote_code=m.trust_remote_code)
    vision = load_vision_tower(vt_path, dtype)
    image_processor = AutoImageProcessor.from_pretrained(vt_path)

    vc = vision.config
    num_patches = (vc.image_size // vc.patch_size) ** 2
    strategy = select_strategy(m.mm_vision_select_feature, has_cls_token(vc))
    config = LlavaConfig(
        vision_config=vc, text_config=llm.config,
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        image_seq_length=num_patches + (1 if has_cls_token(vc) and strategy == "full" else 0),
        vision_feature_layer=m.mm_vision_select_layer,
        vision_feature_select_strategy=strategy,
        projector_hidden_act=PROJECTOR_ACT[m.mm_projector_type], multimodal_projector_bias=True,
        tie_word_embeddings=getattr(llm.config, "tie_word_embeddings", False),
        mm_projector_type=m.mm_projector_type,
    )
    config.text_config._attn_implementation = attn
    with torch.device("meta"), _zero3_init_paused():
        model = LlavaForConditionalGeneration(config)
    model.model.language_model = llm.model
    model.lm_head = llm.lm_head
    model.model.vision_tower = vision
    with _partitioned_init():
        model.model.multi_modal_projector = LlavaMultiModalProjector(config).to(dtype)
    _init_projector(model.model.multi_modal_projector, m.mm_projector_type)
    if quant is not None:  # what PEFT and Trainer look at to treat the model as k-bit
        model.hf_quantizer = llm.hf_quantizer
        model.is_loaded_in_4bit, model.is_loaded_in_8bit = cfg.lora.bits == 4, cfg.lora.bits == 8
        model.quantization_method = llm.quantization_method
    _resize_embeddings(model, len(tokenizer))
    return model, tokenizer, image_processor


def load_pretrained_llava(cfg, dtype: torch.dtype, attn: str):
    """(model, tokenizer, image_processor) from an already-assembled Hugging Face LLaVA checkpoint."""
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    m = cfg.model
    path = resolve(m.pretrained_llava, cfg.paths.cache_dir)
    quant = quantization_config(cfg.lora, dtype,  # transformers 5 wants full module paths here
                                skip=["model.vision_tower", "model.multi_modal_projector", "lm_head"])
    processor = AutoProcessor.from_pretrained(path, trust_remote_code=m.trust_remote_code)
    tokenizer = _finish_tokenizer(processor.tokenizer, path, m.model_max_length)
    model = LlavaForConditionalGeneration.from_pretrained(path, dtype=dtype, attn_implementation=attn,
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
    _resize_embeddings(model, len(tokenizer))
    return model, tokenizer, processor.image_processor


# -- projector files ---------------------------------------------------------------------------

LLAVA_MLP_NAMES = {"0": "linear_1", "2": "linear_2"}  # LLaVA's nn.Sequential(Linear, GELU, Linear)


def _read_projector_file(path: Path) -> tuple[dict[str, torch.Tensor], str | None]:
    """(state under linear_1/linear_2 names, the projector type the file holds, if it says)."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        raw = load_file(str(path))
    else:  # LLaVA's mm_projector.bin: a pickle, so never unpickled beyond tensors
        raw = torch.load(path, map_location="cpu", weights_only=True)
    state, kind = {}, None
    for key, value in raw.items():
        if "multi_modal_projector." in key:  # ours
            state[key.split("multi_modal_projector.", 1)[1]] = value
        elif "mm_projector." in key:  # LLaVA's
            sub = key.split("mm_projector.", 1)[1]
            head, _, rest = sub.partition(".")
            if head in ("weight", "bias") and not rest:  # LLaVA v1's single nn.Linear
                kind = "linear"
                state[f"linear_1.{head}"] = value
            else:
                kind = "mlp2x_gelu" if head in LLAVA_MLP_NAMES else kind
                state[f"{LLAVA_MLP_NAMES.get(head, head)}.{rest}"] = value
    if kind is None:  # ours: the config.json written beside it records the type
        config = path.parent / "config.json"
        if config.exists():
            kind = json.loads(config.read_text()).get("mm_projector_type")
    return state, kind


def load_projector(model, path: str | Path, model_name: str = "<model>") -> None:
    """Load our ``mm_projector.safetensors`` or LLaVA's ``mm_projector.bin`` (keys
    ``model.mm_projector.0.weight`` ... for mlp2x_gelu, ``model.mm_projector.weight`` for
    linear) into the projector. A type or shape mismatch is an error naming both."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"stage 1 projector not found: {path}\n"
            f"  it is written by: python -m llava_hydra stage=pretrain model={model_name}\n"
            f"  or point stage.pretrain_mm_mlp_adapter at a projector file (ours or LLaVA's mm_projector.bin)")
    state, found_kind = _read_projector_file(path)
    core = llava_core(model)
    projector = core.multi_modal_projector
    expected_kind = projector_type(core.config)
    if found_kind is not None and found_kind != expected_kind:
        raise ValueError(f"{path}: holds a {found_kind} projector, the model expects {expected_kind} "
                         f"(set model.mm_projector_type={found_kind} or use a {expected_kind} projector file)")
    with _gathered(projector.parameters(), modify=True):
        expected = {k: v.shape for k, v in projector.state_dict().items()}
        if hasattr(projector.linear_1.weight, "ds_id"):
            expected = {n: p.ds_shape for n, p in projector.named_parameters()}
        if expected_kind == "linear" and set(state) == {"linear_1.weight", "linear_1.bias"}:
            sample = projector.linear_2.weight
            state["linear_2.weight"] = torch.eye(*expected["linear_2.weight"], dtype=sample.dtype)
            state["linear_2.bias"] = torch.zeros(expected["linear_2.bias"], dtype=sample.dtype)
        if set(state) != set(expected):
            raise ValueError(f"{path}: projector keys {sorted(state)} do not match the model's {sorted(expected)} "
                             f"(model.mm_projector_type={expected_kind})")
        for key, value in state.items():
            if tuple(value.shape) != tuple(expected[key]):
                raise ValueError(f"{path}: {key} has shape {tuple(value.shape)}, the model expects "
                                 f"{tuple(expected[key])} (different LLM or vision tower?)")
        if projector.linear_1.weight.numel():
            projector.load_state_dict(state)
    log.info("loaded %s projector weights from %s", expected_kind, path)


def llava_core(model):
    """The LlavaModel inside ``model`` (plain, PEFT-wrapped or not)."""
    from transformers.models.llava.modeling_llava import LlavaModel

    for module in model.modules():
        if isinstance(module, LlavaModel):
            return module
    raise TypeError(f"{type(model).__name__} contains no LlavaModel")


def projector_state(model) -> dict[str, torch.Tensor]:
    """The projector's weights under the Llava checkpoint's own key names."""
    return {f"multi_modal_projector.{k}": v.detach().cpu().contiguous()
            for k, v in model.model.multi_modal_projector.state_dict().items()}


# -- what trains -------------------------------------------------------------------------------

def full_numel(p: torch.nn.Parameter) -> int:
    """Elements of a parameter, also under ZeRO-3 (whose partitioned parameters have numel() 0)."""
    return getattr(p, "ds_numel", p.numel())


def trainable_modules(model, parts: list[str]) -> list[torch.nn.Module]:
    """The modules that ``stage.trainable`` names (``llm`` is the decoder and its lm_head)."""
    inner = model.model
    table = {"mm_projector": [inner.multi_modal_projector], "llm": [inner.language_model, model.lm_head],
             "vision_tower": [inner.vision_tower]}
    unknown = set(parts) - set(table)
    if unknown:
        raise ValueError(f"stage.trainable has unknown part(s) {sorted(unknown)}; choose from {sorted(table)}")
    return [module for part in parts for module in table[part]]


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
    config = llava_core(model).config
    fixed = unused_vision_layers(config)
    if projector_type(config) == "linear":
        fixed.append("multi_modal_projector.linear_2.")
    for name, p in model.named_parameters():
        if any(part in name for part in fixed):
            p.requires_grad_(False)


def input_grads_from_text_only(model) -> None:
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


def freeze_all_but(model, parts: list[str]) -> None:
    model.requires_grad_(False)
    for module in trainable_modules(model, parts):
        module.requires_grad_(True)
    freeze_fixed_parts(model)


# -- precision ---------------------------------------------------------------------------------

def fp32_masters(cfg, dtype: torch.dtype) -> bool:
    """Whether the trainable parameters must be held in fp32 here: the Trainer computes in
    bf16/fp16 through autocast (``training.bf16`` / ``fp16``), and no engine keeps fp32 master
    weights (DeepSpeed does: its bf16/fp16 modes hold fp32 copies of a half-precision model)."""
    return (cfg.training.bf16 or cfg.training.fp16) and cfg.deepspeed is None and dtype != torch.float32


def hold_trainable_in_fp32(model) -> None:
    """Trainable parameters to fp32 (updates smaller than a bf16 ulp are kept); frozen parts
    stay in the compute dtype they were loaded in."""
    for p in model.parameters():
        if p.requires_grad and p.is_floating_point() and p.dtype != torch.float32:
            p.data = p.data.float()


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


def part_dtypes(model) -> dict[str, set[str]]:
    """Part -> {"<dtype> trained" | "<dtype> frozen"} over its parameters (a 4-bit LLM body's
    packed weights show as uint8)."""
    out: dict[str, set[str]] = {}
    for name, p in model.named_parameters():
        dtype = str(p.dtype).removeprefix("torch.")
        out.setdefault(part_of(name), set()).add(f"{dtype} {'trained' if p.requires_grad else 'frozen'}")
    return out


def build_model(cfg):
    """(model, tokenizer, image_processor) for the composed spec. With ``lora.enable`` the model
    is a PEFT model: LoRA on the LLM's linear layers, the other trainable parts trained whole."""
    m = cfg.model
    if m.mm_projector_type not in PROJECTOR_ACT:
        raise ValueError(f"model.mm_projector_type {m.mm_projector_type!r} is not supported; "
                         f"supported: {sorted(PROJECTOR_ACT)}")
    if m.mm_vision_select_feature not in SELECT_FEATURES:
        raise ValueError(f"model.mm_vision_select_feature must be one of {list(SELECT_FEATURES)}")
    dtype = pick_dtype(m.dtype, cfg.training.bf16, cfg.training.fp16)
    attn = pick_attention(m.attn_implementation)
    if cfg.lora.enable and cfg.lora.bits < 16 and _zero3_enabled():
        raise ValueError(f"lora.bits={cfg.lora.bits} cannot be partitioned by ZeRO-3: use deepspeed=zero2 "
                         f"(LLaVA's QLoRA recipe) or deepspeed=none")

    build = load_pretrained_llava if getattr(m, "pretrained_llava", None) else assemble
    model, tokenizer, image_processor = build(cfg, dtype, attn)
    model.config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id

    if cfg.stage.pretrain_mm_mlp_adapter:
        load_projector(model, cfg.stage.pretrain_mm_mlp_adapter, m.name)
    parts = list(cfg.stage.trainable)
    trainable_modules(model, parts)  # rejects an unknown part by name
    if "vision_tower" not in parts:
        input_grads_from_text_only(model)
    if cfg.lora.enable:
        from llava_hydra.lora import apply_lora

        model = apply_lora(model, cfg.lora, parts, cfg.training.gradient_checkpointing)
    else:
        freeze_all_but(model, parts)
        if cfg.training.gradient_checkpointing:
            model.enable_input_require_grads()
    if fp32_masters(cfg, dtype):
        hold_trainable_in_fp32(model)
    n_train = sum(full_numel(p) for p in model.parameters() if p.requires_grad)
    n_all = sum(full_numel(p) for p in model.parameters())
    source = m.pretrained_llava if getattr(m, "pretrained_llava", None) else f"{m.llm} + {m.vision_tower}"
    log.info("model: %s, %s projector, %d image tokens, dtype %s%s; trainable %s%s: %.2fM of %.2fM parameters",
             source, projector_type(model.config), model.config.image_seq_length, dtype,
             f", {cfg.lora.bits}-bit LLM" if cfg.lora.enable and cfg.lora.bits < 16 else "", parts,
             " (llm through LoRA)" if cfg.lora.enable else "", n_train / 1e6, n_all / 1e6)
    log.info("dtypes: %s", "; ".join(f"{part} {', '.join(sorted(kinds))}" for part, kinds in part_dtypes(model).items()))
    return model, tokenizer, image_processor


def make_processor(tokenizer, image_processor, model, template: str | None = None):
    """The ``AutoProcessor`` saved beside a trained model, so it reloads Hugging Face-natively,
    carrying the chat template of the training ``template`` (data/chat_template.py; a
    ``chat_template`` tokenizer keeps its own)."""
    import copy

    from transformers import LlavaProcessor

    from llava_hydra.data.chat_template import chat_template_for

    chat_template = chat_template_for(template, tokenizer) if template else None
    if chat_template:
        tokenizer = copy.deepcopy(tokenizer)  # the run's own tokenizer is left as it was
        tokenizer.chat_template = chat_template
    config = model.config
    return LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer,
                          chat_template=getattr(tokenizer, "chat_template", None),
                          patch_size=config.vision_config.patch_size,
                          vision_feature_select_strategy=config.vision_feature_select_strategy,
                          image_token=IMAGE_TOKEN,
                          num_additional_image_tokens=1 if has_cls_token(config.vision_config) else 0)
