"""A mixture end to end: LLaVA-NeXT's YAML as data.data_path trains, TensorBoard (offline) gets
loss and tokens per source at every logged step whose token-weighted mean is the logged loss, the
selection is in the run spec (a resume under a changed mixture file is refused naming it), and
``data.check`` reports per source and in total."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from llava_hydra.commands.runner import run

pytestmark = pytest.mark.e2e

SMALL = ["data.synthetic.num_images=48", "data.synthetic.num_text_only=8", "data.synthetic.num_eval=8",
         "training.per_device_train_batch_size=4", "training.logging_steps=1", "training.warmup_ratio=0",
         "stage=finetune", "stage.pretrain_mm_mlp_adapter=null", "eval.enable=false", "training.disable_tqdm=true"]


@pytest.fixture(scope="module")
def mixture(tmp_path_factory):
    """The synthetic data as a two-source LLaVA-NeXT mixture file: half the questions (first:50%),
    20 random captions."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    from llava_hydra.config.schema import register_configs
    from llava_hydra.data.synthetic import prepare

    root = tmp_path_factory.mktemp("mix")
    cache = root / "cache"
    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_module("llava_hydra.conf", version_base="1.3"):
        spec = compose("config", overrides=[f"paths.cache_dir={cache}", *SMALL])
    GlobalHydra.instance().clear()
    prepare(spec)
    synthetic = Path(spec.data.data_path).parent
    assert len(json.loads((synthetic / "qa.json").read_text())) == 56  # 48 with an image + 8 text-only
    assert len(json.loads((synthetic / "captions.json").read_text())) == 48
    mix = root / "mix.yaml"
    mix.write_text("datasets:\n"
                   f"  - json_path: {synthetic / 'qa.json'}\n    sampling_strategy: \"first:50%\"\n"
                   f"  - json_path: {synthetic / 'captions.json'}\n    sampling_strategy: random:20\n")
    return mix, cache


def scalars(run_dir: Path) -> dict[str, dict[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    return {tag: {e.step: e.value for e in events.Scalars(tag)} for tag in events.Tags()["scalars"]}


def test_llava_next_yaml_trains_and_logs_loss_per_source(compose_spec, tmp_path, mixture, caplog):
    pytest.importorskip("tensorboard")
    caplog.set_level(logging.INFO, logger="llava_hydra")
    mix, cache = mixture
    base = [f"paths.output_root={tmp_path}", f"paths.cache_dir={cache}", *SMALL, f"data.data_path={mix}",
            "training.report_to=[tensorboard]", "training.save_steps=2"]
    run(compose_spec(*base, "training.max_steps=3"))
    out = tmp_path / "tiny" / "finetune_mix"  # a mixture file of the user's own names the run dir
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["train_samples"] == 28 + 20 and metrics["train_steps"] == 3  # ceil(50% of 56) + 20

    tags = scalars(out)
    assert {"train/loss/qa", "train/tokens/qa", "train/loss/captions", "train/tokens/captions"} <= set(tags)
    for step, loss in tags["train/loss"].items():  # every logged step (logging_steps=1)
        tokens = {s: tags[f"train/tokens/{s}"][step] for s in ("qa", "captions")}
        assert step in tags["train/tokens/qa"] and sum(tokens.values()) > 0
        weighted = sum(tags[f"train/loss/{s}"][step] * n for s, n in tokens.items() if n) / sum(tokens.values())
        assert weighted == pytest.approx(loss, rel=1e-4)  # written-out tolerance: float32 sums, float32 events
    assert sorted(tags["train/loss"]) == [1, 2, 3]
    lines = [r.getMessage() for r in caplog.records if "| loss " in r.getMessage()]
    assert len(lines) == 3 and all("| sources qa " in line and " tok), captions " in line for line in lines), lines

    # the selection is in the run spec every checkpoint records
    from llava_hydra.train.checkpoints import CheckpointError, numbered_checkpoints, read_record

    assert [p.name for p in numbered_checkpoints(out)] == ["checkpoint-3"]  # the last step is saved too; limit 1
    selection = read_record(numbered_checkpoints(out)[0])["spec"]["data"]["selection"]
    assert {k: (v["records"], v["sampling_strategy"], v["selected"]) for k, v in selection.items()} == {
        "qa": (56, "first:50%", 28), "captions": (48, "random:20", 20)}

    # a resume under an edited mixture file (same data.data_path) is refused, naming what changed
    mix.write_text(mix.read_text().replace("first:50%", "first:25%"))
    try:
        with pytest.raises(CheckpointError, match=r"data\.selection\.qa\.sampling_strategy: 'first:50%' -> "
                                                  r"'first:25%'"):
            run(compose_spec(*base, "training.max_steps=4", "training.resume_from_checkpoint=true"))
    finally:
        mix.write_text(mix.read_text().replace("first:25%", "first:50%"))


def test_data_check_reports_per_source_and_in_total(mixture, capsys, tmp_path):
    from llava_hydra.data.check import main

    mix, cache = mixture
    report = tmp_path / "check.json"
    code = main([f"paths.cache_dir={cache}", *SMALL, f"data.data_path={mix}", "--json", str(report)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "== source qa: 28 of 56 records selected (first:50%), 28 samples per epoch, 0 of the selected" in printed
    assert "== source captions: 20 of 48 records selected (random:20), 20 samples per epoch, 0 of" in printed
    assert "== total: 2 sources, 48 samples per epoch (48 records selected of 104)" in printed
    found = json.loads(report.read_text())
    assert [found["sources"][s]["text_only_samples"] for s in ("qa", "captions")] == [8, 0]
    assert found["total"]["image_samples"] == 96 and found["total"]["errors"] == 0


def test_two_processes_log_the_sums_of_both_ranks(compose_spec, tmp_path, mixture):
    """Under 2 processes each rank sees half of every step: the per-source sums are added across
    ranks before logging, so step 1 (the same 4 samples as one process with batch 4: the sampler's
    global order) logs the same tokens and losses per source as the single process; rank 0's sums
    alone would hold about half the tokens."""
    pytest.importorskip("tensorboard")
    from launching import torchrun

    mix, cache = mixture
    common = [f"paths.cache_dir={cache}", *SMALL, f"data.data_path={mix}", "training.report_to=[tensorboard]"]
    run(compose_spec(f"paths.output_root={tmp_path / 'one'}", *common, "training.max_steps=1"))
    done = torchrun("-m", "llava_hydra", "deepspeed=none", f"paths.output_root={tmp_path / 'two'}", *common,
                    "training.max_steps=1", "training.per_device_train_batch_size=2", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-4000:]
    one, two = (scalars(tmp_path / d / "tiny" / "finetune_mix") for d in ("one", "two"))
    for source in ("qa", "captions"):
        assert two[f"train/tokens/{source}"] == one[f"train/tokens/{source}"]
        assert two[f"train/loss/{source}"][1] == pytest.approx(one[f"train/loss/{source}"][1], rel=1e-4)
    assert sum(one[f"train/tokens/{s}"][1] for s in ("qa", "captions")) == 18  # 8 + 10 answer tokens in step 1


def test_inline_sources_packed_log_loss_per_source(compose_spec, tmp_path, mixture):
    """data=synthetic_mixture (data.sources in the config) under training.packing: rows hold samples
    of both sources, and the per-source losses still average to the logged loss."""
    pytest.importorskip("tensorboard")
    _, cache = mixture
    run(compose_spec(f"paths.output_root={tmp_path}", f"paths.cache_dir={cache}", *SMALL, "data=synthetic_mixture",
                     "training.packing=true", "training.report_to=[tensorboard]", "training.max_steps=2"))
    out = tmp_path / "tiny" / "finetune_synthetic_mixture"
    samples = json.loads((out / "metrics.json").read_text())["train_samples"]
    assert samples == 28 + 2 * 12  # first:50% of 56, twice 25% of 48
    tags = scalars(out)
    assert sorted(tags["train/loss"]) == [1, 2]
    for step, loss in tags["train/loss"].items():
        tokens = {s: tags[f"train/tokens/{s}"][step] for s in ("qa", "captions")}
        weighted = sum(tags[f"train/loss/{s}"][step] * n for s, n in tokens.items() if n) / sum(tokens.values())
        assert weighted == pytest.approx(loss, rel=1e-4)


def test_each_source_reads_images_from_its_own_folder(mixture, capsys, tmp_path):
    """A source's image_folder replaces data.image_folder for that source alone: captions pointed
    at a folder holding only 5 of their images report the other 43 missing, the questions none."""
    import shutil

    from llava_hydra.data.check import main

    _, cache = mixture
    synthetic = cache / "synthetic"
    captions = json.loads((synthetic / "captions.json").read_text())
    partial = tmp_path / "some_images"
    for record in captions[:5]:
        (partial / record["image"]).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(synthetic / "images" / record["image"], partial / record["image"])
    two = tmp_path / "two.yaml"
    two.write_text(f"datasets:\n  - json_path: {synthetic / 'qa.json'}\n"
                   f"  - json_path: {synthetic / 'captions.json'}\n    image_folder: {partial}\n")
    report = tmp_path / "check.json"
    assert main([f"paths.cache_dir={cache}", *SMALL, f"data.data_path={two}", "--json", str(report)]) == 1
    found = json.loads(report.read_text())["sources"]
    assert len(found["qa"]["found"]["missing_image"]) == 0
    assert len(found["captions"]["found"]["missing_image"]) == 43
    assert [found["captions"]["bad_selected"], found["qa"]["bad_selected"]] == [43, 0]  # strategy all: every record
    capsys.readouterr()
