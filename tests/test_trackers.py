"""A tracker in training.report_to that is not installed stops the run before anything heavy:
the error names the package and the install extra, and no model is built or data generated."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest

from llava_hydra.config import check_trackers


@pytest.fixture
def without(monkeypatch):
    """without(*modules): importlib.util.find_spec reports those modules as not installed."""
    def hide(*modules):
        real = importlib.util.find_spec
        monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in modules else real(name, *a))
    return hide


def test_missing_wandb_names_package_and_extra(without):
    without("wandb")
    with pytest.raises(ValueError, match=r"report_to includes 'wandb'.*wandb package is not installed.*"
                                         r"pip install 'llava_hydra\[wandb\]'"):
        check_trackers(["wandb"])
    check_trackers(["none"])  # nothing to check
    check_trackers("none")


def test_tensorboardx_serves_tensorboard(without):
    without("tensorboard", "tensorboardX")
    with pytest.raises(ValueError, match=r"llava_hydra\[tensorboard\]"):
        check_trackers(["tensorboard"])
    without("tensorboard")
    if importlib.util.find_spec("tensorboardX") is not None:
        check_trackers(["tensorboard"])


def test_tracker_without_our_extra_names_the_pip_package(without):
    without("mlflow")
    with pytest.raises(ValueError, match=r"pip install mlflow,"):
        check_trackers(["none", "mlflow"])


def test_run_stops_before_building_the_model(compose_spec, tmp_path, without, monkeypatch):
    import llava_hydra.model
    from llava_hydra.runner import run

    monkeypatch.setattr(llava_hydra.model, "build_model", lambda cfg: pytest.fail("the model was built"))
    without("wandb")
    with pytest.raises(ValueError, match="wandb"):
        run(compose_spec("training.report_to=[wandb]", f"paths.output_root={tmp_path}",
                         f"paths.cache_dir={tmp_path / 'cache'}"))
    assert not (tmp_path / "cache").exists()  # no tiny model built, no synthetic data written


def test_command_line_error_comes_before_torch_is_imported(tmp_path):
    code = ("import importlib.util, runpy, sys\n"
            "real = importlib.util.find_spec\n"
            "importlib.util.find_spec = lambda n, *a: None if n == 'wandb' else real(n, *a)\n"
            f"sys.argv = ['llava_hydra', 'training.report_to=[wandb]', 'paths.output_root={tmp_path}',"
            f" 'paths.cache_dir={tmp_path / 'cache'}']\n"
            "try:\n"
            "    runpy.run_module('llava_hydra', run_name='__main__')\n"
            "finally:\n"
            "    print('torch imported:', 'torch' in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "pip install 'llava_hydra[wandb]'" in done.stderr + done.stdout
    assert "torch imported: False" in done.stdout
