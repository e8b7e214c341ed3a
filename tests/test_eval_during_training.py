"""eval.steps=N scores the held-out questions every N steps during training (logged with the
train loss), and eval.keep_best keeps the best-scoring checkpoint through save_total_limit."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "helpers"))
from local_parts import save_parts, spec_overrides  # noqa: E402

SMALL = ["data.synthetic.num_images=32", "data.synthetic.num_text_only=8", "data.synthetic.num_eval=4",
         "training.max_steps=6", "training.save_steps=2", "training.per_device_train_batch_size=4",
         "training.logging_steps=1", "eval.max_samples=4"]


@pytest.mark.e2e
def test_held_out_accuracy_logged_every_n_steps_and_best_checkpoint_kept(compose_spec, tmp_path):
    from llava_hydra.commands.runner import run

    parts = save_parts(tmp_path / "parts")
    run(compose_spec(*spec_overrides(parts, tmp_path / "cache"), f"paths.output_root={tmp_path}", "stage=finetune",
                     "stage.pretrain_mm_mlp_adapter=null", "eval.steps=2", "eval.keep_best=true",
                     "training.save_total_limit=2", *SMALL))
    run_dir = tmp_path / "tiny" / "finetune"
    state = json.loads((run_dir / "checkpoint-6" / "trainer_state.json").read_text())
    assert [e["step"] for e in state["log_history"] if "eval_accuracy" in e] == [2, 4, 6]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    best = Path(metrics["best_checkpoint"])
    # save_total_limit=2 keeps the newest and the best (never rotated out, however old)
    assert {p.name for p in run_dir.glob("checkpoint-*")} == {best.name, "checkpoint-6"}
    assert state["best_model_checkpoint"] == str(best)
    scores = {e["step"]: e["eval_accuracy"] for e in state["log_history"] if "eval_accuracy" in e}
    assert metrics["best_eval_accuracy"] == max(scores.values())


def test_eval_steps_evaluate_during_training_and_track_the_best(compose_spec, tmp_path):
    from llava_hydra.commands.runner import training_arguments

    args = training_arguments(compose_spec("stage=finetune", "eval.steps=5", "eval.keep_best=true"))
    assert (args.eval_strategy, args.eval_steps, args.metric_for_best_model) == ("steps", 5, "eval_accuracy")
