"""The one sharded-generation loop (eval/sharding.py): which questions a rank answers, in how many
calls, what it keeps; and the benchmark answers' resume across a change of process count."""

from __future__ import annotations

import json

from llava_hydra.eval import answers, sharding
from llava_hydra.eval.benchmarks import Item


def as_rank(monkeypatch, rank: int, world: int, others: list[dict]) -> None:
    """This process plays ``rank`` of ``world``; the gather returns ``others`` plus its own answers."""
    monkeypatch.setattr(sharding, "rank_and_world", lambda: (rank, world))
    monkeypatch.setattr(sharding, "gather", lambda mine: [*others[:rank], mine, *others[rank:]])


def test_rank_answers_its_share_in_as_many_calls_as_every_rank(monkeypatch):
    items = ["q0", "q1", "q2", "q3", "q4", "q5", "q6"]
    as_rank(monkeypatch, 1, 2, others=[{0: "A0", 2: "A2", 4: "A4", 6: "A6"}])
    calls, seen = [], []
    out = sharding.answer_sharded(items, lambda batch: (calls.append(batch), [q.upper() for q in batch])[1],
                                  batch_size=2, on_batch=lambda batch, got: seen.append((batch, got)))
    # rank 1 of 2: questions 1, 3, 5, padded to rank 0's four rows with a repeat of 5 (not kept)
    assert calls == [["q1", "q3"], ["q5", "q5"]]
    assert seen == [(["q1", "q3"], ["Q1", "Q3"]), (["q5"], ["Q5"])]
    assert out == ["A0", "Q1", "A2", "Q3", "A4", "Q5", "A6"]  # every rank gets all answers, in order


def test_a_rank_with_no_question_still_joins_every_call(monkeypatch):
    as_rank(monkeypatch, 2, 3, others=[{0: "a"}, {1: "b"}])
    calls = []
    out = sharding.answer_sharded(["x", "y"], lambda batch: (calls.append(batch), ["?"] * len(batch))[1], 4)
    assert calls == [["x"]] and out == ["a", "b"]


def test_one_process_answers_everything_in_batches():
    calls = []
    out = sharding.answer_sharded(list(range(5)), lambda b: (calls.append(b), [i * 10 for i in b])[1], 2)
    assert calls == [[0, 1], [2, 3], [4]] and out == [0, 10, 20, 30, 40]


def test_answers_of_a_killed_two_process_run_count_in_a_one_process_rerun(monkeypatch, tmp_path):
    items = [Item(question_id=q, text=f"question {q}", prompt=f"question {q}") for q in (1, 2, 3, 4)]
    path = tmp_path / "answers.jsonl"
    row = {"prompt": "", "answer_id": "old", "model_id": "m", "metadata": {}}
    (tmp_path / "answers.rank0.jsonl").write_text(json.dumps({**row, "question_id": 1, "text": "one"}) + "\n")
    (tmp_path / "answers.rank1.jsonl").write_text(json.dumps({**row, "question_id": 2, "text": "two"}) + "\n{\"torn")
    asked = []
    monkeypatch.setattr(answers, "render", lambda processor, messages: messages[0]["content"][-1]["text"])
    monkeypatch.setattr(answers, "answer", lambda model, processor, prompts, images, aspect, **gen:
                        (asked.extend(prompts), [p.upper() for p in prompts])[1])
    rows = answers.answer_benchmark(None, None, "pad", items, path, "m", batch_size=8, gen={})
    assert asked == ["question 3", "question 4"]
    assert [(r["question_id"], r["text"]) for r in rows] == [(1, "one"), (2, "two"), (3, "QUESTION 3"),
                                                            (4, "QUESTION 4")]
    assert [json.loads(line)["question_id"] for line in path.read_text().splitlines()] == [1, 2, 3, 4]
    assert not list(tmp_path.glob("answers.rank*.jsonl"))  # merged and removed
