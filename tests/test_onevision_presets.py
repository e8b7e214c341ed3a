"""The LLaVA-NeXT / OneVision model= options and the experiment= presets of LLaVA-NeXT's OneVision scripts:
each composes and validates, and each script's every flag (written out below from scripts/train/*.sh of
LLaVA-VL/LLaVA-NeXT) is either the preset's value or named in the preset's comment as meaningless here."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from llava_hydra.config.validate import validate

CONF = Path(__file__).parents[1] / "conf"

PRETRAIN_SIGLIP = {  # scripts/train/pretrain_siglip.sh
    "--deepspeed": "scripts/zero3.json", "--model_name_or_path": "Qwen/Qwen2-7B-Instruct", "--version": "plain",
    "--data_path": "/blip_558k/blip_558k_plain.json", "--image_folder": "/blip_558k/images",
    "--vision_tower": "google/siglip-so400m-patch14-384", "--mm_tunable_parts": "mm_mlp_adapter",
    "--mm_vision_select_layer": "-2", "--mm_projector_type": "mlp2x_gelu", "--mm_use_im_start_end": "False",
    "--mm_use_im_patch_token": "False", "--bf16": "True", "--output_dir": "/checkpoints/projectors/x",
    "--num_train_epochs": "1", "--per_device_train_batch_size": "16", "--per_device_eval_batch_size": "4",
    "--gradient_accumulation_steps": "1", "--evaluation_strategy": "no", "--save_strategy": "no",
    "--save_steps": "50000", "--learning_rate": "1e-3", "--weight_decay": "0.", "--warmup_ratio": "0.03",
    "--lr_scheduler_type": "cosine", "--logging_steps": "1", "--tf32": "True", "--model_max_length": "8192",
    "--gradient_checkpointing": "True", "--dataloader_num_workers": "16", "--lazy_preprocess": "True",
    "--report_to": "wandb", "--run_name": "x", "--attn_implementation": "sdpa",
}
FINETUNE_SI = {  # scripts/train/finetune_si.sh (finetune_ov.sh: the same but --data_path and the checkpoint)
    "--deepspeed": "scripts/zero3.json", "--model_name_or_path": "$PREV_STAGE_CHECKPOINT", "--version": "qwen_1_5",
    "--data_path": "next_3p2m_single_image.yaml", "--image_folder": "/mnt/bn/vl-research/data/llava_data",
    "--video_folder": "/mnt/bn/vl-research/data/llava_video",
    "--mm_tunable_parts": "mm_vision_tower,mm_mlp_adapter,mm_language_model", "--mm_vision_tower_lr": "2e-6",
    "--vision_tower": "google/siglip-so400m-patch14-384", "--mm_projector_type": "mlp2x_gelu",
    "--mm_vision_select_layer": "-2", "--mm_use_im_start_end": "False", "--mm_use_im_patch_token": "False",
    "--group_by_modality_length": "True", "--image_aspect_ratio": "anyres_max_9",
    "--image_grid_pinpoints": "(1x1),...,(6x6)", "--mm_patch_merge_type": "spatial_unpad", "--bf16": "True",
    "--run_name": "x", "--output_dir": "x", "--num_train_epochs": "1", "--per_device_train_batch_size": "1",
    "--per_device_eval_batch_size": "4", "--gradient_accumulation_steps": "2", "--evaluation_strategy": "no",
    "--save_strategy": "steps", "--save_steps": "1000", "--save_total_limit": "1", "--learning_rate": "1e-5",
    "--weight_decay": "0.", "--warmup_ratio": "0.03", "--lr_scheduler_type": "cosine", "--logging_steps": "1",
    "--tf32": "True", "--model_max_length": "32768", "--gradient_checkpointing": "True",
    "--dataloader_num_workers": "4", "--lazy_preprocess": "True", "--report_to": "wandb", "--torch_compile": "True",
    "--torch_compile_backend": "inductor", "--dataloader_drop_last": "True", "--frames_upbound": "32",
}
FINETUNE_OV = {**FINETUNE_SI, "--data_path": "next_ov_stage_july21.yaml"}
PRETRAIN_CLIP = {**PRETRAIN_SIGLIP, "--vision_tower": "openai/clip-vit-large-patch14-336"}  # pretrain_clip.sh
DIRECT_FINETUNE_CLIP = {  # scripts/train/direct_finetune_clip.sh
    "--deepspeed": "scripts/zero3.json", "--model_name_or_path": "Qwen/Qwen2-7B-Instruct", "--version": "qwen_1_5",
    "--data_path": "llava_1_6.json", "--image_folder": "your_image_folder",
    "--pretrain_mm_mlp_adapter": "/checkpoints/projectors/x/mm_projector.bin",
    "--mm_tunable_parts": "mm_vision_tower,mm_mlp_adapter,mm_language_model", "--mm_vision_tower_lr": "2e-6",
    "--vision_tower": "openai/clip-vit-large-patch14-336", "--mm_projector_type": "mlp2x_gelu",
    "--mm_vision_select_layer": "-2", "--mm_use_im_start_end": "False", "--mm_use_im_patch_token": "False",
    "--group_by_modality_length": "True", "--image_aspect_ratio": "anyres",
    "--image_grid_pinpoints": "[(336, 672), (672, 336), (672, 672), (1008, 336), (336, 1008)]",
    "--mm_patch_merge_type": "spatial_unpad", "--bf16": "True", "--run_name": "x", "--output_dir": "x",
    "--num_train_epochs": "1", "--per_device_train_batch_size": "4", "--per_device_eval_batch_size": "4",
    "--gradient_accumulation_steps": "1", "--evaluation_strategy": "no", "--save_strategy": "steps",
    "--save_steps": "3000", "--save_total_limit": "1", "--learning_rate": "1e-5", "--weight_decay": "0.",
    "--warmup_ratio": "0.03", "--lr_scheduler_type": "cosine", "--logging_steps": "1", "--tf32": "True",
    "--model_max_length": "32768", "--gradient_checkpointing": "True", "--dataloader_num_workers": "16",
    "--lazy_preprocess": "True", "--report_to": "wandb", "--torch_compile": "True",
    "--torch_compile_backend": "inductor", "--dataloader_drop_last": "True", "--attn_implementation": "sdpa",
}
NO_MEANING = {"--mm_use_im_start_end", "--mm_use_im_patch_token", "--evaluation_strategy", "--lazy_preprocess",
              "--output_dir", "--run_name", "--torch_compile",
              "--torch_compile_backend", "--dataloader_drop_last"}
DATA = {"/blip_558k/blip_558k_plain.json": "llava15_pretrain", "next_3p2m_single_image.yaml": "onevision_si",
        "next_ov_stage_july21.yaml": "onevision_ov"}
PARTS = {"mm_vision_tower": "vision_tower", "mm_mlp_adapter": "mm_projector", "mm_language_model": "llm"}
SAME_NAME = ("bf16", "num_train_epochs", "per_device_train_batch_size", "per_device_eval_batch_size",
             "gradient_accumulation_steps", "save_strategy", "save_steps", "save_total_limit", "learning_rate",
             "weight_decay", "warmup_ratio", "lr_scheduler_type", "logging_steps", "tf32", "gradient_checkpointing",
             "dataloader_num_workers", "group_by_modality_length")


def value(text: str):
    """A shell flag's text as the value it stands for."""
    if text in ("True", "False"):
        return text == "True"
    try:
        return float(text)
    except ValueError:
        return text


def ours(cfg, flag: str, preset: str):
    """What the composed spec holds for a LLaVA-NeXT flag, in the flag's terms."""
    key = flag[2:]
    if key == "deepspeed":
        return f"scripts/zero{cfg.deepspeed.zero_optimization.stage}.json"
    if key == "model_name_or_path":
        return cfg.model.pretrained_llava or cfg.model.llm
    if key == "version":
        return cfg.data.template
    if key == "data_path":
        return cfg.data.name
    if key in ("image_folder", "video_folder", "frames_upbound"):
        return cfg.data[key]
    if key == "mm_tunable_parts":
        return sorted(cfg.stage.trainable)
    if key == "pretrain_mm_mlp_adapter":
        return cfg.stage.pretrain_mm_mlp_adapter
    if key == "mm_vision_tower_lr":
        return cfg.training.vision_tower_lr
    if key == "image_aspect_ratio":
        return cfg.data.image_aspect_ratio
    if key == "report_to":
        return ",".join(cfg.training.report_to)
    if key == "image_grid_pinpoints" and not isinstance(cfg.model[key], str):
        return [list(p) for p in cfg.model[key]]
    if key in ("vision_tower", "mm_vision_select_layer", "mm_projector_type", "image_grid_pinpoints",
               "mm_patch_merge_type", "model_max_length", "attn_implementation"):
        return cfg.model[key]
    assert key in SAME_NAME, flag
    return cfg.training[key]


PREV_STAGE = {"onevision_7b_ov": "/runs/onevision_qwen2_7b/finetune_si"}  # ov starts from si's model
# the projector stage 1's preset writes (the scripts' /checkpoints/projectors/<run>/mm_projector.bin)
PROJECTOR = {"llava_next_qwen2_7b_finetune": "/runs/llava_next_qwen2_7b/pretrain/mm_projector.safetensors"}
# where a preset deliberately differs from its script, and says so in its comment
DIFFERS = {("onevision_7b_si", "--model_name_or_path"): "$PREV_STAGE_CHECKPOINT is LLaVA-NeXT's unreleased mid-stage model",
           ("llava_next_qwen2_7b_finetune", "--data_path"): "--data_path=llava_1_6.json is LLaVA-NeXT 1.6's 760K mix, never released"}
# the files whose comments explain a preset's flags: its own and the presets it says it shares them with
EXPLAINED_IN = {"onevision_7b_pretrain": ["onevision_7b_pretrain"],
                "onevision_7b_si": ["onevision_7b_si", "onevision_7b_pretrain"],
                "onevision_7b_ov": ["onevision_7b_ov", "onevision_7b_si", "onevision_7b_pretrain"],
                "llava_next_qwen2_7b_pretrain": ["llava_next_qwen2_7b_pretrain"],
                "llava_next_qwen2_7b_finetune": ["llava_next_qwen2_7b_finetune", "llava_next_qwen2_7b_pretrain"]}


def theirs(flag: str, text: str, cfg, preset: str):
    if text == "$PREV_STAGE_CHECKPOINT":
        return PREV_STAGE[preset]
    if flag == "--pretrain_mm_mlp_adapter":
        return PROJECTOR[preset]
    if flag == "--image_grid_pinpoints" and text.startswith("["):  # (width, height) pairs; symmetric set
        return [list(p) for p in ast.literal_eval(text)]
    if flag == "--data_path":
        return DATA[text]
    if flag == "--image_folder":
        return cfg.data.image_folder  # where the user keeps them: data.image_folder (paths.data_root/...)
    if flag == "--video_folder":
        return cfg.data.video_folder  # as data.image_folder: data.video_folder (paths.data_root/llava_video)
    if flag == "--mm_tunable_parts":
        return sorted(PARTS[p] for p in text.split(","))
    return value(text)


@pytest.mark.parametrize("preset, flags", [("onevision_7b_pretrain", PRETRAIN_SIGLIP),
                                           ("onevision_7b_si", FINETUNE_SI), ("onevision_7b_ov", FINETUNE_OV),
                                           ("llava_next_qwen2_7b_pretrain", PRETRAIN_CLIP),
                                           ("llava_next_qwen2_7b_finetune", DIRECT_FINETUNE_CLIP)])
def test_preset_equals_the_script_flag_for_flag(compose_spec, preset, flags):
    cfg = compose_spec(f"experiment={preset}", "paths.output_root=/runs")
    validate(cfg, local_paths=False)
    comments = "".join((CONF / "experiment" / f"{name}.yaml").read_text() for name in EXPLAINED_IN[preset])
    for flag, text in flags.items():
        if flag in NO_MEANING:
            assert flag in comments, f"{preset}: {flag} neither set nor explained"
            continue
        if (preset, flag) in DIFFERS:
            assert DIFFERS[preset, flag] in comments, (preset, flag)
            continue
        got = ours(cfg, flag, preset)
        want = theirs(flag, text, cfg, preset)
        assert (got == want) if isinstance(got, list) else (value(str(got)) == want), \
            (preset, flag, got, text)


def test_presets_chain_the_stages(compose_spec):
    pre = compose_spec("experiment=onevision_7b_pretrain", "paths.output_root=/runs")
    assert (pre.data.image_aspect_ratio, pre.data.template, pre.model.get("mm_patch_merge_type")) == ("square", "plain", None)
    si = compose_spec("experiment=onevision_7b_si", "paths.output_root=/runs")
    ov = compose_spec("experiment=onevision_7b_ov", "paths.output_root=/runs")
    assert si.stage.pretrain_mm_mlp_adapter == "/runs/onevision_qwen2_7b/pretrain/mm_projector.safetensors"
    assert (si.run_dir, ov.run_dir) == ("/runs/onevision_qwen2_7b/finetune_si", "/runs/onevision_qwen2_7b/finetune_ov")
    assert ov.model.pretrained_llava == si.run_dir and ov.stage.pretrain_mm_mlp_adapter is None
    small = compose_spec("experiment=onevision_7b_si", "model=onevision_qwen2_0_5b", "paths.output_root=/runs")
    assert (small.model.llm, small.run_dir) == ("Qwen/Qwen2-0.5B-Instruct", "/runs/onevision_qwen2_0_5b/finetune_si")


@pytest.mark.parametrize("model, family, llm, tower, aspect, pinpoints", [
    ("llava_next_vicuna7b", "llava_next", "lmsys/vicuna-7b-v1.5", "openai/clip-vit-large-patch14-336", "anyres",
     [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]),
    ("llava_next_vicuna13b", "llava_next", "lmsys/vicuna-13b-v1.5", "openai/clip-vit-large-patch14-336", "anyres",
     [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]),
    ("llava_next_qwen2_7b", "llava_next", "Qwen/Qwen2-7B-Instruct", "openai/clip-vit-large-patch14-336", "anyres",
     [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]),
    ("onevision_qwen2_0_5b", "llava_onevision", "Qwen/Qwen2-0.5B-Instruct", "google/siglip-so400m-patch14-384",
     "anyres_max_9", "(1x1),...,(6x6)"),
    ("onevision_qwen2_7b", "llava_onevision", "Qwen/Qwen2-7B-Instruct", "google/siglip-so400m-patch14-384",
     "anyres_max_9", "(1x1),...,(6x6)"),
])
def test_model_options_compose_and_validate(compose_spec, model, family, llm, tower, aspect, pinpoints):
    fin = compose_spec(f"model={model}", "stage=finetune", "paths.output_root=/runs")  # stage 1: the pretrain preset
    validate(fin, local_paths=False)  # (and test_validation.py validates every model option in both stages)
    assert (fin.model.family, fin.model.llm, fin.model.vision_tower) == (family, llm, tower)
    assert (fin.data.image_aspect_ratio, fin.model.mm_patch_merge_type) == (aspect, "spatial_unpad")
    assert fin.data.template == ("qwen_1_5" if llm.startswith("Qwen/") else "v1")
    assert list(fin.stage.trainable) == ["mm_projector", "llm", "vision_tower"] and fin.training.vision_tower_lr == 2e-6
    got = fin.model.image_grid_pinpoints
    assert (got if isinstance(got, str) else [list(p) for p in got]) == pinpoints


def test_pinpoint_forms_expand_to_the_grids_transformers_configs_hold():
    from llava_hydra.config.families import pinpoints_for

    ov = pinpoints_for("llava_onevision", "(1x1),...,(6x6)", 384)
    assert len(ov) == 36 and ov[:3] == [[384, 384], [384, 768], [384, 1152]] and ov[-1] == [2304, 2304]
    assert pinpoints_for("llava_next", None, 336) == [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]
