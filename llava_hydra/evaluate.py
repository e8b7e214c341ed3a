"""Exact-match evaluation: greedy answers to held-out single-question conversations.

Each eval record is a LLaVA-format conversation whose last turn is the reference answer;
the model sees everything before it and generates greedily. Answers are compared after
lower-casing and stripping whitespace and a final full stop.
"""

from __future__ import annotations

import logging

import torch

from llava_hydra.data.conversation import render
from llava_hydra.data.dataset import LazySupervisedDataset, encode_prompt, normalize_turns

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


@torch.no_grad()
def exact_match(model, dataset: LazySupervisedDataset, max_new_tokens: int = 8, batch_size: int = 16,
                max_samples: int | None = None) -> dict:
    tok = dataset.tokenizer
    n = len(dataset) if max_samples is None else min(max_samples, len(dataset))
    model.eval()
    correct, examples = 0, []
    for start in range(0, n, batch_size):
        prompts, images, refs = [], [], []
        for i in range(start, min(start + batch_size, n)):
            ids, ref = prompt_and_reference(dataset, i)
            prompts.append(ids)
            refs.append(ref)
            if dataset.records[i].get("image"):
                images.append(dataset[i]["pixel_values"])
        longest = max(map(len, prompts))
        ids = torch.full((len(prompts), longest), tok.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, p in enumerate(prompts):  # left padding for generation
            ids[row, longest - len(p):] = torch.tensor(p)
            mask[row, longest - len(p):] = 1
        kwargs = {"pixel_values": torch.stack(images).to(model.device, model.dtype)} if images else {}
        out = model.generate(input_ids=ids.to(model.device), attention_mask=mask.to(model.device),
                             max_new_tokens=max_new_tokens, do_sample=False, **kwargs)
        for row, ref in enumerate(refs):
            answer = tok.decode(out[row, longest:], skip_special_tokens=True)
            hit = normalize_answer(answer) == normalize_answer(ref)
            correct += hit
            if len(examples) < 8:
                examples.append({"reference": ref, "answer": answer, "correct": bool(hit)})
    accuracy = correct / max(n, 1)
    log.info("eval: exact match %.3f on %d held-out questions", accuracy, n)
    return {"eval_accuracy": accuracy, "eval_samples": n, "eval_examples": examples}
