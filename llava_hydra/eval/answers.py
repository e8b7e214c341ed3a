"""Ask a model every question of a benchmark and write LLaVA's answers JSONL, resumably.

Rows are ``{"question_id", "prompt", "text", "answer_id", "model_id", "metadata"}`` (plus a
format's own fields), as LLaVA's model_vqa_* scripts write them. Answers already in the file are
kept and their questions not asked again; new ones are appended a batch at a time (a killed run
loses at most one batch), and at the end the file is rewritten in question-file order (the order
LLaVA's POPE scorer relies on). Greedy decoding, batches left padded. A OneVision video question
(``Item.video``) is read by the run's frame rule as training reads it (eval/videos.py) and asked in a
sub-batch of the videos of its frame count (transformers takes one count per call); the batch's other
questions are asked together, as before.

Under several processes (``torchrun``: the process group eval/sharding.py starts) the questions
are sharded by the generation loop heldout.py uses too (``llava_hydra.eval.sharding``); rank r
appends its answers to ``answers.rank<r>.jsonl`` and rank 0 merges them once all are gathered.
Answers in any ``answers.rank*.jsonl`` left by a killed run count as written, whatever its number
of processes.
"""

from __future__ import annotations

import json
import logging
import uuid
from pathlib import Path

from llava_hydra.eval.benchmarks import Item
from llava_hydra.eval.generation import answer, render, user_message
from llava_hydra.eval.sharding import answer_sharded, barrier, rank_and_world

log = logging.getLogger(__name__)


def read_answers(path: Path) -> list[dict]:
    """Rows of an answers file; a torn last line (a killed run) is dropped."""
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            log.warning("%s: dropping an unreadable line (an interrupted write?)", path)
    return rows


def _key(qid) -> str:
    return json.dumps(qid)


def _images(item: Item) -> list:
    """The item's images in tag order (paths or decoded images; generation.encode loads paths as training does)."""
    if item.image is None:
        return []
    return list(item.image) if isinstance(item.image, (list, tuple)) else [item.image]


def _groups(clips: list) -> list[list[int]]:
    """Indices of a batch asked together: the questions without a video, then those with a video of each frame
    count (in order of appearance)."""
    groups: dict = {}
    for i, clip in enumerate(clips):
        groups.setdefault(None if clip is None else len(clip), []).append(i)
    return list(groups.values())


def _messages(item: Item) -> list[dict]:
    return item.messages if item.messages is not None else [user_message(item.text, item.image is not None)]


def in_order(rows: list[dict], items: list[Item]) -> list[dict]:
    by_id = {_key(r["question_id"]): r for r in rows}
    return [by_id[_key(it.question_id)] for it in items if _key(it.question_id) in by_id]


def write_answers(path: Path, rows: list[dict]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tmp.replace(path)


def answer_benchmark(model, processor, aspect: str, items: list[Item], path: Path, model_id: str,
                     batch_size: int, gen: dict, video_rule=None) -> list[dict] | None:
    """All answers in question order (rank 0; other ranks get None), written to ``path``.
    Questions already answered there or in a rank's file are not asked again. ``video_rule``: the run's
    (eval/videos.py), needed where an item has a video."""
    rank, world = rank_and_world()
    path.parent.mkdir(parents=True, exist_ok=True)
    rank_files = sorted(path.parent.glob(f"{path.stem}.rank*.jsonl"))
    written = [r for p in [path, *rank_files] for r in read_answers(p)]
    done = {_key(r["question_id"]) for r in written}
    todo = [it for it in items if _key(it.question_id) not in done]
    if done:
        log.info("%s: %d answers already written, %d questions to go", path, len(items) - len(todo), len(todo))
    barrier()  # every rank has read the earlier answers before any rank appends
    mine = path if world == 1 else path.with_name(f"{path.stem}.rank{rank}.jsonl")
    if mine.exists():
        write_answers(mine, read_answers(mine))  # without a torn last line, before appending

    def ask(batch: list[Item]) -> list[dict]:
        prompts = [render(processor, _messages(it)) for it in batch]
        clips = [_video(it) for it in batch]
        texts = [None] * len(batch)
        for group in _groups(clips):
            videos = [clips[i] for i in group if clips[i] is not None]
            out = answer(model, processor, [prompts[i] for i in group],
                         [image for i in group for image in _images(batch[i])], aspect,
                         videos=videos or None, video_rule=video_rule, **gen)
            for i, text in zip(group, out):
                texts[i] = text
        return [{"question_id": it.question_id, "prompt": it.prompt, "text": text, "answer_id": uuid.uuid4().hex,
                 "model_id": model_id, "metadata": {}, **it.extra}
                for it, text in zip(batch, texts)]

    def _video(item: Item):
        if item.video is None:
            return None
        if video_rule is None:
            raise ValueError(f"question {item.question_id!r} has a video: videos are answered by "
                             f"LLaVA-OneVision models")
        from llava_hydra.eval.videos import load_video

        from llava_hydra.data.images import ImageError

        try:
            return load_video(item.video, video_rule, processor.image_processor)
        except ImageError as err:
            raise ValueError(f"question {item.question_id!r}: {err}") from err

    def append(batch: list[Item], rows: list[dict]) -> None:  # a killed run loses at most one batch
        with mine.open("a") as f:
            f.write("".join(json.dumps(r) + "\n" for r in rows))

    new = answer_sharded(todo, ask, batch_size, on_batch=append, desc=path.parent.name)
    if rank != 0:
        return None
    rows = in_order(written + new, items)
    write_answers(path, rows)
    for p in path.parent.glob(f"{path.stem}.rank*.jsonl"):
        p.unlink()
    return rows
