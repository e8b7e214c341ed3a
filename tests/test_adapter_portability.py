"""A LoRA run's output outlives its working directory: plain peft reads the adapter's base
(``base_model_name_or_path``), and the merge command, run from anywhere, rebuilds the base
from the run's spec and writes nothing but the merged model."""

from __future__ import annotations

import json

import pytest
import torch

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture
def lora_run(compose_spec, tmp_path, monkeypatch):
    """A tiny LoRA model saved as a run saves it, by a command started in <tmp>/project with the
    default relative paths (outputs/, outputs/.cache) and the builtin tiny parts."""
    from llava_hydra.model import build_model
    from llava_hydra.config.run_spec import write_spec

    project = tmp_path / "project"
    project.mkdir()
    monkeypatch.chdir(project)
    cfg = compose_spec("stage=finetune", "stage.pretrain_mm_mlp_adapter=null", "lora=lora", "lora.r=4", "lora.alpha=8")
    assert cfg.paths.output_root == "outputs" and cfg.paths.cache_dir == "outputs/.cache"  # relative, as shipped
    torch.manual_seed(0)
    model, _, _ = build_model(cfg)
    run_dir = project / "outputs" / "tiny" / "finetune"
    model.save_pretrained(run_dir)
    write_spec(cfg, run_dir)
    return project, run_dir


def test_plain_peft_reads_the_base_of_a_saved_adapter(lora_run):
    from peft import PeftConfig
    from transformers import AutoConfig

    project, run_dir = lora_run
    base = project / "outputs" / ".cache" / "builtin" / "tiny-llama"  # where the run built model.llm
    assert json.loads((run_dir / "adapter_config.json").read_text())["base_model_name_or_path"] == str(base)
    config = PeftConfig.from_pretrained(str(run_dir))
    assert config.base_model_name_or_path == str(base)
    assert AutoConfig.from_pretrained(config.base_model_name_or_path).model_type == "llama"


def test_merge_from_another_directory_writes_only_the_merged_model(lora_run, tmp_path, monkeypatch):
    from llava_hydra.commands.merge import main

    project, run_dir = lora_run
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    before = sorted(p.relative_to(project) for p in project.rglob("*"))
    main([str(run_dir), str(tmp_path / "merged")])
    assert list(elsewhere.iterdir()) == []  # no outputs/.cache here
    assert sorted(p.relative_to(project) for p in project.rglob("*")) == before  # the run's cache reused as is
    assert (tmp_path / "merged" / "config.json").exists()


def test_cache_follows_the_output_root(compose_spec):
    assert compose_spec("paths.output_root=/runs").paths.cache_dir == "/runs/.cache"
    assert compose_spec("paths.output_root=/runs", "paths.cache_dir=/cache").paths.cache_dir == "/cache"
