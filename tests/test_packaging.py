"""conf/ stands at the repository top and ships inside the wheel as llava_hydra.conf: a
non-editable install holds every module and config and composes every group option. A user's own
model/data/experiment files in a directory of their own compose with --config-dir."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
COMPOSE_ALL = r"""
import sys, pathlib, llava_hydra
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf
from llava_hydra.config.schema import check_resolves, register_configs
assert llava_hydra.__file__.startswith(sys.argv[1]), llava_hydra.__file__
register_configs()
conf = pathlib.Path(llava_hydra.__file__).parent / "conf"
n = 0
with initialize_config_module("llava_hydra.conf", version_base="1.3"):
    for group in ("stage", "model", "data", "deepspeed", "lora", "experiment"):
        for option in sorted(p.stem for p in (conf / group).glob("*.yaml")):
            for stage in ("pretrain", "finetune"):
                over = [f"{group}={option}"] + ([f"stage={stage}"] if group != "experiment" else [])
                cfg = compose("config", overrides=over)
                check_resolves(cfg)
                n += 1
print("composed", n)
"""


@pytest.mark.e2e
def test_non_editable_install_ships_every_module_and_config(tmp_path):
    source, target = tmp_path / "src", tmp_path / "site"  # a copy: setuptools builds in the source tree
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for name in ("llava_hydra", "conf"):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    import importlib.util  # build with this venv's setuptools when it has one (fast), else pip's isolated build

    isolation = [] if importlib.util.find_spec("setuptools") is None else ["--no-build-isolation"]
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", *isolation,
                    "--target", str(target), str(source)], check=True, capture_output=True, text=True)
    installed = target / "llava_hydra"
    for src in (ROOT / "llava_hydra").rglob("*.py"):
        assert (installed / src.relative_to(ROOT / "llava_hydra")).is_file(), f"{src} is not in the wheel"
    for src in (ROOT / "conf").rglob("*.yaml"):
        assert (installed / "conf" / src.relative_to(ROOT / "conf")).is_file(), f"{src} is not in the wheel"
    out = subprocess.run([sys.executable, "-c", COMPOSE_ALL, str(installed)], cwd=tmp_path, check=True,
                         capture_output=True, text=True, env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"})
    assert int(out.stdout.split()[-1]) > 50


def test_users_own_config_dir_composes_and_validates(tmp_path):
    """README's recipe: a model (and data) file of one's own, outside the package, used with --config-dir."""
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "my_mistral.yaml").write_text(
        "# @package _global_\ndefaults:\n  - override /recipe: llava15\n\nmodel:\n  name: my_mistral\n"
        "  llm: /models/mistral-7b-instruct\n  vision_tower: openai/clip-vit-large-patch14-336\n"
        "  template: chat_template\n")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "my_charts.yaml").write_text(
        "name: my_charts\ndata_path: /data/charts.json\nimage_folder: /data/charts\ntemplate: ${model.template}\n")
    base = [sys.executable, "-m", "llava_hydra", "--config-dir", str(tmp_path)]
    out = subprocess.run([*base, "stage=finetune", "model=my_mistral", "data=my_charts", "--cfg", "job", "--resolve"],
                         capture_output=True, text=True, check=True).stdout
    for line in ("name: my_mistral", "llm: /models/mistral-7b-instruct", "data_path: /data/charts.json",
                 "template: chat_template", "learning_rate: 2.0e-05", "run_dir: outputs/my_mistral/finetune"):
        assert line in out, line
    bad = subprocess.run([*base, "model=my_mistral", "model.lr=1"], capture_output=True, text=True)
    assert bad.returncode != 0 and "lr" in bad.stderr  # the schema validates the user's file too
