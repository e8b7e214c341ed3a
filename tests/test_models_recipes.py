"""Every model= and experiment= option composes; each names its hub ids (replaceable by local
paths) and template; each experiment= preset equals the flags of its LLaVA-1.5 script."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

CONF = Path(__file__).parents[1] / "conf"
MODELS = {  # name: (llm, vision tower, stage 2 template, projector)
    "tiny": ("builtin://tiny-llama", "builtin://tiny-clip", "v1", "mlp2x_gelu"),
    "tiny_next": ("builtin://tiny-llama", "builtin://tiny-clip", "v1", "mlp2x_gelu"),
    "vicuna7b": ("lmsys/vicuna-7b-v1.5", "openai/clip-vit-large-patch14-336", "v1", "mlp2x_gelu"),
    "vicuna13b": ("lmsys/vicuna-13b-v1.5", "openai/clip-vit-large-patch14-336", "v1", "mlp2x_gelu"),
    "vicuna7b_v1_linear": ("lmsys/vicuna-7b-v1.5", "openai/clip-vit-large-patch14", "v1", "linear"),
    "llama2_7b_chat": ("meta-llama/Llama-2-7b-chat-hf", "openai/clip-vit-large-patch14-336", "llama_2", "mlp2x_gelu"),
    "llama3_8b_instruct": ("meta-llama/Meta-Llama-3-8B-Instruct", "openai/clip-vit-large-patch14-336",
                           "chat_template", "mlp2x_gelu"),
    "qwen2_7b_instruct": ("Qwen/Qwen2-7B-Instruct", "openai/clip-vit-large-patch14-336", "chat_template", "mlp2x_gelu"),
    # AnyRes families (their recipes and presets: test_onevision_presets.py)
    "tiny_onevision": ("builtin://tiny-qwen2", "builtin://tiny-siglip", "qwen_1_5", "mlp2x_gelu"),
    "llava_next_vicuna7b": ("lmsys/vicuna-7b-v1.5", "openai/clip-vit-large-patch14-336", "v1", "mlp2x_gelu"),
    "llava_next_vicuna13b": ("lmsys/vicuna-13b-v1.5", "openai/clip-vit-large-patch14-336", "v1", "mlp2x_gelu"),
    "llava_next_qwen2_7b": ("Qwen/Qwen2-7B-Instruct", "openai/clip-vit-large-patch14-336", "qwen_1_5", "mlp2x_gelu"),
    "onevision_qwen2_0_5b": ("Qwen/Qwen2-0.5B-Instruct", "google/siglip-so400m-patch14-384", "qwen_1_5", "mlp2x_gelu"),
    "onevision_qwen2_7b": ("Qwen/Qwen2-7B-Instruct", "google/siglip-so400m-patch14-384", "qwen_1_5", "mlp2x_gelu"),
}


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def value(cfg, key):
    got = OmegaConf.select(cfg, key)
    return OmegaConf.to_container(got) if OmegaConf.is_config(got) else got


def test_model_table_covers_every_model_option():
    assert set(options("model")) == set(MODELS)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_model_option_names_its_parts_and_template(compose_spec, name):
    llm, tower, template, projector = MODELS[name]
    for stage in ("pretrain", "finetune"):
        cfg = compose_spec(f"model={name}", f"stage={stage}")
        OmegaConf.resolve(cfg)
        assert (cfg.model.name, cfg.model.llm, cfg.model.vision_tower) == (name, llm, tower)
        assert cfg.model.mm_projector_type == projector and cfg.model.pretrained_llava is None
        assert cfg.data.template == ("plain" if stage == "pretrain" else template), stage
    local = compose_spec(f"model={name}", "model.llm=/models/llm", "model.vision_tower=/models/clip")
    assert (local.model.llm, local.model.vision_tower) == ("/models/llm", "/models/clip")


# scripts/v1_5/*.sh of LLaVA (13B as shipped; 7B the same with the 7B model)
SCRIPT_SHARED = {
    "model.vision_tower": "openai/clip-vit-large-patch14-336", "model.mm_projector_type": "mlp2x_gelu",
    "model.mm_vision_select_layer": -2, "model.mm_vision_select_feature": "patch", "model.model_max_length": 2048,
    "training.num_train_epochs": 1, "training.per_device_eval_batch_size": 4, "training.save_strategy": "steps",
    "training.save_total_limit": 1, "training.weight_decay": 0.0, "training.warmup_ratio": 0.03,
    "training.lr_scheduler_type": "cosine", "training.logging_steps": 1, "training.bf16": True, "training.tf32": True,
    "training.gradient_checkpointing": True, "training.dataloader_num_workers": 4, "training.report_to": ["wandb"],
    "training.gradient_accumulation_steps": 1,
}
FINETUNE = {
    "stage.name": "finetune", "stage.trainable": ["mm_projector", "llm"], "deepspeed.zero_optimization.stage": 3,
    "data.data_path": "/data/llava_v1_5_mix665k.json", "data.image_folder": "/data", "data.template": "v1",
    "data.image_aspect_ratio": "pad", "training.group_by_modality_length": True,
    "training.per_device_train_batch_size": 16, "training.save_steps": 50000,
}
LORA = {"lora.enable": True, "lora.r": 128, "lora.alpha": 256, "lora.dropout": 0.05, "lora.bias": "none",
        "lora.bits": 16, "training.learning_rate": 2e-4, "training.mm_projector_lr": 2e-5}
FULL = {"lora.enable": False, "training.learning_rate": 2e-5, "training.mm_projector_lr": None}
SCRIPTS = {
    "pretrain": {"stage.name": "pretrain", "stage.trainable": ["mm_projector"], "stage.pretrain_mm_mlp_adapter": None,
                 "deepspeed.zero_optimization.stage": 2, "lora.enable": False,
                 "data.data_path": "/data/LLaVA-Pretrain/blip_laion_cc_sbu_558k.json",
                 "data.image_folder": "/data/LLaVA-Pretrain/images", "data.template": "plain",
                 "data.image_aspect_ratio": "square", "training.group_by_modality_length": False,
                 "training.per_device_train_batch_size": 32, "training.learning_rate": 1e-3,
                 "training.save_steps": 24000},
    "finetune": {**FINETUNE, **FULL},
    "finetune_lora": {**FINETUNE, **LORA},
    "finetune_task": {**FINETUNE, **FULL, "stage.pretrain_mm_mlp_adapter": None},
    "finetune_task_lora": {**FINETUNE, **LORA, "stage.pretrain_mm_mlp_adapter": None},
}


def test_every_experiment_option_is_a_script():
    assert set(options("experiment")) == {f"llava15_{s}_{k}" for s in ("7b", "13b") for k in SCRIPTS} | {
        "onevision_7b_pretrain", "onevision_7b_si", "onevision_7b_ov",  # LLaVA-NeXT's: test_onevision_presets.py
        "llava_next_qwen2_7b_pretrain", "llava_next_qwen2_7b_finetune",  # also LLaVA-NeXT's (the CLIP scripts)
        "tiny_details"}  # not a script: the AnyRes-vs-base detail task (tests/test_details_compare.py)


@pytest.mark.parametrize("size", ["7b", "13b"])
@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_experiment_equals_the_script(compose_spec, size, script):
    cfg = compose_spec(f"experiment=llava15_{size}_{script}", "paths.data_root=/data", "paths.output_root=/runs")
    OmegaConf.resolve(cfg)
    expected = {**SCRIPT_SHARED, **SCRIPTS[script], "model.name": f"vicuna{size}", "model.llm": f"lmsys/vicuna-{size}-v1.5"}
    for key, want in expected.items():
        assert value(cfg, key) == want, f"{key}: {value(cfg, key)!r} != {want!r}"
    task = script.startswith("finetune_task")
    assert cfg.model.pretrained_llava == (f"llava-hf/llava-1.5-{size}-hf" if task else None)
    if script in ("finetune", "finetune_lora"):  # chained to the pretrain preset's output
        assert cfg.stage.pretrain_mm_mlp_adapter == f"/runs/vicuna{size}/pretrain/mm_projector.safetensors"
    run_dir = {"pretrain": "pretrain", "finetune": "finetune"}.get(script, script)
    assert cfg.run_dir == cfg.training.output_dir == f"/runs/vicuna{size}/{run_dir}"


def test_experiment_values_yield_to_the_command_line(compose_spec):
    cfg = compose_spec("experiment=llava15_13b_finetune_lora", "lora.r=64", "model.llm=/models/vicuna")
    assert (cfg.lora.r, cfg.model.llm, cfg.lora.alpha) == (64, "/models/vicuna", 256)


def test_qlora_quantizes_to_nf4_with_double_quant(compose_spec):
    cfg = compose_spec("stage=finetune", "lora=qlora")
    assert (cfg.lora.enable, cfg.lora.bits, cfg.lora.quant_type, cfg.lora.double_quant) == (True, 4, "nf4", True)
