"""The length pass: every record's token count, computed once in batches and cached on disk.

For each record it stores the token count with image tokens expanded (before truncation), where the
first labelled token falls in a record longer than model_max_length (so samples whose answers all
lie beyond it are known before training) and how many tokens it keeps there (truncation drops an
image run that does not fit whole, with everything after it: what the sample holds and what packing
fills a row with), whether it has an image, and the problem of each record that fails its checks.
Texts are split at ``<image>`` exactly as training splits them (labels.tokenize) and the pieces go
through the fast tokenizer's Rust backend in batches (``encode_batch_fast``, no character offsets);
no per-token Python object is made. Only records longer than model_max_length are tokenized again
with offsets, to find their first labelled token. With ``num_proc`` > 1 the records are split into
contiguous ranges, each rendered and tokenized in a forked worker process (Linux; elsewhere it runs
in one process), and the ranges' tables are joined in order.

The cache file ``<cache_dir>/lengths/<key>.npz`` is keyed by the data file's content, the
tokenizer (its full serialization, specials and chat template), the template, the image
token count and model_max_length; a second run with the same key only reads it, after checking
it (``cached``): a file that does not read back whole (its members' CRC) or does not cover exactly
the dataset's records is recomputed with a warning.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from llava_hydra.data.conversation import IMAGE_TOKEN, Rendered
from llava_hydra.data.labels import chunks, drops_bos, pieces_to_encode, rust_backend
from llava_hydra.data.records import RecordError

log = logging.getLogger(__name__)

FORMAT = 5  # bump when what is stored changes (5: ``kept``, the length of a sample cut before an image run)

NO_LABEL = -1  # first_label of a record with no labelled token
FITS = -2  # first_label of a record that fits model_max_length: its first answer trains


@dataclass
class LengthTable:
    tokens: np.ndarray  # int32: text + image tokens, untruncated; 0 for a bad record
    # int32, for records longer than model_max_length: index of their first labelled token (image tokens
    # expanded); FITS for a record that fits; NO_LABEL when nothing is labelled
    first_label: np.ndarray
    has_image: np.ndarray  # bool
    problems: dict[int, tuple[str, str]] = field(default_factory=dict)  # index -> (kind, message)
    # int32: tokens a record longer than model_max_length keeps (truncation stops before an image run that
    # does not fit whole: fewer than model_max_length); 0 for a record that fits or has no answer
    kept: np.ndarray | None = None

    def _kept(self, max_length: int) -> np.ndarray:
        capped = np.minimum(self.tokens, max_length)
        return capped if self.kept is None else np.where(self.kept > 0, self.kept, capped)

    def nothing_to_train(self, max_length: int) -> np.ndarray:
        """Good records whose first labelled token lies at or beyond max_length (or which have none);
        ``max_length`` is the one the table was computed for (records that fit it were not located)."""
        bad = np.zeros(len(self.tokens), dtype=bool)
        bad[list(self.problems)] = True
        return ~bad & ((self.first_label == NO_LABEL) | (self.first_label >= self._kept(max_length)))

    def modality_lengths(self, max_length: int) -> list[int]:
        """Tokens of each sample as the dataset hands it out (truncated), negative for text-only."""
        kept = self._kept(max_length).astype(np.int64)
        return np.where(self.has_image, kept, -kept).tolist()


def tokenizer_fingerprint(tokenizer) -> str:
    h = hashlib.sha256()
    h.update(rust_backend(tokenizer).to_str().encode())
    for part in (tokenizer.bos_token, tokenizer.eos_token, getattr(tokenizer, "chat_template", None),
                 type(tokenizer).__name__):
        h.update(b"\0" + str(part).encode())
    return h.hexdigest()


def cache_key(data_digest: str, tokenizer, template: str, max_length: int, num_image_tokens) -> str:
    """``num_image_tokens``: the count of every image, or (AnyRes) the key of the rule by size."""
    spec = json.dumps([FORMAT, data_digest, tokenizer_fingerprint(tokenizer), template, max_length, num_image_tokens])
    return hashlib.sha256(spec.encode()).hexdigest()[:32]


def compute(n: int, prepare: Callable[[int], tuple[Rendered, list[str]]], tokenizer, num_image_tokens,
            max_length: int, batch_size: int = 2048, num_proc: int | None = None) -> LengthTable:
    """Run ``prepare(i) -> (rendered, images)`` over all records (RecordError marks a bad one)
    (``num_image_tokens``: an int for every image, or a callable (image paths, record index) -> a count
    per image)
    and tokenize the rendered texts in batches, split at ``<image>`` as training splits them
    (labels.tokenize): the counts are those of the samples the dataset hands out.
    ``num_proc`` worker processes (default: the cores this process may use) share the records."""
    import multiprocessing as mp

    if num_proc is None:
        num_proc = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if num_proc <= 1 or n <= batch_size or "fork" not in mp.get_all_start_methods():
        return _compute_range(0, n, prepare, tokenizer, num_image_tokens, max_length, batch_size)
    step = -(-n // (num_proc * 4))  # a few ranges per process: even finish times
    ranges = [(lo, min(lo + step, n)) for lo in range(0, n, step)]
    global _JOB
    _JOB = (prepare, tokenizer, num_image_tokens, max_length, batch_size)  # inherited by the forked workers
    try:
        with mp.get_context("fork").Pool(num_proc) as pool:
            parts = pool.starmap(_range_job, ranges)
    finally:
        _JOB = None
    problems = {}
    for part in parts:
        problems.update(part.problems)
    return LengthTable(np.concatenate([p.tokens for p in parts]), np.concatenate([p.first_label for p in parts]),
                       np.concatenate([p.has_image for p in parts]), problems,
                       np.concatenate([p.kept for p in parts]))


_JOB = None  # compute's arguments while its parallel pass is under way


def _range_job(lo: int, hi: int) -> LengthTable:
    return _compute_range(lo, hi, *_JOB)


def _compute_range(lo0: int, hi0: int, prepare, tokenizer, num_image_tokens, max_length: int,
                   batch_size: int) -> LengthTable:
    """The length table of records lo0..hi0-1 (indices in ``problems`` are absolute).

    Counts come from ``encode_batch_fast`` (no character offsets); the offsets that locate the
    first labelled token are computed only for records longer than ``max_length``, the only
    ones whose first label can fall past the end (a record that fits trains its first answer)."""
    n = hi0 - lo0
    tokens = np.zeros(n, dtype=np.int32)
    first = np.full(n, NO_LABEL, dtype=np.int32)
    kept = np.zeros(n, dtype=np.int32)
    has_image = np.zeros(n, dtype=bool)
    problems: dict[int, tuple[str, str]] = {}
    backend = rust_backend(tokenizer)
    for lo in range(lo0, hi0, batch_size):
        batch = []  # (index, rendered, its pieces: [(start, text)])
        images_of, runs = {}, {}  # index -> its image paths, its image runs
        for i in range(lo, min(lo + batch_size, hi0)):
            try:
                rendered, images = prepare(i)
            except RecordError as e:
                problems[i] = (e.kind, str(e))
                continue
            images_of[i] = images
            has_image[i - lo0] = bool(images)
            split = rendered.add_special_tokens and IMAGE_TOKEN in rendered.text
            pieces = chunks(rendered.text) if split else [(0, rendered.text)]
            if rendered.add_special_tokens:  # as labels.tokenize: (start, text to encode, shift)
                texts, shifts = pieces_to_encode([t for _, t in pieces], tokenizer)
                batch.append((i, rendered, [(a, t, s) for (a, _), t, s in zip(pieces, texts, shifts)]))
            else:
                batch.append((i, rendered, [(a, t, 0) for a, t in pieces]))
        for special in (True, False):
            part = [b for b in batch if b[1].add_special_tokens == special]
            if not part:
                continue
            encodings = iter(backend.encode_batch_fast([text for _, _, pieces in part for _, text, _ in pieces],
                                                       add_special_tokens=special))
            over = []
            for i, r, pieces in part:
                try:
                    runs[i] = _runs(num_image_tokens, r, images_of[i], i)
                except RecordError as e:
                    problems[i] = (e.kind, str(e))
                    for _ in pieces:
                        next(encodings)
                    continue
                encoded = [next(encodings) for _ in pieces]
                count = _total(r, encoded, tokenizer, runs[i])
                tokens[i - lo0] = count
                if count > max_length and r.answer_spans:
                    over.append((i, r, pieces))
                    kept[i - lo0] = _kept(encoded, tokenizer, runs[i], max_length)
                elif r.answer_spans:
                    first[i - lo0] = FITS
            if over:
                encodings = iter(backend.encode_batch([text for _, _, pieces in over for _, text, _ in pieces],
                                                      add_special_tokens=special))
                for i, r, pieces in over:
                    first[i - lo0] = _first_label(r, pieces, [next(encodings) for _ in pieces], tokenizer,
                                                  runs[i])
    return LengthTable(tokens, first, has_image, problems, kept)


def _kept(encoded, tokenizer, runs: list[int], max_length: int) -> int:
    """Tokens left after truncation at ``max_length``, as labels.encode truncates: an image run that
    does not fit whole is dropped with everything after it."""
    if len(encoded) == 1:  # tokenized whole: each <image> in it is one token
        image, k, pos = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN), 0, 0
        for tok in encoded[0].ids:
            n = runs[k] if tok == image else 1
            if pos + n > max_length:
                return pos
            pos, k = pos + n, k + (tok == image)
        return pos
    skip, pos = int(drops_bos(encoded[0].ids, tokenizer)), 0
    for k, e in enumerate(encoded):
        pos += len(e) - (skip if k else 0)
        if pos >= max_length:
            return max_length
        if k + 1 < len(encoded):  # the image between piece k and piece k + 1
            if pos + runs[k] > max_length:
                return pos
            pos += runs[k]
    return min(pos, max_length)


def _runs(num_image_tokens, r: Rendered, images: list[str], i: int) -> list[int]:
    """The token run of each <image> of rendered record i: ``num_image_tokens`` for all (an int), or
    ``num_image_tokens(images, i)`` per image (AnyRes: by size, the record store's; it raises RecordError)."""
    n = r.text.count(IMAGE_TOKEN)
    if isinstance(num_image_tokens, int):
        return [num_image_tokens] * n
    runs = list(num_image_tokens(images, i)) if n else []
    if len(runs) != n:
        raise RecordError(f"{n} <image> tag(s) rendered for {len(runs)} image(s)", kind="image_tags")
    return runs


def _total(r: Rendered, encoded, tokenizer, runs: list[int]) -> int:
    """Token count with every image run expanded (pieces split at <image>, as labels.tokenize)."""
    if len(encoded) == 1:  # tokenized whole: each <image> in it is one token
        return len(encoded[0]) + sum(runs) - len(runs)
    skip = int(drops_bos(encoded[0].ids, tokenizer))
    return sum(len(e) for e in encoded) - skip * (len(encoded) - 1) + sum(runs)


def _first_label(r: Rendered, pieces, encoded, tokenizer, runs: list[int]) -> int:
    """Index of the first labelled token (image runs expanded), from the pieces' character offsets."""
    if len(pieces) == 1:  # tokenized whole: each <image> in it is one token
        for a, b in r.answer_spans:
            for c in range(a, b):  # the first character of the span that a token covers
                t = encoded[0].char_to_token(c + pieces[0][2] if c else 0)
                if t is not None:
                    before = r.text.count(IMAGE_TOKEN, 0, c)
                    return t + sum(runs[:before]) - before
        return NO_LABEL
    skip = int(drops_bos(encoded[0].ids, tokenizer))
    before, starts = 0, []  # tokens ahead of each piece
    for k, e in enumerate(encoded):
        starts.append(before - (skip if k else 0))
        before += len(e) - (skip if k else 0) + (runs[k] if k + 1 < len(encoded) else 0)
    for a, b in r.answer_spans:
        for c in range(a, b):
            k = max(j for j, (start, _, _) in enumerate(pieces) if start <= c)
            at = c - pieces[k][0]  # in the piece; in the encoded text one later if a space was added
            t = encoded[k].char_to_token(at + pieces[k][2] if at else 0)
            if t is not None and (k == 0 or t >= skip):
                return starts[k] + t
    return NO_LABEL


def save(table: LengthTable, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npz")
    problems = json.dumps({str(k): v for k, v in table.problems.items()})
    np.savez(tmp, tokens=table.tokens, first_label=table.first_label, has_image=table.has_image,
             problems=np.array(problems), kept=np.zeros_like(table.tokens) if table.kept is None else table.kept)
    os.replace(tmp, path)


def load(path: Path) -> LengthTable:
    with np.load(path, allow_pickle=False) as z:
        problems = {int(k): tuple(v) for k, v in json.loads(str(z["problems"])).items()}
        return LengthTable(z["tokens"], z["first_label"], z["has_image"], problems, z["kept"])


def coverage_problem(table: LengthTable, n: int) -> str | None:
    """What makes a length table unusable for ``n`` records (None: it covers exactly them)."""
    sizes = {len(table.tokens), len(table.first_label), len(table.has_image),
             len(table.tokens if table.kept is None else table.kept)}
    if sizes != {n}:
        return f"it covers {min(sizes)} of the {n} records"
    outside = [i for i in table.problems if not 0 <= i < n]
    return f"it lists a problem for record {outside[0]}, past the {n} records" if outside else None


def cached(cache_dir: str | Path | None, key: str, make: Callable[[], LengthTable],
           n: int | None = None) -> tuple[LengthTable, bool]:
    """(table, whether it came from the cache). No cache_dir: always computed. A cache file that
    is unreadable (a same-size corruption fails the npz members' CRC) or, given ``n``, does not
    cover exactly ``n`` records is recomputed with a warning, never trusted or crashed on."""
    if cache_dir is None:
        return make(), False
    path = Path(cache_dir) / "lengths" / f"{key}.npz"
    if path.exists():
        try:
            table = load(path)
            problem = coverage_problem(table, n) if n is not None else None
        except Exception as e:  # noqa: BLE001 - zipfile.BadZipFile, OSError, ValueError, KeyError, ...
            problem = f"unreadable ({type(e).__name__}: {e})"
        if problem is None:
            return table, True
        log.warning("length cache %s is damaged or incomplete: %s; recomputing it", path, problem)
    table = make()
    save(table, path)
    return table, False
