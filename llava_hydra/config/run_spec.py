"""The run spec a run leaves beside its outputs, for the commands that come after it (merge,
chat, evaluation): ``<run dir>/llava_hydra_spec.yaml``, resolved, with the ``paths.*`` roots
made absolute before resolving, so every path derived from them (cache, data, stage 1
projector) and every local model directory points where the run saw it, from any working
directory.

The other copies of a spec and why each stays: Hydra's ``.hydra/`` (the unresolved config and
the command-line overrides: how to repeat the command), ``launch_spec.yaml`` (the workers'
input, as composed: llava_hydra.commands.launch) and each checkpoint's ``run_record.json`` (what a
resume is checked against: llava_hydra.train.checkpoints).
"""

from __future__ import annotations

import os
from pathlib import Path

from llava_hydra.config.distributed import is_main_process

SPEC_FILE = "llava_hydra_spec.yaml"
LOCAL_MODEL_KEYS = ("llm", "vision_tower", "pretrained_llava")


def portable_spec(cfg) -> dict:
    """The resolved spec with ``paths.*`` and existing relative local model paths made absolute."""
    from omegaconf import OmegaConf, open_dict

    cfg = cfg.copy()
    keys = sorted(cfg.paths, key=lambda k: OmegaConf.is_interpolation(cfg.paths, k))  # plain values first
    with open_dict(cfg):
        for key in keys:
            value = cfg.paths[key]
            if isinstance(value, str) and not os.path.isabs(value):
                cfg.paths[key] = os.path.abspath(value)
    spec = OmegaConf.to_container(cfg, resolve=True)
    for key in LOCAL_MODEL_KEYS:
        value = spec["model"].get(key)
        if isinstance(value, str) and "://" not in value and Path(value).exists():
            spec["model"][key] = os.path.abspath(value)
    return spec


def write_spec(cfg, out_dir: str | Path) -> None:
    """Save the portable spec in ``out_dir`` (rank 0 only)."""
    from omegaconf import OmegaConf

    if not is_main_process():
        return
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(OmegaConf.create(portable_spec(cfg)), out / SPEC_FILE)


def find_spec(path: str | Path) -> Path:
    """The spec of the run that wrote ``path`` (a run directory or one of its checkpoints)."""
    path = Path(path)
    for candidate in (path / SPEC_FILE, path.parent / SPEC_FILE):
        if candidate.exists():
            return candidate
    raise FileNotFoundError(f"{path}: no {SPEC_FILE} here or in its parent; is this a LoRA run directory "
                            f"or one of its checkpoint-N directories?")
