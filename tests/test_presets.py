"""Every experiment= preset with every model= option is a consistent run of that model (name, LLM,
run directory, stage-2 projector all agree) or an error naming the conflict, never a mix."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf.errors import InterpolationToMissingValueError

CONF = Path(__file__).parents[1] / "conf"
PRESETS = sorted(p.stem for p in (CONF / "experiment").glob("llava15_*.yaml"))  # onevision_*, llava_next_*: test_onevision_presets.py
LLM = {"tiny": "builtin://tiny-llama", "tiny_next": "builtin://tiny-llama", "vicuna7b": "lmsys/vicuna-7b-v1.5", "vicuna13b": "lmsys/vicuna-13b-v1.5",
       "vicuna7b_v1_linear": "lmsys/vicuna-7b-v1.5", "llama2_7b_chat": "meta-llama/Llama-2-7b-chat-hf",
       "llama3_8b_instruct": "meta-llama/Meta-Llama-3-8B-Instruct", "qwen2_7b_instruct": "Qwen/Qwen2-7B-Instruct"}
ANYRES = {"tiny_onevision", "llava_next_vicuna7b", "llava_next_vicuna13b", "llava_next_qwen2_7b", "onevision_qwen2_0_5b",
          "onevision_qwen2_7b"}  # composed and validated in test_onevision_presets.py / test_onevision.py
RELEASED = {"vicuna7b": "llava-hf/llava-1.5-7b-hf", "vicuna13b": "llava-hf/llava-1.5-13b-hf"}


def test_presets_and_models_listed():
    assert len(PRESETS) == 10 and set(p.stem for p in (CONF / "model").glob("*.yaml")) == set(LLM) | ANYRES


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_with_any_model_is_that_model_or_an_error(compose_spec, preset):
    suffix = preset.split("_", 2)[2]  # pretrain | finetune | finetune_lora | finetune_task | ...
    for model, llm in LLM.items():
        overrides = (f"experiment={preset}", f"model={model}", "paths.output_root=/runs")
        if suffix.startswith("finetune_task") and model not in RELEASED:
            with pytest.raises((ConfigCompositionException, InterpolationToMissingValueError)) as e:
                compose_spec(*overrides)
            assert "released_llava" in str(e.value), (preset, model)
            continue
        cfg = compose_spec(*overrides)
        assert (cfg.model.name, cfg.model.llm) == (model, llm), (preset, model)
        assert cfg.run_dir == cfg.training.output_dir == f"/runs/{model}/{suffix}", (preset, model)
        assert cfg.stage.name == suffix.split("_")[0]
        assert cfg.lora.enable == suffix.endswith("lora")
        if suffix in ("finetune", "finetune_lora"):
            assert cfg.stage.pretrain_mm_mlp_adapter == f"/runs/{model}/pretrain/mm_projector.safetensors"
        if suffix.startswith("finetune_task"):
            assert cfg.model.pretrained_llava == RELEASED[model] and cfg.stage.pretrain_mm_mlp_adapter is None
        else:
            assert cfg.model.pretrained_llava is None


def test_a_model_file_without_a_recipe_is_an_error(tmp_path, compose_spec):
    """A new model option never trains by LLaVA-1.5's recipe by accident: it must name one."""
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "mine.yaml").write_text("# @package _global_\nmodel: {name: mine, llm: /m, vision_tower: /v, template: v1}\n")
    with pytest.raises(ConfigCompositionException) as e:
        compose_spec("model=mine", f"hydra.searchpath=[file://{tmp_path}]")
    assert "recipe" in str(e.value) and "llava15" in str(e.value)


def test_a_model_file_without_a_template_is_an_error_naming_it(tmp_path, compose_spec):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "mine.yaml").write_text(
        "# @package _global_\ndefaults:\n  - override /recipe: llava15\nmodel: {name: mine, llm: /m, vision_tower: /v}\n")
    with pytest.raises(InterpolationToMissingValueError) as e:
        compose_spec("model=mine", "stage=finetune", f"hydra.searchpath=[file://{tmp_path}]")
    assert "model.template" in str(e.value)


def test_cli_stops_on_a_task_preset_without_a_release_before_torch():
    import subprocess
    import sys

    code = ("import sys, runpy; sys.argv=['llava_hydra','experiment=llava15_7b_finetune_task','model=llama3_8b_instruct'];"
            "\ntry: runpy.run_module('llava_hydra', run_name='__main__')\nexcept SystemExit as e: print('exit', e.code)"
            "\nassert 'torch' not in sys.modules, 'heavy import'")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "exit 1" in out.stdout and "model.released_llava" in out.stderr, out.stderr[-2000:]


def test_the_tree_has_the_groups_a_user_types_and_one_recipe_group():
    groups = {p.name for p in CONF.iterdir() if p.is_dir() and any(p.rglob("*.yaml"))}
    # benchmark/ is the evaluation app's group (python -m llava_hydra.eval benchmark=pope), beside its eval.yaml
    assert groups == {"stage", "model", "data", "deepspeed", "fsdp", "lora", "recipe", "experiment", "hparams_search", "hydra",
                      "benchmark"}
    for preset in PRESETS:  # a preset states what it changes: no model/data/training block copied in
        text = (CONF / "experiment" / f"{preset}.yaml").read_text()
        assert "\ntraining:" not in text and "\ndata:" not in text and "  llm:" not in text, preset
