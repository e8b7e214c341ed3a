"""The run spec: every group option composes, LLaVA-1.5 recipes come out exactly, bad specs fail by name."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

CONF = Path(__file__).parents[1] / "conf"


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize("group", ["stage", "model", "deepspeed", "lora"])
def test_every_group_option_composes_and_resolves(compose_spec, group):
    assert options(group), f"no options in conf/{group}"
    for option in options(group):
        for stage in ("pretrain", "finetune"):
            cfg = compose_spec(f"stage={stage}", f"{group}={option}")
            OmegaConf.resolve(cfg)  # every interpolation resolves
            if group == "deepspeed":
                expected = {"none": None, "zero2": 2, "zero3": 3, "zero3_offload": 3}[option]
                got = cfg.deepspeed and cfg.deepspeed.zero_optimization.stage
                assert got == expected, option


def test_every_data_option_composes(compose_spec):
    for option in options("data"):
        cfg = compose_spec(f"data={option}")
        assert cfg.data.name == option and cfg.data.template in ("plain", "v1")


LLAVA15 = {  # scripts/v1_5/{pretrain,finetune}.sh
    "pretrain": {"training.learning_rate": 1e-3, "training.per_device_train_batch_size": 32,
                 "deepspeed.zero_optimization.stage": 2, "data.template": "plain",
                 "data.image_aspect_ratio": "square", "training.group_by_modality_length": False,
                 "stage.trainable": ["mm_projector"], "training.save_steps": 24000},
    "finetune": {"training.learning_rate": 2e-5, "training.per_device_train_batch_size": 16,
                 "deepspeed.zero_optimization.stage": 3, "data.template": "v1",
                 "data.image_aspect_ratio": "pad", "training.group_by_modality_length": True,
                 "stage.trainable": ["mm_projector", "llm"], "training.save_steps": 50000},
}
SHARED = {"training.num_train_epochs": 1, "training.warmup_ratio": 0.03, "training.lr_scheduler_type": "cosine",
          "training.weight_decay": 0.0, "training.bf16": True, "training.tf32": True,
          "training.gradient_checkpointing": True, "training.dataloader_num_workers": 4,
          "training.save_total_limit": 1, "model.mm_projector_type": "mlp2x_gelu",
          "model.mm_vision_select_layer": -2, "model.mm_vision_select_feature": "patch",
          "model.model_max_length": 2048, "model.vision_tower": "openai/clip-vit-large-patch14-336"}


@pytest.mark.parametrize("size", ["7b", "13b"])
@pytest.mark.parametrize("stage", ["pretrain", "finetune"])
def test_llava15_recipe(compose_spec, size, stage):
    cfg = compose_spec(f"stage={stage}", f"model=vicuna{size}", "paths.data_root=/data/llava")
    for key, value in {**SHARED, **LLAVA15[stage], "model.llm": f"lmsys/vicuna-{size}-v1.5"}.items():
        got = OmegaConf.select(cfg, key)
        got = OmegaConf.to_container(got) if OmegaConf.is_config(got) else got
        assert got == value, f"{key}: {got!r} != {value!r}"
    data = {"pretrain": "/data/llava/LLaVA-Pretrain/blip_laion_cc_sbu_558k.json", "finetune": "/data/llava/llava_v1_5_mix665k.json"}
    assert cfg.data.data_path == data[stage]
    assert cfg.run_dir == f"outputs/vicuna{size}/{stage}"


def test_stage_chaining_by_convention(compose_spec):
    pre = compose_spec("stage=pretrain", "model=vicuna7b", "paths.output_root=/runs")
    fin = compose_spec("stage=finetune", "model=vicuna7b", "paths.output_root=/runs")
    assert pre.training.output_dir == "/runs/vicuna7b/pretrain"
    assert fin.stage.pretrain_mm_mlp_adapter == "/runs/vicuna7b/pretrain/mm_projector.safetensors"
    assert pre.stage.pretrain_mm_mlp_adapter is None


def test_lora_recipe_sets_its_learning_rates(compose_spec):
    cfg = compose_spec("stage=finetune", "model=vicuna13b", "lora=lora")
    assert (cfg.lora.enable, cfg.lora.r, cfg.lora.alpha) == (True, 128, 256)
    assert (cfg.training.learning_rate, cfg.training.mm_projector_lr) == (2e-4, 2e-5)
    assert compose_spec("lora=qlora").lora.bits == 4


def test_misspelled_key_is_rejected_by_name(compose_spec):
    with pytest.raises(ConfigCompositionException) as e:
        compose_spec("training.learnig_rate=1e-4")
    assert "learnig_rate" in str(e.value.__cause__ or e.value)


def test_wrong_type_is_rejected_by_name(compose_spec):
    with pytest.raises(ConfigCompositionException) as e:
        compose_spec("training.per_device_train_batch_size=lots")
    assert "per_device_train_batch_size" in str(e.value.__cause__ or e.value)


def test_unknown_group_option_is_rejected_by_name(compose_spec):
    with pytest.raises(ConfigCompositionException) as e:
        compose_spec("model=vicuna14b")
    assert "vicuna14b" in str(e.value) and "vicuna13b" in str(e.value)  # names the choices


def test_cfg_job_prints_recipe_fast_without_torch():
    code = ("import sys, runpy; sys.argv=['llava_hydra','stage=finetune','model=vicuna13b','--cfg','job'];"
            "\ntry: runpy.run_module('llava_hydra', run_name='__main__')\nexcept SystemExit: pass"
            "\nassert 'torch' not in sys.modules and 'transformers' not in sys.modules, 'heavy import'")
    started = time.time()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    elapsed = time.time() - started
    assert "llm: lmsys/vicuna-13b-v1.5" in out and "learning_rate: 2.0e-05" in out
    assert "stage: 3" in out and "template: v1" in out
    assert elapsed < 5, f"--cfg job took {elapsed:.1f}s"  # ~1 s here; the bound allows a loaded CI box


def test_launchers_and_search_compose(compose_spec):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    slurm = compose_spec("hydra/launcher=slurm", return_hydra_config=True).hydra.launcher
    assert (slurm.nodes, slurm.gpus_per_node, slurm.tasks_per_node, slurm.timeout_min) == (1, 8, 8, 1440)
    assert slurm.max_num_timeout > 0  # requeued on timeout/preemption, resumes from the last checkpoint
    assert compose_spec("hydra/launcher=slurm_local", return_hydra_config=True).hydra.launcher._target_.endswith(
        "LocalLauncher")
    search = compose_spec("stage=finetune", "hparams_search=projector_lr_optuna", return_hydra_config=True).hydra
    assert search.sweeper.direction == "maximize"
    assert set(search.sweeper.params) == {"training.mm_projector_lr", "training.learning_rate"}
