"""Who writes what under each run-directory layout, and when the nodes' claims disagree
(llava_hydra.train.nodes; the two-node runs are in tests/test_two_nodes.py, ``-m slow``)."""

from __future__ import annotations

from pathlib import Path

from llava_hydra.train.nodes import Roles, complete_node_copy, disagreement, gather_on_every_node, roles


def test_shared_dir_rank_0_writes_node_local_each_nodes_local_rank_0():
    # 2 nodes x 2 processes: (rank, local rank)
    procs = [(0, 0), (1, 1), (2, 0), (3, 1)]
    assert [roles(False, r, lr) for r, lr in procs] == [Roles(True, True), Roles(False, False),
                                                        Roles(False, False), Roles(False, False)]
    assert [roles(True, r, lr) for r, lr in procs] == [Roles(True, True), Roles(False, False),
                                                       Roles(True, True), Roles(False, False)]


def report(rank, node, resume, seen="run-a", run_dir="/runs/x"):
    return {"rank": rank, "node": node, "host": f"host{node}", "run_dir": run_dir, "resume": resume,
            "seen_run_id": seen, "run_id": "run-a", "error": None}


def test_every_node_resuming_the_same_checkpoint_agrees():
    assert disagreement([report(0, 0, "checkpoint-3"), report(1, 1, "checkpoint-3")], True) is None
    assert disagreement([report(0, 0, None), report(1, 1, None)], False) is None


def test_a_node_without_the_checkpoint_is_named_not_restarted_from_zero():
    message = disagreement([report(0, 0, "checkpoint-6"), report(1, 1, None, run_dir="/local/x")], True)
    assert message.splitlines()[1:3] == ["  node 0 rank 0 (host0): checkpoint-6 in /runs/x",
                                         "  node 1 rank 1 (host1): no intact checkpoint in /local/x"]
    assert "copy checkpoint-6 into each node's run directory" in message


def test_a_shared_layout_that_node_1_cannot_see_is_refused():
    message = disagreement([report(0, 0, None), report(1, 1, None, seen=None, run_dir="/local/x")], False)
    assert message.startswith("training.output_dir is not one directory shared by every node: "
                              "node 1 (host1: /local/x) does not see rank 0's run.json (run run-a")
    assert "training.save_on_each_node=true" in message
    # node-local copies are not expected to see rank 0's run.json
    assert disagreement([report(0, 0, None), report(1, 1, None, seen="run-a")], True) is None


def test_a_node_local_deepspeed_copy_gets_the_latest_tag(tmp_path: Path):
    (tmp_path / "global_step3").mkdir()
    complete_node_copy(str(tmp_path))
    assert (tmp_path / "latest").read_text() == "global_step3"


class _Engine:
    """What gather_on_every_node uses of a DeepSpeed engine (ZeRO-3), around a plain module."""

    def __init__(self, module, zero3=True):
        self.module, self.zero3, self.events = module, zero3, []
        self.optimizer = self

    def zero_optimization_partition_weights(self):
        return self.zero3

    def _optimizer_has_ckpt_event_prologue(self):
        return True

    def _optimizer_has_ckpt_event_epilogue(self):
        return True

    def checkpoint_event_prologue(self):
        self.events.append("prologue")

    def checkpoint_event_epilogue(self):
        self.events.append("epilogue")

    def _zero3_consolidated_16bit_state_dict(self, exclude_frozen_parameters=False):
        return None  # DeepSpeed's own on a rank other than 0: node 1's file would hold no weights


def _tiny():
    import torch

    model = torch.nn.Sequential(torch.nn.Embedding(3, 2), torch.nn.Linear(2, 3, bias=False), torch.nn.LayerNorm(2))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]))
        model[2].weight.copy_(torch.tensor([7.0, 8.0]))
    model[1].weight = model[0].weight  # tied, as an LLM's embedding and head
    model[2].register_buffer("kept", torch.tensor([9.0]))
    model[2].register_buffer("scratch", torch.tensor([0.0]), persistent=False)
    return model


def test_each_node_writer_under_zero3_gets_the_whole_model_others_none():
    import torch

    writer, other = _Engine(_tiny()), _Engine(_tiny())
    gather_on_every_node(writer, keeps=True)
    gather_on_every_node(other, keeps=False)
    state = writer._zero3_consolidated_16bit_state_dict()
    assert sorted(state) == ["0.weight", "1.weight", "2.bias", "2.kept", "2.weight"]
    assert state["0.weight"].tolist() == [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]
    assert state["1.weight"] is state["0.weight"]  # a tied weight stays one tensor
    assert state["2.weight"].tolist() == [7.0, 8.0] and state["2.kept"].tolist() == [9.0]
    assert writer.events == ["prologue", "epilogue"]
    assert other._zero3_consolidated_16bit_state_dict() is None and other.events == ["prologue", "epilogue"]
    writer.module[2].weight.requires_grad_(False)
    assert "2.weight" not in writer._zero3_consolidated_16bit_state_dict(exclude_frozen_parameters=True)
    assert isinstance(state["0.weight"], torch.Tensor)


def test_without_zero3_the_engine_is_left_as_it_is():
    engine = _Engine(_tiny(), zero3=False)
    gather_on_every_node(engine, keeps=True)
    assert engine._zero3_consolidated_16bit_state_dict() is None
    gather_on_every_node(None, keeps=True)  # no engine yet (nothing trained): nothing to do
