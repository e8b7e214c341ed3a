"""lmms-eval scores our output as trained, with no conversion: its ``llava_hf`` model (0.7.3) on a
saved tiny folder answers held-out questions as ``python -m llava_hydra.eval benchmark=own`` does,
for a LLaVA-1.5 ``pad`` folder and a LLaVA-NeXT (``model=tiny_next``, AnyRes) folder. llava_hf
renders the chat template to text and calls the processor on it, which adds the tokenizer's bos:
with a template that wrote bos too it saw ``<s><s>`` (0 of 12 answers equal on pad_clip).

Slow, and needs lmms-eval in its own environment (it pins its own torch):
``LMMS_EVAL_PYTHON=/path/to/venv/bin/python pytest -m slow tests/test_lmms_eval.py``."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra

sys.path.insert(0, str(Path(__file__).parent / "helpers"))
import lmms_eval_task  # noqa: E402
from local_parts import save_parts  # noqa: E402
from saved_models import saved_model  # noqa: E402
from test_stock_clients import MAX_NEW, eval_app, held_out  # noqa: E402

PYTHON = os.environ.get("LMMS_EVAL_PYTHON")
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not PYTHON, reason="set LMMS_EVAL_PYTHON to a python with lmms_eval 0.7.3 installed")]
FOLDERS = {  # name -> saved_model overrides
    "pad_clip": (),
    "tiny_next": ("model=tiny_next", "model.llm=builtin://tiny-llama", "model.vision_tower=builtin://tiny-clip"),
}


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("lmms")
    return root, save_parts(root / "parts"), held_out(root / "own")


@pytest.mark.parametrize("name", list(FOLDERS))
def test_lmms_eval_llava_hf_answers_as_the_eval_app(root, name):
    from transformers import AutoConfig

    from llava_hydra.config.schema import register_configs

    base, parts, questions = root
    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_module("llava_hydra.conf", version_base="1.3"):
        model_dir = saved_model(lambda *o: compose("config", overrides=list(o)), parts, base / name,
                                overrides=FOLDERS[name])
    GlobalHydra.instance().clear()
    assert AutoConfig.from_pretrained(model_dir).model_type == ("llava_next" if name == "tiny_next" else "llava")
    ours = eval_app(model_dir, questions, base / f"eval_{name}")
    assert len(ours) == 12 and len(set(ours.values())) > 1  # answers that depend on the image
    theirs = lmms_eval_task.run(PYTHON, model_dir, questions, base / f"lmms_{name}", MAX_NEW)
    assert theirs == ours
    records = json.loads(questions.read_text())
    assert sorted(theirs) == sorted(r["id"] for r in records)
