"""A newcomer's first hour: runs that train different things get different directories, the run
directory is one setting (checkpoints, .hydra/, the log and metrics follow training.output_dir), and
the common mistakes are answered in a line or a few, with no traceback and before torch is imported
(a stand-in ``torch`` on PYTHONPATH records whether anything imported it)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from llava_hydra.train.checkpoint_trust import note_written
from llava_hydra.train.checkpoints import MANIFEST, RUN_FILE, write_checkpoint_record

SMALL = ["data.synthetic.num_images=32", "data.synthetic.num_text_only=8", "data.synthetic.num_eval=4",
         "training.per_device_train_batch_size=4", "training.max_steps=1", "eval.max_samples=2"]


@pytest.mark.parametrize("overrides, run_dir", [
    ((), "/o/tiny/pretrain"),
    (("stage=finetune",), "/o/tiny/finetune"),
    (("stage=finetune", "lora=lora"), "/o/tiny/finetune_lora"),
    (("stage=finetune", "lora=qlora"), "/o/tiny/finetune_qlora"),
    (("stage=finetune", "lora=qlora", "lora.bits=8"), "/o/tiny/finetune_qlora8"),
    (("stage=finetune", "data.data_path=/data/mine/qa.json", "data.image_folder=/data/mine/images"),
     "/o/tiny/finetune_qa"),
    (("stage=finetune", "lora=lora", "data.data_path=/data/mine/charts v2.jsonl"), "/o/tiny/finetune_lora_charts-v2"),
    (("stage=finetune", "data=llava15_finetune"), "/o/tiny/finetune"),  # the file's own data_path
    (("stage=finetune", "model=vicuna13b"), "/o/vicuna13b/finetune"),
    (("experiment=llava15_7b_finetune_lora",), "/o/vicuna7b/finetune_lora"),
    (("experiment=llava15_7b_finetune_task_lora",), "/o/vicuna7b/finetune_task_lora"),
    (("experiment=llava15_7b_finetune_task", "data.data_path=/d/ocr.json"), "/o/vicuna7b/finetune_task_ocr"),
])
def test_runs_that_train_different_things_get_different_directories(compose_spec, overrides, run_dir):
    cfg = compose_spec("paths.output_root=/o", *overrides, return_hydra_config=True)
    assert cfg.run_dir == cfg.training.output_dir == cfg.hydra.run.dir == run_dir
    if cfg.stage.name == "finetune" and "task" not in run_dir:  # stage 1's projector of the same model
        assert cfg.stage.pretrain_mm_mlp_adapter == f"/o/{cfg.model.name}/pretrain/mm_projector.safetensors"


def test_a_data_file_of_ones_own_names_the_run_directory(compose_spec, tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "my_charts.yaml").write_text(
        "name: my_charts\ndata_path: /d/charts.json\nimage_folder: /d/img\ntemplate: v1\n")
    cfg = compose_spec("paths.output_root=/o", "stage=finetune", "data=my_charts", f"hydra.searchpath=[file://{tmp_path}]")
    assert cfg.run_dir == "/o/tiny/finetune_my_charts"


def test_training_output_dir_moves_the_hydra_record_too(compose_spec):
    cfg = compose_spec("training.output_dir=/elsewhere/x", return_hydra_config=True)
    assert cfg.hydra.run.dir == "/elsewhere/x" and cfg.run_dir == "outputs/tiny/pretrain"


def test_a_run_in_training_output_dir_writes_its_record_and_log_there(tmp_path):
    target = tmp_path / "mine"
    done = subprocess.run([sys.executable, "-m", "llava_hydra", f"training.output_dir={target}",
                           f"paths.output_root={tmp_path / 'out'}", *SMALL],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (target / ".hydra" / "config.yaml").is_file() and (target / ".hydra" / "overrides.yaml").is_file()
    assert "train done" in (target / "tiny_pretrain.log").read_text()
    assert (target / "metrics.json").is_file() and (target / "mm_projector.safetensors").is_file()
    assert not (tmp_path / "out" / "tiny").exists()  # nothing went to the default run directory
    # the console: our lines and our bar only; the other libraries' noise is in the log file, at DEBUG
    console = done.stdout + done.stderr
    for noise in NOISE:
        assert noise not in console, noise
    assert "train done" in console and "it/s]" in console  # our log lines and our progress bar
    log = (target / "tiny_pretrain.log").read_text()
    assert "[DeepSpeed][DEBUG] - Setting accelerator to CPU" in log
    assert not re.search(r"\]\[(bitsandbytes|DeepSpeed|py\.warnings)[^\]]*\]\[WARNING\]", log)


NOISE = ("gemm_4bit", "Setting accelerator to CPU", "Saving the dataset", "Loading weights", "Writing model shards",
         "FutureWarning", "DeprecationWarning", "torchrun")


def test_other_packages_warnings_go_to_the_log_file_at_debug(tmp_path):
    import io
    import logging
    import warnings

    from omegaconf import OmegaConf

    from llava_hydra.commands.console import quiet_console

    root = logging.getLogger()
    saved = root.handlers[:], root.level
    console, file = logging.StreamHandler(io.StringIO()), logging.FileHandler(tmp_path / "run.log")
    fmt = logging.Formatter("[%(name)s][%(levelname)s] - %(message)s")
    console.setFormatter(fmt), file.setFormatter(fmt)
    root.handlers[:] = [console, file]
    root.setLevel(logging.INFO)
    try:
        quiet_console(OmegaConf.create({"lora": {"enable": False, "bits": 16}, "deepspeed": None}))
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.warn_explicit("`foo` is deprecated", FutureWarning, "transformers/x.py", 1)
            warnings.warn_explicit("torch.distributed.launch is deprecated, use torchrun", FutureWarning,
                                   "torch/distributed/launch.py", 2)
            warnings.warn_explicit("your images are all black", UserWarning, "somelib/y.py", 3)
        logging.getLogger("bitsandbytes.backends.cpu.ops").warning("Failed to load CPU gemm_4bit_forward")
        logging.getLogger("DeepSpeed").warning("Setting accelerator to CPU. If you have GPU ...")
        logging.getLogger("llava_hydra").warning("3 samples skipped")
    finally:
        logging.captureWarnings(False)
        logging.getLogger("DeepSpeed").filters.clear()
        root.handlers[:], _ = saved
        root.setLevel(saved[1])
        file.close()
    shown = console.stream.getvalue()
    assert "deprecated" not in shown and "gemm_4bit" not in shown and "Setting accelerator" not in shown
    assert "your images are all black" in shown and "[llava_hydra][WARNING] - 3 samples skipped" in shown
    log = (tmp_path / "run.log").read_text()
    assert "[py.warnings][DEBUG]" in log and "FutureWarning: `foo` is deprecated" in log and "use torchrun" in log
    assert "[bitsandbytes.backends.cpu.ops][DEBUG] - Failed to load CPU gemm_4bit_forward" in log
    assert "[DeepSpeed][DEBUG] - Setting accelerator to CPU" in log


# -- refusals: no traceback, before torch -----------------------------------------------------------

@pytest.fixture
def fake_torch(tmp_path):
    """A ``torch`` that writes a mark when imported (then fails): the refusals must come before it."""
    root = tmp_path / "fake_torch"
    (root / "torch").mkdir(parents=True)
    (root / "torch" / "__init__.py").write_text(
        "import os\nopen(os.environ['TORCH_MARK'], 'w').write('imported')\nraise ImportError('stand-in torch')\n")
    return root


def refused(tmp_path, fake_torch, *overrides, cwd=None):
    """(exit status, stdout, stderr, seconds) of python -m llava_hydra with the stand-in torch."""
    mark = tmp_path / "torch_imported"
    env = {**os.environ, "PYTHONPATH": str(fake_torch), "TORCH_MARK": str(mark)}
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "llava_hydra", *overrides], cwd=cwd or tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    seconds = time.perf_counter() - started
    assert not mark.exists(), f"torch was imported before the answer:\n{done.stderr[-2000:]}"
    assert "Traceback" not in done.stderr + done.stdout
    assert seconds < 3, seconds
    return done.returncode, done.stdout, done.stderr, seconds


def test_a_typo_in_a_key_is_one_line_with_the_key_it_nearly_is(tmp_path, fake_torch):
    status, out, err, _ = refused(tmp_path, fake_torch, "training.learnig_rate=1e-4")
    assert status == 1
    assert err == "error: training.learnig_rate: no such key (did you mean training.learning_rate?)\n"


def test_a_transformers_field_without_plus_is_told_to_take_the_plus(tmp_path, fake_torch):
    status, _, err, _ = refused(tmp_path, fake_torch, "training.label_smoothing_factor=0.1")
    assert status == 1
    assert err == ("error: training.label_smoothing_factor: not in the run spec's schema; it is a TrainingArguments "
                   "field: add it with +training.label_smoothing_factor=...\n")


def test_a_path_given_as_the_model_option_says_where_paths_go(tmp_path, fake_torch):
    status, _, err, _ = refused(tmp_path, fake_torch, "model=/models/vicuna-7b-v1.5")
    assert status == 1 and len(err.splitlines()) == 1
    assert err.startswith("error: model=/models/vicuna-7b-v1.5: model= takes the name of a config file, not a path; "
                          "paths go in model.llm=/models/vicuna-7b-v1.5 (the language model) or "
                          "model.pretrained_llava=/models/vicuna-7b-v1.5")


def test_missing_data_file_and_image_folder_are_named_with_the_spec_problems(tmp_path, fake_torch):
    status, _, err, _ = refused(tmp_path, fake_torch, "stage=finetune", "stage.pretrain_mm_mlp_adapter=null",
                                f"data.data_path={tmp_path}/mine/qa.json", f"data.image_folder={tmp_path}/mine/images")
    assert status == 1
    assert err.splitlines() == ["error: the run spec has 2 problems:",
                                f"  no such file: {tmp_path}/mine/qa.json (data.data_path)",
                                f"  no such folder: {tmp_path}/mine/images (data.image_folder)"]


def _finished_run(run_dir: Path) -> bytes:
    run_dir.mkdir(parents=True)
    (run_dir / "run.json").write_text(json.dumps({"run_id": "run-a", "started": "2026-01-01 00:00:00"}))
    (run_dir / "mm_projector.safetensors").write_bytes(b"x")
    metrics = json.dumps({"train_steps": 50, "train_loss": 1.25, "wall_time_s": 12.5}).encode()
    (run_dir / "metrics.json").write_bytes(metrics)
    return metrics


def test_a_taken_run_directory_offers_only_ways_out_that_work(tmp_path, fake_torch):
    _finished_run(tmp_path / "outputs" / "tiny" / "pretrain")
    status, _, err, _ = refused(tmp_path, fake_torch)
    assert status == 1
    assert err.splitlines() == [
        "error: outputs/tiny/pretrain already holds a finished run (run run-a, started 2026-01-01 00:00:00) "
        "(train_steps 50, train_loss 1.25, wall_time_s 12.5).",
        "  a new run beside it:   add training.output_dir=outputs/tiny/pretrain-2",
        "  replace it (deletes its checkpoints and outputs): add training.overwrite_output_dir=true"]


def test_a_checkpoint_of_another_spec_is_not_offered_for_resuming(tmp_path, fake_torch, compose_spec):
    from omegaconf import OmegaConf

    spec = OmegaConf.to_container(compose_spec("training.learning_rate=0.5"), resolve=True)
    checkpoint = tmp_path / "outputs" / "tiny" / "pretrain" / "checkpoint-6"
    checkpoint.mkdir(parents=True)
    (checkpoint / "weights.bin").write_bytes(b"12345")
    write_checkpoint_record(checkpoint, "run-b", spec, 1.0)
    (checkpoint.parent / RUN_FILE).write_text(json.dumps({"run_id": "run-b", "checkpoints": []}))
    note_written(checkpoint.parent / RUN_FILE, checkpoint, MANIFEST)  # as the trainer lists what the run wrote
    status, _, err, _ = refused(tmp_path, fake_torch)
    assert status == 1
    assert "resume_from_checkpoint=auto" not in err  # it would be refused
    assert err.splitlines()[0] == ("error: outputs/tiny/pretrain already holds another run (run run-b): checkpoint-6 "
                                   "(continuing it is refused: this spec differs from it in 1 key: "
                                   "training.learning_rate).")
    assert "  a new run beside it:   add training.output_dir=outputs/tiny/pretrain-2" in err.splitlines()


def test_resuming_a_finished_run_says_so_and_leaves_its_metrics(tmp_path, fake_torch):
    metrics = _finished_run(tmp_path / "outputs" / "tiny" / "pretrain")
    status, out, err, _ = refused(tmp_path, fake_torch, "training.resume_from_checkpoint=auto")
    assert status == 0
    assert out == ("outputs/tiny/pretrain: that run has finished (train_steps 50, train_loss 1.25, wall_time_s 12.5); "
                   "nothing to resume, metrics.json left as it is. A new run beside it: "
                   "training.output_dir=outputs/tiny/pretrain-2\n")
    assert (tmp_path / "outputs" / "tiny" / "pretrain" / "metrics.json").read_bytes() == metrics


# -- loss.png ----------------------------------------------------------------------------------------

def test_the_smoothed_loss_has_no_lag_and_ends_at_the_raw_loss():
    from llava_hydra.train.progress import smoothed

    assert smoothed([float(i) for i in range(40)]) == [float(i) for i in range(40)]  # a straight line kept
    # a short run's loss still falling (35 logged points, as stage 2 of the default): the line ends at it
    raw = [5.0 * 0.9 ** i + (0.05 if i % 2 else -0.05) for i in range(35)]
    assert abs(smoothed(raw)[-1] - raw[-1]) < 0.06  # an exponential average (weight 0.9) ends 0.41 above


def test_an_eval_point_at_one_is_drawn_whole_and_the_legend_covers_no_point(tmp_path):
    import matplotlib.pyplot as plt

    from llava_hydra.train.progress import loss_figure, plot_loss

    history = [{"loss": 5.0 - 0.1 * s, "step": s} for s in range(1, 31)] + [
        {"eval_accuracy": 0.5, "step": 10}, {"eval_accuracy": 1.0, "step": 30}]
    fig = loss_figure(history)
    ax, acc = fig.axes
    fig.canvas.draw()
    assert acc.get_ylim()[1] > 1.0  # room above 1.0 for the marker
    assert ax.get_legend().get_window_extent().y0 >= ax.get_window_extent().y1 - 1  # above the plotting area
    plt.close(fig)
    assert plot_loss(history, tmp_path / "loss.png") and (tmp_path / "loss.png").stat().st_size > 1000
