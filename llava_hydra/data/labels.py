"""Rendered text -> token ids + labels, image tokens expanded, truncated at model_max_length.

The mask comes from the rendered text: the prompt is tokenized with character offsets and a
token is labelled when it overlaps an answer span (the answer, the separator space before it,
and the end-of-turn token that closes it); everything else is IGNORE_INDEX. Each ``<image>``
is then expanded to the vision tower's number of patch tokens, which the Llava model replaces
with projected image features.

Tokenization is LLaVA's ``tokenizer_image_token``: the text is split at each ``<image>`` and
every piece is tokenized as a string of its own (bos dropped after the first), so a
SentencePiece tokenizer gives the text after an image its dummy-prefix ``▁`` exactly as LLaVA
trains it. Chat-template renderings (bos written as text, see conversation._tokenizer_bos) are tokenized whole.

A piece that starts with a space gets its dummy prefix too, as SentencePiece (and so LLaVA's
slow ``LlamaTokenizer``) gives it: ``" Two"`` is ``▁ ▁Two``. transformers' fast Llama tokenizer
(``Metaspace``, prepend scheme ``first``/``always``) adds no prefix to a text that already starts
with one (``▁Two``); for such a tokenizer (``swallows_leading_space``) that piece is tokenized
with one more space in front and its offsets moved back onto the piece (``pieces_to_encode``).

Truncation never cuts an image's run of tokens (it stops before the run, and the image is
then dropped); a sample left with no labelled token raises :class:`NothingToTrain`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from llava_hydra.data.conversation import IMAGE_TOKEN, Rendered

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


def chunks(text: str) -> list[tuple[int, str]]:
    """(start, text) of the pieces between ``<image>`` tags, as tokenizer_image_token splits them."""
    out, pos = [], 0
    for piece in text.split(IMAGE_TOKEN):
        out.append((pos, piece))
        pos += len(piece) + len(IMAGE_TOKEN)
    return out


def drops_bos(first_chunk_ids: list[int], tokenizer) -> bool:
    """tokenizer_image_token's rule: when the first piece starts with bos, every later piece's
    first token (its own bos) is dropped."""
    return bool(first_chunk_ids) and tokenizer.bos_token_id is not None and first_chunk_ids[0] == tokenizer.bos_token_id


def swallows_leading_space(tokenizer) -> bool:
    """Whether ``tokenizer`` drops SentencePiece's dummy prefix before a text that starts with a space
    (transformers' fast Llama tokenizer: ``" Two"`` -> ``▁Two`` where SentencePiece gives ``▁ ▁Two``).
    Measured once per tokenizer (a Metaspace pre-tokenizer that gives ``" Two"`` the ids of ``"Two"``)."""
    known = getattr(tokenizer, "_llava_hydra_swallows_space", None)
    if known is not None:
        return known
    backend = getattr(tokenizer, "backend_tokenizer", None)
    found = False
    if backend is not None and "Metaspace" in repr(backend.pre_tokenizer):
        found = (backend.encode(" Two", add_special_tokens=False).ids ==
                 backend.encode("Two", add_special_tokens=False).ids)
    try:
        tokenizer._llava_hydra_swallows_space = found
    except AttributeError:
        pass
    return found


def pieces_to_encode(texts: list[str], tokenizer) -> tuple[list[str], list[int]]:
    """(texts to tokenize, shift of each): a piece that starts with a space gets one more in front
    (shift 1) where the tokenizer would otherwise drop its dummy prefix (swallows_leading_space)."""
    if not swallows_leading_space(tokenizer):
        return list(texts), [0] * len(texts)
    shifts = [int(t.startswith(" ")) for t in texts]
    return [" " * s + t for s, t in zip(shifts, texts)], shifts


def unshift_offsets(offsets, shift: int) -> list[tuple[int, int]]:
    """A padded piece's token offsets on the piece itself: the added space's ``▁`` and the token
    after it both cover the piece's first character (zero-width tokens such as bos stay so)."""
    if not shift:
        return list(offsets)
    return [(a, b) if a == b else (max(a - shift, 0), max(b - shift, 1)) for a, b in offsets]


def rust_backend(tokenizer):
    """The fast tokenizer's Rust backend (None for a slow tokenizer), with no truncation or padding
    left on it: transformers' ``__call__`` resets both before each call, and a tokenizer.json saved
    after a truncated or padded call carries them, which would cut or pad every piece."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and (backend.truncation is not None or backend.padding is not None):
        backend.no_truncation()
        backend.no_padding()
    return backend


def _encode(tokenizer, texts: list[str], add_special_tokens: bool) -> tuple[list[list[int]], list[list[tuple]]]:
    """(ids, character offsets) of each text, from the fast tokenizer's Rust backend as the length
    pass takes them (transformers' ``__call__`` would add only its warning about sequences longer
    than model_max_length, which ``encode`` truncates itself). With special tokens (LLaVA's
    piece-wise tokenization) a text that starts with a space keeps its dummy prefix."""
    shifts = [0] * len(texts)
    if add_special_tokens:
        texts, shifts = pieces_to_encode(texts, tokenizer)
    backend = rust_backend(tokenizer)
    if backend is None:  # a slow (Python) tokenizer
        enc = tokenizer(texts, return_offsets_mapping=True, add_special_tokens=add_special_tokens)
        ids, offsets = [list(i) for i in enc["input_ids"]], [[tuple(o) for o in offs] for offs in enc["offset_mapping"]]
    else:
        encodings = backend.encode_batch(texts, add_special_tokens=add_special_tokens)
        ids, offsets = [e.ids for e in encodings], [e.offsets for e in encodings]
    return ids, [unshift_offsets(o, s) for o, s in zip(offsets, shifts)]


def tokenize(text: str, tokenizer, image_token_id: int,
             add_special_tokens: bool = True) -> tuple[list[int], list[tuple[int, int]]]:
    """Token ids (one ``image_token_id`` per ``<image>``) and character offsets of ``text``.

    With special tokens (the built-in templates): LLaVA's chunked tokenization. Without (a
    chat template's rendering, bos written as text where its tokenizer adds one): the whole string at once."""
    if not add_special_tokens or IMAGE_TOKEN not in text:
        (ids,), (offsets,) = _encode(tokenizer, [text], add_special_tokens)
        return ids, offsets
    parts = chunks(text)
    piece_ids_all, piece_offsets_all = _encode(tokenizer, [p for _, p in parts], True)
    skip = int(drops_bos(piece_ids_all[0], tokenizer))
    ids, offsets = [], []
    for k, ((start, _), piece_ids, piece_offsets) in enumerate(zip(parts, piece_ids_all, piece_offsets_all)):
        if k:
            ids.append(image_token_id)
            offsets.append((start - len(IMAGE_TOKEN), start))
            piece_ids, piece_offsets = piece_ids[skip:], piece_offsets[skip:]
        ids += piece_ids
        offsets += [(start + a, start + b) for a, b in piece_offsets]
    return ids, offsets


def image_runs(num_image_tokens, n_images: int) -> list[int]:
    """The token run of each of a sample's ``n_images`` image tags: one count for every image
    (LLaVA-1.5) or a count per image, in tag order (AnyRes: by each image's size)."""
    if isinstance(num_image_tokens, int):
        return [num_image_tokens] * n_images
    runs = [int(n) for n in num_image_tokens]
    if len(runs) != n_images:
        raise ValueError(f"{n_images} <image> token(s) in the text but {len(runs)} image token count(s)")
    return runs


def encode(rendered: Rendered, tokenizer, image_token_id: int, num_image_tokens, max_length: int) -> Encoded:
    """Ids and labels, each image tag expanded to its run (``num_image_tokens``: an int for every image,
    or one count per image in tag order) and truncated at ``max_length`` (an image run never split)."""
    text_ids, offsets = tokenize(rendered.text, tokenizer, image_token_id, rendered.add_special_tokens)
    trained = _trained_flags(offsets, rendered.answer_spans, text_ids, image_token_id)
    runs = image_runs(num_image_tokens, text_ids.count(image_token_id))
    ids, labels, kept, n_images = [], [], 0, 0
    full = len(text_ids) + sum(runs) - len(runs)
    for tok, flag in zip(text_ids, trained):
        n = runs[n_images] if tok == image_token_id else 1
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


def encode_prompt(text: str, tokenizer, image_token_id: int, num_image_tokens,
                  add_special_tokens: bool = True) -> list[int]:
    """Token ids of a generation prompt (tokenized as training tokenizes), each image token
    expanded to its patch tokens (``num_image_tokens``: as ``encode`` takes it)."""
    text_ids = tokenize(text, tokenizer, image_token_id, add_special_tokens)[0]
    runs = iter(image_runs(num_image_tokens, text_ids.count(image_token_id)))
    ids = []
    for tok in text_ids:
        ids += [tok] * (next(runs) if tok == image_token_id else 1)
    return ids
