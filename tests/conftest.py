"""Shared fixtures: Hydra composition of the packaged configs, a tiny tokenizer and model built once."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra

from llava_hydra.config.schema import check_resolves, register_configs

sys.path.insert(0, str(Path(__file__).parent / "helpers"))
# A process the tests start that dies of a fatal signal (SIGABRT from C++ at exit, SIGSEGV) prints
# every thread's Python stack to the stderr the test shows.
os.environ.setdefault("PYTHONFAULTHANDLER", "1")
from local_parts import save_parts  # noqa: E402


@pytest.fixture(autouse=True)
def restore_environment():
    """Each test gives back the environment it started with. Code under test writes os.environ
    directly (``take_local_rank`` sets LOCAL_RANK, as a launcher would; TrainingArguments with a
    DeepSpeed config sets ACCELERATE_USE_DEEPSPEED), and monkeypatch only undoes its own calls:
    a leaked LOCAL_RANK makes every later Trainer try to start a process group."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture
def compose_spec():
    """compose_spec(*overrides) -> DictConfig, composed and checked exactly as `python -m llava_hydra` does."""
    register_configs()

    def _compose(*overrides: str, return_hydra_config: bool = False):
        GlobalHydra.instance().clear()
        with initialize_config_module("llava_hydra.conf", version_base="1.3"):
            cfg = compose("config", overrides=list(overrides), return_hydra_config=return_hydra_config)
        if not return_hydra_config:  # the hydra node resolves only inside a job
            check_resolves(cfg)
        return cfg

    yield _compose
    GlobalHydra.instance().clear()


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    """A tiny Llama + CLIP saved as a user's local copies of hub models (tests/helpers/local_parts.py)."""
    return save_parts(tmp_path_factory.mktemp("parts"))


@pytest.fixture(scope="session")
def bpe400(tmp_path_factory):
    """A byte-level BPE tokenizer (vocab 400) trained once for the data tests (tests/helpers/stand_ins.py)."""
    import stand_ins

    return stand_ins.bpe_tokenizer(tmp_path_factory.mktemp("bpe400"), vocab_size=400)
