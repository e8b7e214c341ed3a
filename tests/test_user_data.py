"""A user's data is only read: with the default model (tiny, whose data group generates the
synthetic shapes) a run and ``python -m llava_hydra.data.check`` given ``data.data_path`` and
``data.image_folder`` leave the user's file and folder byte-identical with no file added, train
on the user's records (not synthetic ones), and do not evaluate on the synthetic held-out set.
Generated data lives under paths.cache_dir only."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from PIL import Image

from llava_hydra.data import check


def snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def user_data(tmp_path):
    """tmp/user/qa.json (6 records: 4 with an image) + tmp/user/images/ — the layout README shows."""
    root = tmp_path / "user"
    (root / "images").mkdir(parents=True)
    for name, color in (("r.png", "red"), ("b.png", "blue")):
        Image.new("RGB", (40, 36), color).save(root / "images" / name)
    turn = lambda q, a: [{"from": "human", "value": q}, {"from": "gpt", "value": a}]  # noqa: E731
    records = [{"id": f"u{i}", "image": img, "conversations": turn("<image>\nWhat color is the shape?", color)}
               for i, (img, color) in enumerate([("r.png", "red"), ("b.png", "blue")] * 2)]
    records += [{"id": f"t{i}", "conversations": turn("Repeat the word: apple", "apple")} for i in range(2)]
    (root / "qa.json").write_text(json.dumps(records))
    return root


def test_run_and_check_only_read_the_users_data(compose_spec, tmp_path, user_data, capsys):
    from llava_hydra.commands.runner import run

    before = snapshot(user_data)
    cache = tmp_path / "cache"
    overrides = [f"data.data_path={user_data / 'qa.json'}", f"data.image_folder={user_data / 'images'}",
                 "stage=finetune", "stage.pretrain_mm_mlp_adapter=null", f"paths.cache_dir={cache}"]
    run(compose_spec(*overrides, f"paths.output_root={tmp_path / 'out'}", "training.max_steps=2",
                     "training.per_device_train_batch_size=2"))
    metrics = json.loads((tmp_path / "out" / "tiny" / "finetune_qa" / "metrics.json").read_text())  # named by qa.json
    assert metrics["train_samples"] == 6  # the user's records, not 1,800 synthetic ones
    assert "eval_accuracy" not in metrics  # not the synthetic held-out set
    assert check.main([*overrides, "--json", str(tmp_path / "report.json")]) == 0
    assert json.loads((tmp_path / "report.json").read_text())["samples"] == 6
    assert snapshot(user_data) == before  # byte-identical, nothing added
    assert not (cache / "synthetic").exists()  # and nothing generated anywhere else either
    assert check.main([*overrides, "--eval"]) == 2  # no eval set goes with the user's data
    assert "eval_data_path is not set" in capsys.readouterr().err


def test_synthetic_data_is_generated_under_the_cache_only(compose_spec, tmp_path):
    from llava_hydra.data.synthetic import eval_data_path, prepare

    cfg = compose_spec("stage=finetune", f"paths.cache_dir={tmp_path / 'cache'}", "data.synthetic.num_images=16",
                       "data.synthetic.num_text_only=2", "data.synthetic.num_eval=2")
    assert prepare(cfg) and not prepare(cfg)  # generated once
    assert {p.name for p in (tmp_path / "cache" / "synthetic").iterdir()} == {
        "images", "captions.json", "qa.json", "qa_eval.json", "manifest.json"}
    assert eval_data_path(cfg) == str(tmp_path / "cache" / "synthetic" / "qa_eval.json")
    own_eval = compose_spec("stage=finetune", f"paths.cache_dir={tmp_path / 'cache'}", "data.data_path=/x/qa.json",
                            "data.eval_data_path=/x/held_out.json")
    assert eval_data_path(own_eval) == "/x/held_out.json"  # a user's own held-out file is used
