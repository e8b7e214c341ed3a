"""Skip counts (data.on_bad_sample=skip) are joined over every rank and every DataLoader
worker before they reach the log and metrics.json: two processes (torchrun, gloo), each
skipping different bad samples in its worker processes, both report the total."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from launching import torchrun
from stand_ins import turns

HELPER = Path(__file__).parent / "helpers" / "skips_across_ranks.py"


def test_each_rank_reports_the_skips_of_every_rank_and_worker(tmp_path):
    folder = tmp_path / "img"
    folder.mkdir()
    Image.new("RGB", (20, 20), (0, 200, 0)).save(folder / "ok.png")
    good = {"image": "ok.png", "conversations": turns("<image>\nWhat color?", "Green.")}
    records = [{**good, "id": f"g{k}"} for k in range(12)]
    records[1] = {**good, "id": "missing", "image": "gone.png"}  # rank 0's half (0-5)
    records[7] = {"id": "empty", "conversations": turns("Hi.", "")}  # rank 1's half (6-11)
    records[9] = {**good, "id": "in_answer", "conversations": turns("<image>\nWhat?", "A <image>")}
    data = tmp_path / "data.json"
    data.write_text(json.dumps(records))
    done = torchrun(str(HELPER), str(data), str(folder), str(tmp_path), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-4000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["rows"] for r in ranks] == [6, 6]
    assert [r["main_process_seen"] for r in ranks] == [0, 0]  # every skip happened in a worker process
    # this rank's workers: rank 0 also tries sample 1's first stand-in draw, 9, bad too (data/stand_in.py)
    assert [r["local"] for r in ranks] == [2, 2]
    assert [r["all"] for r in ranks] == [3, 3]  # every rank's
    assert ranks[1]["by_reason"] == {"missing_image": 1, "empty_answer": 1, "image_in_answer": 1}
    assert sorted(m.split(": ", 1)[1].split(")")[0] for m in ranks[0]["examples"]) == \
        ["sample 1 (id='missing'", "sample 7 (id='empty'", "sample 9 (id='in_answer'"]


@pytest.mark.e2e
def test_metrics_json_holds_the_total_of_two_processes_with_workers(tmp_path):
    """A finetune run under torchrun (2 processes, 2 DataLoader workers each) on data with bad
    samples spread over the ranks: metrics.json counts them all."""
    folder = tmp_path / "img"
    folder.mkdir()
    for k, rgb in enumerate([(200, 0, 0), (0, 200, 0), (0, 0, 200)]):
        Image.new("RGB", (24, 24), rgb).save(folder / f"c{k}.png")
    records = []
    for k in range(40):
        records.append({"id": f"s{k}", "image": f"c{k % 3}.png",
                        "conversations": turns("<image>\nWhat color is it?", ["Red.", "Green.", "Blue."][k % 3])})
    for k in range(0, 40, 5):  # 8 bad samples, every fifth: drawn by both ranks
        records[k] = {**records[k], "image": f"gone{k}.png"}
    data = tmp_path / "data.json"
    data.write_text(json.dumps(records))
    out = tmp_path / "out"
    done = torchrun("-m", "llava_hydra", "stage=finetune", "stage.pretrain_mm_mlp_adapter=null", "deepspeed=none",
                    f"data.data_path={data}", f"data.image_folder={folder}", "data.synthetic=null",
                    "data.on_bad_sample=skip", f"paths.output_root={out}", f"paths.cache_dir={tmp_path / 'cache'}",
                    "training.dataloader_num_workers=2", "training.per_device_train_batch_size=4",
                    "training.num_train_epochs=1", "training.max_steps=-1", "training.logging_steps=1",
                    "training.group_by_modality_length=false", "eval.enable=false", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-4000:]
    metrics = json.loads((out / "tiny" / "finetune_data" / "metrics.json").read_text())  # data.json's run directory
    assert metrics["train_samples"] == 40 and metrics["skipped_samples"] == 8, metrics
