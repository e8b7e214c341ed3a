"""A worker of launcher.nproc_per_node leaves the process group when its run ends, finished or
failed: a gloo rank that exits with its group alive can abort at interpreter exit ("terminate
called without an active exception"), and torchrun then reports a finished run as failed."""

from __future__ import annotations

import pytest
import torch.distributed as dist

from llava_hydra.commands import runner, worker


@pytest.fixture
def one_rank_group(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    yield
    if dist.is_initialized():
        dist.destroy_process_group()


@pytest.mark.parametrize("fails", [False, True])
def test_worker_leaves_the_process_group_after_its_run(tmp_path, one_rank_group, monkeypatch, fails):
    def run(cfg):
        assert dist.is_initialized()
        if fails:
            raise RuntimeError("the run failed")

    monkeypatch.setattr(runner, "run", run)
    spec = tmp_path / "launch_spec.yaml"
    spec.write_text("stage: {name: finetune}\n")
    if fails:
        with pytest.raises(RuntimeError, match="the run failed"):
            worker.main(str(spec))
    else:
        worker.main(str(spec))
    assert not dist.is_initialized()
