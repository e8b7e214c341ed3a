"""The default run directory's name: what a run trains, so runs that differ in it do not collide.

``conf/config.yaml`` composes ``run_dir`` as ``<paths.output_root>/<model.name>/<stage.name>``
followed by two suffixes computed here (OmegaConf resolvers, registered with the schema):

- ``llava_hydra.lora_suffix``: ``""`` without LoRA, ``_lora`` (16-bit base), ``_qlora`` (4-bit),
  ``_qlora8`` (8-bit), the names LLaVA's own scripts and our presets use (``finetune_lora``);
- ``llava_hydra.data_suffix``: ``""`` when ``data.data_path`` is the one its data file names
  (``data.preset_path``), else ``_<file stem>`` (``data.data_path=/data/mine/qa.json`` ->
  ``finetune_qa``); a data file of the user's own (no ``preset_path``) adds ``_<data.name>``.

So ``stage=finetune lora=lora`` trains in ``outputs/tiny/finetune_lora`` beside the plain finetune,
and stage 1 with the recipe's data stays ``outputs/<model>/pretrain``, where stage 2's default
``stage.pretrain_mm_mlp_adapter`` looks. ``hydra.run.dir`` follows ``training.output_dir``, whose
default is ``run_dir``: one setting moves checkpoints, ``.hydra/``, the log file and metrics.
"""

from __future__ import annotations

import re
from pathlib import PurePath

from omegaconf import OmegaConf


def lora_suffix(lora) -> str:
    """``""``, ``_lora``, ``_qlora`` or ``_qlora8`` for the ``lora`` node."""
    if lora is None or not lora.get("enable"):
        return ""
    bits = int(lora.get("bits") or 16)
    return {16: "_lora", 4: "_qlora"}.get(bits, f"_qlora{bits}")


def _slug(text: str) -> str:
    """A folder-safe name: letters, digits, ``.``, ``-`` and ``_`` kept, runs of anything else one ``-``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.") or "data"


def data_suffix(data) -> str:
    """``""`` for the data file's own ``data_path``, else ``_<stem of data_path>`` (``_<data.name>`` for a
    data file of the user's own, which names no ``preset_path``)."""
    if data is None:
        return ""
    path, preset = data.get("data_path"), data.get("preset_path")
    if preset is None:
        return f"_{_slug(str(data.get('name') or 'data'))}"
    if path is None or str(path) == str(preset):
        return ""
    return f"_{_slug(PurePath(str(path)).stem)}"


def register_resolvers() -> None:
    """Make ``${llava_hydra.lora_suffix:${lora}}`` and ``${llava_hydra.data_suffix:${data}}`` resolve."""
    OmegaConf.register_new_resolver("llava_hydra.lora_suffix", lora_suffix, replace=True)
    OmegaConf.register_new_resolver("llava_hydra.data_suffix", data_suffix, replace=True)
