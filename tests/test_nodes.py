"""Who writes what under each run-directory layout, and when the nodes' claims disagree
(llava_hydra.train.nodes; the two-node runs are in tests/test_two_nodes.py, ``-m slow``)."""

from __future__ import annotations

from pathlib import Path

from llava_hydra.train.nodes import Roles, complete_node_copy, disagreement, roles


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
