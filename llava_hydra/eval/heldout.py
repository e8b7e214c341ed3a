"""Exact-match evaluation: greedy answers to held-out single-question conversations.

Each eval record is a LLaVA-format conversation whose last turn is the reference answer;
the model sees everything before it and generates greedily. Answers are compared after
lower-casing and stripping whitespace and a final full stop.

Under several processes the questions are sharded across ranks and the answers gathered by
the generation loop benchmarks use too (``llava_hydra.eval.sharding``), so every rank returns
the metrics one process would.
"""

from __future__ import annotations

import logging

import torch

from llava_hydra.data.conversation import render
from llava_hydra.data.dataset import LazySupervisedDataset, batch_images, encode_prompt, normalize_turns
from llava_hydra.data.records import images_of
from llava_hydra.data.video import Video, batch_videos, video_of
from llava_hydra.model.llava import find_llava_model

log = logging.getLogger(__name__)


def normalize_answer(text: str) -> str:
    return text.strip().lower().rstrip(".").strip()


def prompt_and_reference(dataset: LazySupervisedDataset, i: int) -> tuple[list[int], str]:
    """Token ids the model answers from (record i without its last turn, rendered with the
    template's generation prompt) and the reference answer (that last turn)."""
    turns = normalize_turns(dataset.records[i])
    prompt = render(dataset.template, turns[:-1], tokenizer=dataset.tokenizer)
    video = video_of(dataset.records[i])  # OneVision: the tag's run is the video's (data/video.py)
    runs = dataset.image_runs([Video(video)] if video else images_of(dataset.records[i]))  # AnyRes: by size
    ids = encode_prompt(prompt.text, dataset.tokenizer, dataset.image_token_id, runs,
                        add_special_tokens=prompt.add_special_tokens)
    if video:
        ids = [dataset.video_token_id if t == dataset.image_token_id else t for t in ids]
    return ids, turns[-1]["value"]


@torch.no_grad()
def exact_match(model, dataset: LazySupervisedDataset, max_new_tokens: int = 8, batch_size: int = 16,
                max_samples: int | None = None) -> dict:
    from llava_hydra.eval.sharding import answer_sharded, rank_and_world

    tok = dataset.tokenizer
    n = len(dataset) if max_samples is None else min(max_samples, len(dataset))
    pixel_dtype = next(find_llava_model(model).vision_tower.parameters()).dtype
    model.eval()

    def answer_group(questions: list[int]) -> list[tuple[str, str]]:
        prompts, images, refs = [], [], []
        for i in questions:
            ids, ref = prompt_and_reference(dataset, i)
            prompts.append(ids)
            refs.append(ref)
            if dataset.records[i].get("image") or video_of(dataset.records[i]):
                images.append(dataset.build(i))  # its own pixel values (never a replacement sample), in tag order
        longest = max(map(len, prompts))
        ids = torch.full((len(prompts), longest), tok.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, p in enumerate(prompts):  # left padding for generation
            ids[row, longest - len(p):] = torch.tensor(p)
            mask[row, longest - len(p):] = 1
        kwargs = {**batch_images(images), **batch_videos(images)}  # pixel_values (+ image_sizes for AnyRes)
        for key in ("pixel_values", "pixel_values_videos"):
            if key in kwargs:
                kwargs[key] = kwargs[key].to(model.device, pixel_dtype)
        out = model.generate(input_ids=ids.to(model.device), attention_mask=mask.to(model.device),
                             max_new_tokens=max_new_tokens, do_sample=False, **kwargs)
        return [(ref, tok.decode(row[longest:], skip_special_tokens=True)) for ref, row in zip(refs, out)]

    # videos of different frame counts go in separate calls (transformers takes one frame count per
    # batch); the groups are the whole set's, the same on every rank, so every rank makes the same
    # generate calls (ZeRO-3's generate is a collective: a rank with one call more would wait forever)
    groups: dict = {}
    for i in range(n):
        video = video_of(dataset.records[i])
        groups.setdefault(dataset.videos.frame_count(video) if video else None, []).append(i)
    results: list = [None] * n
    for group in groups.values():
        for i, result in zip(group, answer_sharded(group, answer_group, batch_size)):
            results[i] = result
    hits = [normalize_answer(answer) == normalize_answer(ref) for ref, answer in results]
    examples = [{"reference": ref, "answer": answer, "correct": hit}
                for (ref, answer), hit in list(zip(results, hits))[:8]]
    accuracy = sum(hits) / max(n, 1)
    world = rank_and_world()[1]
    log.info("eval: exact match %.3f on %d held-out questions%s", accuracy, n,
             f" ({world} ranks)" if world > 1 else "")
    return {"eval_accuracy": accuracy, "eval_samples": n, "eval_examples": examples}
