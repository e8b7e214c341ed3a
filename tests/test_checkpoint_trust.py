"""Which checkpoints ``resume_from_checkpoint=auto`` trusts: a checkpoint whose weights hold NaN
is damaged (skipped with a warning naming file and tensor; an explicit path to it is an error);
a checkpoint-N directory this run did not write (planted, copied, or its manifest replaced) is
skipped unopened, and a run directory holding only such is refused; a failed write on a full
disk says ENOSPC and the path."""

from __future__ import annotations

import errno
import json
import pickle
import shutil
from collections import namedtuple
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from llava_hydra.train import checkpoint_trust
from llava_hydra.train.checkpoint_trust import (CheckpointWriteError, describe_save_failure, note_written,
                                                save_errors_named)
from llava_hydra.train.checkpoints import (MANIFEST, RUN_FILE, CheckpointError, RunDirError, claim_run_dir,
                                           find_resume_checkpoint, write_checkpoint_record)

SPEC = {"model": {"name": "tiny"}, "training": {"learning_rate": 1e-3, "output_dir": "out"}, "run_dir": "out"}


def write(run_dir: Path, step: int, weights: torch.Tensor, listed: bool = True) -> Path:
    """A checkpoint as the trainer writes one, listed in run.json as the trainer lists it."""
    path = run_dir / f"checkpoint-{step}"
    path.mkdir(parents=True)
    save_file({"a": torch.ones(4), "b": weights}, path / "model.safetensors")
    (path / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    write_checkpoint_record(path, "run-a", SPEC, train_loss_sum=1.0)
    if not (run_dir / RUN_FILE).exists():
        (run_dir / RUN_FILE).write_text(json.dumps({"run_id": "run-a", "checkpoints": []}))
    if listed:
        note_written(run_dir / RUN_FILE, path, MANIFEST)
    return path


def test_nan_weights_are_damaged_for_auto_and_an_error_by_path(tmp_path, caplog):
    good = write(tmp_path, 3, torch.zeros(8))
    bad = write(tmp_path, 6, torch.tensor([0.0, float("nan"), 1.0, float("inf")]))
    with caplog.at_level("WARNING"):
        assert find_resume_checkpoint(str(tmp_path), "auto") == str(good)
    assert f"checkpoint-6/model.safetensors: tensor 'b' holds 2 NaN or infinite values of 4" in caplog.text
    with pytest.raises(CheckpointError, match="checkpoint-6/model.safetensors: tensor 'b' holds 2 NaN"):
        find_resume_checkpoint(str(tmp_path), str(bad))


def test_large_finite_bf16_weights_are_not_called_infinite(tmp_path):
    big = torch.full((4096,), 3.0e38, dtype=torch.float32).to(torch.bfloat16)  # their float32 sum would overflow
    path = write(tmp_path, 3, big)
    assert find_resume_checkpoint(str(tmp_path), "auto") == str(path)


def test_a_planted_checkpoint_is_skipped_unopened(tmp_path, caplog):
    good = write(tmp_path, 3, torch.zeros(8))
    planted = tmp_path / "checkpoint-9"
    shutil.copytree(good, planted)  # intact manifest, newer step, not written by this run
    marker = tmp_path / "unpickled"
    (planted / "global_step9").mkdir()  # what DeepSpeed's loader would unpickle
    (planted / "global_step9" / "mp_rank_00_model_states.pt").write_bytes(
        pickle.dumps(Bomb(str(marker))))
    with caplog.at_level("WARNING"):
        assert find_resume_checkpoint(str(tmp_path), "auto") == str(good)
    assert f"skipping checkpoint {planted}: not written by this run ({tmp_path / RUN_FILE} does not list it)" \
        in caplog.text
    assert claim_run_dir(str(tmp_path), SPEC, "auto", is_main=True)[0] == str(good)
    assert not marker.exists()


def test_a_listed_name_with_another_manifest_is_skipped(tmp_path, caplog):
    good = write(tmp_path, 3, torch.zeros(8))
    replaced = write(tmp_path, 6, torch.zeros(8))
    manifest = json.loads((replaced / MANIFEST).read_text())
    manifest["files"]["extra.bin"] = 0
    (replaced / "extra.bin").write_bytes(b"")
    (replaced / MANIFEST).write_text(json.dumps(manifest))  # intact by itself, not the one written
    with caplog.at_level("WARNING"):
        assert find_resume_checkpoint(str(tmp_path), "auto") == str(good)
    assert "checkpoint-6: its checkpoint_manifest.json is not the one this run wrote" in caplog.text


def test_a_run_directory_holding_only_planted_checkpoints_is_refused(tmp_path):
    write(tmp_path, 5, torch.zeros(8), listed=False)
    with pytest.raises(RunDirError, match="checkpoint-5; it has no intact checkpoint to resume"):
        claim_run_dir(str(tmp_path), SPEC, "auto", is_main=True)
    # a run directory from before the list: nothing listed, so auto refuses; an explicit path is allowed
    (tmp_path / RUN_FILE).write_text(json.dumps({"run_id": "run-a"}))
    with pytest.raises(RunDirError):
        claim_run_dir(str(tmp_path), SPEC, "auto", is_main=True)
    explicit = str(tmp_path / "checkpoint-5")
    assert claim_run_dir(str(tmp_path), SPEC, explicit, is_main=True)[0] == explicit


def test_rotation_drops_listed_names_whose_directory_is_gone(tmp_path):
    write(tmp_path, 3, torch.zeros(8))
    shutil.rmtree(tmp_path / "checkpoint-3")  # save_total_limit rotated it away
    write(tmp_path, 6, torch.zeros(8))
    assert [e["name"] for e in json.loads((tmp_path / RUN_FILE).read_text())["checkpoints"]] == ["checkpoint-6"]
    assert json.loads((tmp_path / RUN_FILE).read_text())["run_id"] == "run-a"  # the rest of run.json kept


Usage = namedtuple("Usage", "total used free")


def test_a_full_disk_is_named_with_the_path_and_free_space(tmp_path, monkeypatch):
    target = tmp_path / ".checkpoint-staging" / "checkpoint-3"
    target.mkdir(parents=True)
    (target / "optimizer.pt").write_bytes(b"partial")
    monkeypatch.setattr(checkpoint_trust.shutil, "disk_usage", lambda p: Usage(100 << 30, 100 << 30, 0))
    with pytest.raises(CheckpointWriteError) as e:
        with save_errors_named(target, target.parent):
            raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 4160 vs 4048")
    assert str(e.value).startswith(f"no space left on device (ENOSPC) while writing checkpoint {target}: "
                                   f"0.00 GiB free of 100.0 GiB on its disk (RuntimeError: ")
    assert not target.parent.exists()  # the partial files are gone, their space back


def test_enospc_by_errno_and_other_failures_by_their_own_words(tmp_path, monkeypatch):
    monkeypatch.setattr(checkpoint_trust.shutil, "disk_usage", lambda p: Usage(100 << 30, 50 << 30, 50 << 30))
    by_errno = describe_save_failure(OSError(errno.ENOSPC, "No space left on device"), tmp_path / "c")
    assert by_errno.startswith(f"no space left on device (ENOSPC) while writing checkpoint {tmp_path / 'c'}: "
                               f"50.00 GiB free")
    other = describe_save_failure(PermissionError(errno.EACCES, "Permission denied"), tmp_path / "c")
    assert other == (f"writing checkpoint {tmp_path / 'c'} failed: PermissionError: [Errno 13] Permission denied "
                     f"(50.00 GiB free of 100.0 GiB on its disk)")


class Bomb:
    """Unpickling it writes a marker file (as a malicious pickle would run code)."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (_touch, (self.path,))


def _touch(path: str) -> None:
    Path(path).write_text("ran")
