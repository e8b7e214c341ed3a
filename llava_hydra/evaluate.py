"""Exact-match evaluation: greedy answers to held-out single-question conversations.

Each eval record is a LLaVA-format conversation whose last turn is the reference answer;
the model sees everything before it and generates greedily. Answers are compared after
lower-casing and stripping whitespace and a final full stop.

Under several processes the questions are sharded across ranks (rank r answers questions
r, r + world, ...) and the counts and examples gathered, so every rank returns the metrics
one process would. Every rank runs the same number of ``generate`` calls (a short shard is
padded with a repeated question whose answer is not counted): ZeRO-3 needs all ranks in
every forward pass.
"""

from __future__ import annotations

import logging

import torch

from llava_hydra.data.conversation import render
from llava_hydra.data.dataset import LazySupervisedDataset, encode_prompt, normalize_turns
from llava_hydra.model.llava import find_llava_model

log = logging.getLogger(__name__)


def normalize_answer(text: str) -> str:
    return text.strip().lower().rstrip(".").strip()


def prompt_and_reference(dataset: LazySupervisedDataset, i: int) -> tuple[list[int], str]:
    """Token ids the model answers from (record i without its last turn, rendered with the
    template's generation prompt) and the reference answer (that last turn)."""
    turns = normalize_turns(dataset.records[i])
    prompt = render(dataset.template, turns[:-1], tokenizer=dataset.tokenizer)
    ids = encode_prompt(prompt.text, dataset.tokenizer, dataset.image_token_id, dataset.num_image_tokens,
                        add_special_tokens=prompt.add_special_tokens)
    return ids, turns[-1]["value"]


def _rank_and_world() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _gather(obj, world: int) -> list:
    if world == 1:
        return [obj]
    import torch.distributed as dist

    out = [None] * world
    dist.all_gather_object(out, obj)
    return out


@torch.no_grad()
def exact_match(model, dataset: LazySupervisedDataset, max_new_tokens: int = 8, batch_size: int = 16,
                max_samples: int | None = None) -> dict:
    tok = dataset.tokenizer
    n = len(dataset) if max_samples is None else min(max_samples, len(dataset))
    rank, world = _rank_and_world()
    shard = list(range(rank, n, world))
    per_rank = -(-n // world)  # every rank the same number of generate calls
    counted = [True] * len(shard) + [False] * (per_rank - len(shard))
    shard += [shard[-1] if shard else 0] * (per_rank - len(shard))
    pixel_dtype = next(find_llava_model(model).vision_tower.parameters()).dtype
    model.eval()
    results = []  # (index, reference, answer, correct) of this rank's questions
    for start in range(0, per_rank, batch_size):
        rows = range(start, min(start + batch_size, per_rank))
        prompts, images, refs = [], [], []
        for row in rows:
            ids, ref = prompt_and_reference(dataset, shard[row])
            prompts.append(ids)
            refs.append(ref)
            if dataset.records[shard[row]].get("image"):
                images.append(dataset[shard[row]]["pixel_values"])
        longest = max(map(len, prompts))
        ids = torch.full((len(prompts), longest), tok.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, p in enumerate(prompts):  # left padding for generation
            ids[row, longest - len(p):] = torch.tensor(p)
            mask[row, longest - len(p):] = 1
        kwargs = {"pixel_values": torch.stack(images).to(model.device, pixel_dtype)} if images else {}
        out = model.generate(input_ids=ids.to(model.device), attention_mask=mask.to(model.device),
                             max_new_tokens=max_new_tokens, do_sample=False, **kwargs)
        for k, (row, ref) in enumerate(zip(rows, refs)):
            if counted[row]:
                answer = tok.decode(out[k, longest:], skip_special_tokens=True)
                results.append((shard[row], ref, answer, normalize_answer(answer) == normalize_answer(ref)))
    results = sorted(r for part in _gather(results, world) for r in part)
    correct = sum(hit for *_, hit in results)
    examples = [{"reference": ref, "answer": answer, "correct": bool(hit)} for _, ref, answer, hit in results[:8]]
    accuracy = correct / max(n, 1)
    log.info("eval: exact match %.3f on %d held-out questions%s", accuracy, n,
             f" ({world} ranks)" if world > 1 else "")
    return {"eval_accuracy": accuracy, "eval_samples": n, "eval_examples": examples}
