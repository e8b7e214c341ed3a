"""The embedded default end to end: stage 1 saves only the projector, stage 2 finds it by
convention, trains, saves a Hugging Face-native model and evaluates it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from llava_hydra.commands.runner import run

pytestmark = pytest.mark.e2e

SMALL = ["data.synthetic.num_images=48", "data.synthetic.num_text_only=8", "data.synthetic.num_eval=8",
         "training.max_steps=3", "training.per_device_train_batch_size=4", "training.save_steps=2", "training.logging_steps=1"]
PROJECTOR_KEYS = {"multi_modal_projector.linear_1.weight", "multi_modal_projector.linear_1.bias",
                  "multi_modal_projector.linear_2.weight", "multi_modal_projector.linear_2.bias"}


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")  # tiny models + data, built once for the module


def test_stage1_saves_projector_only_and_stage2_loads_it(compose_spec, tmp_path, cache_dir):
    paths = [f"paths.output_root={tmp_path}", f"paths.cache_dir={cache_dir}"]
    run(compose_spec(*paths, *SMALL))

    pre = tmp_path / "tiny" / "pretrain"
    saved = load_file(pre / "mm_projector.safetensors")
    assert set(saved) == PROJECTOR_KEYS
    assert not list(pre.rglob("model*.safetensors")), "stage 1 must not save the frozen LLM"
    (checkpoint,) = pre.glob("checkpoint-*")  # save_total_limit 1: projector + state to resume from
    assert set(load_file(checkpoint / "mm_projector.safetensors")) == PROJECTOR_KEYS
    assert {"optimizer.pt", "scheduler.pt", "trainer_state.json"} <= {p.name for p in checkpoint.iterdir()}

    # stage 2's default stage.pretrain_mm_mlp_adapter is that file: the model starts from it
    spec = compose_spec("stage=finetune", *paths, *SMALL)
    from llava_hydra.model import build_model
    from llava_hydra.model.projector import projector_state

    model, _, _ = build_model(spec)
    for key, value in projector_state(model).items():
        torch.testing.assert_close(value, saved[key])

    accuracy = run(spec)
    fin = tmp_path / "tiny" / "finetune"
    metrics = json.loads((fin / "metrics.json").read_text())
    assert metrics["train_steps"] == 3 and metrics["train_loss"] > 0
    assert metrics["eval_accuracy"] == accuracy and metrics["eval_samples"] == 8
    assert (fin / "loss.png").exists()

    from transformers import AutoProcessor, LlavaForConditionalGeneration

    reloaded = LlavaForConditionalGeneration.from_pretrained(fin)  # Hugging Face-native
    for key, value in projector_state(reloaded).items():
        assert not torch.equal(value, saved[key]), f"{key} did not train in stage 2"
    processor = AutoProcessor.from_pretrained(fin)
    assert processor.tokenizer.convert_tokens_to_ids("<image>") == reloaded.config.image_token_index
    # stage 2 trained with image_aspect_ratio=pad: the folder pads as training did (tests/test_stock_clients.py)
    assert type(processor.image_processor).__name__ == "LlavaImageProcessorPil" and processor.image_processor.do_pad


def test_missing_projector_names_the_command_that_makes_it(compose_spec, tmp_path, cache_dir):
    spec = compose_spec("stage=finetune", f"paths.output_root={tmp_path}", f"paths.cache_dir={cache_dir}", *SMALL)
    from llava_hydra.config.validate import SpecError

    with pytest.raises(SpecError) as e:  # refused by the spec's check, before anything loads
        run(spec)
    message = str(e.value)
    assert str(tmp_path / "tiny" / "pretrain" / "mm_projector.safetensors") in message
    assert "python -m llava_hydra stage=pretrain model=tiny" in message


def test_readme_commands_reach_target_accuracy(tmp_path):
    """The two commands of README, unchanged but for where they write: accuracy >= 0.8."""
    where = [f"paths.output_root={tmp_path}", f"paths.cache_dir={tmp_path}/.cache"]
    for stage in ("pretrain", "finetune"):
        subprocess.run([sys.executable, "-m", "llava_hydra", f"stage={stage}", *where], check=True,
                       capture_output=True)
    metrics = json.loads((tmp_path / "tiny" / "finetune" / "metrics.json").read_text())
    assert metrics["eval_accuracy"] >= 0.8, metrics


def test_packed_run_trains_on_rows_and_reports_a_skipped_sample(compose_spec, tmp_path, cache_dir):
    """training.packing through the runner: fewer, fuller steps; a record whose image is missing,
    under data.on_bad_sample=skip, is counted in metrics.json rather than lost silently."""
    from pathlib import Path

    from llava_hydra.data.synthetic import prepare

    base = [f"paths.output_root={tmp_path}", f"paths.cache_dir={cache_dir}", "stage=finetune",
            "stage.pretrain_mm_mlp_adapter=null", *SMALL, "training.max_steps=-1", "training.num_train_epochs=1",
            "eval.enable=false"]
    spec = compose_spec(*base)
    prepare(spec)  # the synthetic data under paths.cache_dir, as a run generates it
    records = json.loads(Path(spec.data.data_path).read_text())
    broken = {**next(r for r in records if r.get("image")), "id": "broken", "image": "missing.png"}
    data = tmp_path / "with_a_broken_image.json"
    data.write_text(json.dumps(records + [broken]))

    run(compose_spec(*base, f"data.data_path={data}", "data.on_bad_sample=skip", "training.packing=true"))
    metrics = json.loads((tmp_path / "tiny" / "finetune_with_a_broken_image" / "metrics.json").read_text())  # its data
    assert metrics["train_samples"] == len(records) + 1 and metrics["skipped_samples"] == 1
    unpacked_steps = -(-(len(records) + 1) // 4)
    assert 0 < metrics["train_steps"] < unpacked_steps * 0.7, metrics  # about two samples per row
    assert metrics["train_loss"] > 0
