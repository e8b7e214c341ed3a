"""Rendered text -> token ids + labels, image tokens expanded, truncated at model_max_length.

The mask comes from the rendered text: the prompt is tokenized once with character offsets
and a token is labelled when it overlaps an answer span (the answer and the end-of-turn
token that closes it); everything else is IGNORE_INDEX. Each ``<image>`` (one special token
after tokenization) is then expanded to the vision tower's number of patch tokens, which the
Llava model replaces with projected image features.

Truncation never cuts an image's run of tokens (it stops before the run, and the image is
then dropped); a sample left with no labelled token raises :class:`NothingToTrain`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from llava_hydra.data.conversation import Rendered

IGNORE_INDEX = -100


class NothingToTrain(ValueError):
    """No labelled token: every answer was truncated away (or the sample has no answer text)."""


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]
    num_images: int  # images whose token run survived truncation
    full_length: int  # before truncation, image tokens included
    # per kept text token (image runs count once): its character span and whether it is trained
    token_spans: list[tuple[int, int]] = field(default_factory=list)
    token_trained: list[bool] = field(default_factory=list)

    @property
    def truncated(self) -> bool:
        return self.full_length > len(self.input_ids)


def _trained_flags(offsets, spans, ids, image_token_id) -> list[bool]:
    flags, k = [], 0
    for tok, (s, e) in zip(ids, offsets):
        while k < len(spans) and spans[k][1] <= s:  # spans and offsets both run left to right
            k += 1
        hit = False
        for a, b in spans[k:]:
            if a >= e:
                break
            if s < b and e > a:
                hit = True
                break
        flags.append(hit and tok != image_token_id)
    return flags


def encode(rendered: Rendered, tokenizer, image_token_id: int, num_image_tokens: int, max_length: int) -> Encoded:
    enc = tokenizer(rendered.text, return_offsets_mapping=True, add_special_tokens=rendered.add_special_tokens)
    text_ids, offsets = enc["input_ids"], [tuple(o) for o in enc["offset_mapping"]]
    trained = _trained_flags(offsets, rendered.answer_spans, text_ids, image_token_id)
    ids, labels, kept, n_images = [], [], 0, 0
    full = sum(num_image_tokens if t == image_token_id else 1 for t in text_ids)
    for tok, flag in zip(text_ids, trained):
        n = num_image_tokens if tok == image_token_id else 1
        if len(ids) + n > max_length:
            break  # an image run that does not fit whole is dropped with everything after it
        ids += [tok] * n
        labels += [tok if flag else IGNORE_INDEX] * n
        n_images += tok == image_token_id
        kept += 1
    if all(lab == IGNORE_INDEX for lab in labels):
        if full > max_length:
            raise NothingToTrain(f"every answer lies beyond model_max_length={max_length} "
                                 f"(the sample has {full} tokens)")
        raise NothingToTrain("no answer text to train on")
    return Encoded(ids, labels, n_images, full, offsets[:kept], trained[:kept])


def tokenize_with_labels(rendered: Rendered, tokenizer, image_token_id: int, num_image_tokens: int,
                         max_length: int) -> tuple[list[int], list[int]]:
    """Token ids and labels: answer-span tokens keep their id, all else is IGNORE_INDEX."""
    e = encode(rendered, tokenizer, image_token_id, num_image_tokens, max_length)
    return e.input_ids, e.labels


def encode_prompt(text: str, tokenizer, image_token_id: int, num_image_tokens: int,
                  add_special_tokens: bool = True) -> list[int]:
    """Token ids of a generation prompt, each image token expanded to its patch tokens."""
    ids = []
    for tok in tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"]:
        ids += [tok] * (num_image_tokens if tok == image_token_id else 1)
    return ids
