"""Ask a model every question of a benchmark and write LLaVA's answers JSONL, resumably.

Rows are ``{"question_id", "prompt", "text", "answer_id", "model_id", "metadata"}`` (plus a
format's own fields), as LLaVA's model_vqa_* scripts write them. Answers already in the file are
kept and their questions not asked again; new ones are appended a batch at a time (a killed run
loses at most one batch), and at the end the file is rewritten in question-file order (the order
LLaVA's POPE scorer relies on). Greedy decoding, batches left padded.

Under several processes (``torchrun``, WORLD_SIZE > 1) rank r answers questions r, r + W, ...
into ``answers.rank<r>.jsonl``; rank 0 merges them after all ranks are done.
"""

from __future__ import annotations

import json
import logging
import uuid
from pathlib import Path

from llava_hydra.distributed import rank as process_rank, world_size
from llava_hydra.eval.benchmarks import Item
from llava_hydra.eval.generation import answer, render, user_message

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


def _load_image(image):
    from llava_hydra.data.images import open_rgb

    return image if image is None or not isinstance(image, (str, Path)) else open_rgb(image)


def _messages(item: Item) -> list[dict]:
    return item.messages if item.messages is not None else [user_message(item.text, item.image is not None)]


def answer_items(model, processor, aspect: str, items: list[Item], path: Path, model_id: str, batch_size: int,
                 gen: dict, progress: bool = True) -> list[dict]:
    """Answer the items not yet in ``path`` (appending), return all rows in ``items`` order."""
    from tqdm.auto import tqdm

    path.parent.mkdir(parents=True, exist_ok=True)
    written = read_answers(path)
    if path.exists():
        write_answers(path, written)  # without a torn last line, before appending
    done = {_key(r["question_id"]) for r in written}
    todo = [it for it in items if _key(it.question_id) not in done]
    if done:
        log.info("%s: %d answers already written, %d questions to go", path, len(items) - len(todo), len(todo))
    with path.open("a") as f, tqdm(total=len(todo), disable=not progress, desc=path.parent.name) as bar:
        for start in range(0, len(todo), batch_size):
            batch = todo[start:start + batch_size]
            prompts = [render(processor, _messages(it)) for it in batch]
            images = [_load_image(it.image) for it in batch if it.image is not None]
            texts = answer(model, processor, prompts, images, aspect, **gen)
            for it, text in zip(batch, texts):
                row = {"question_id": it.question_id, "prompt": it.prompt, "text": text,
                       "answer_id": uuid.uuid4().hex, "model_id": model_id, "metadata": {}, **it.extra}
                f.write(json.dumps(row) + "\n")
            f.flush()
            bar.update(len(batch))
    return in_order(read_answers(path), items)


def in_order(rows: list[dict], items: list[Item]) -> list[dict]:
    by_id = {_key(r["question_id"]): r for r in rows}
    return [by_id[_key(it.question_id)] for it in items if _key(it.question_id) in by_id]


def write_answers(path: Path, rows: list[dict]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tmp.replace(path)


def answer_benchmark(model, processor, aspect: str, items: list[Item], path: Path, model_id: str,
                     batch_size: int, gen: dict) -> list[dict] | None:
    """All answers in question order (rank 0; other ranks get None), written to ``path``."""
    world, rank = world_size(), process_rank()
    if world == 1:
        rows = answer_items(model, processor, aspect, items, path, model_id, batch_size, gen)
        write_answers(path, rows)
        return rows
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if model.device.type == "cuda" else "gloo")
    done = {_key(r["question_id"]) for r in read_answers(path)}  # a merged file from an earlier run counts
    mine = [it for it in items[rank::world] if _key(it.question_id) not in done]
    shard = path.with_name(f"{path.stem}.rank{rank}.jsonl")
    answer_items(model, processor, aspect, mine, shard, model_id, batch_size, gen, progress=rank == 0)
    dist.barrier()
    if rank != 0:
        return None
    rows = read_answers(path) + [r for k in range(world) for r in read_answers(path.with_name(
        f"{path.stem}.rank{k}.jsonl"))]
    rows = in_order(rows, items)
    write_answers(path, rows)
    for k in range(world):
        path.with_name(f"{path.stem}.rank{k}.jsonl").unlink(missing_ok=True)
    return rows
