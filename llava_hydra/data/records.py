"""LLaVA-format data files -> checked records.

Owns reading a JSON list or JSONL file (with the line number of a bad line), the content
digest that keys the length cache, and the per-record checks (:func:`normalize_turns`, the one
validation training, the length pass, ``data.check`` and ``data.preview`` all run): a record
has a non-empty ``conversations`` list of ``{"from": "human"|"gpt", "value": str}`` turns
alternating from human, at least one answer non-empty, and as many ``<image>`` tags as images, in
human turns only. ``image`` is one path, a list of paths (LLaVA-NeXT / OneVision interleaved
format: the k-th tag stands for the k-th image, tags in any human turn), or absent for
text-only. A single image's tag may stand in any human turn: as LLaVA's preprocess_multimodal
does, it moves to the front of that turn (``<image>\n`` + the rest, stripped).
A failed check raises :class:`RecordError`, whose ``kind`` groups problems for reports.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from llava_hydra.data.conversation import GPT, HUMAN, IMAGE_TOKEN, image_to_front

BAD_LINE = "_bad_line"  # key of the placeholder a skipped JSONL line leaves (indices stay line-aligned)
NOT_OBJECT = "_not_an_object"  # key of the placeholder for a record that is not a JSON object


class BadSampleError(ValueError):
    """A record that cannot be trained on; the message names the file, sample and problem, and
    ``reason`` is the problem's kind (a RECORD_KINDS key, an image problem, ...) for counts."""

    def __init__(self, message: str, reason: str = "bad"):
        super().__init__(message)
        self.reason = reason


# bump when normalize_turns accepts or refuses differently (keys the length cache); 4: a single
# image tagged in a later human turn is accepted; 5: a ``video`` record's tag counts (data/video.py)
CHECKS_VERSION = 5


class RecordError(ValueError):
    """What is wrong with one record; ``kind`` is one of RECORD_KINDS."""

    def __init__(self, message: str, kind: str = "malformed"):
        super().__init__(message)
        self.kind = kind


def load_records(path: str | Path, skip_bad_lines: bool = False) -> tuple[list[dict], str]:
    """(records, sha256 of the file's bytes). A bad JSONL line raises BadSampleError naming
    its line number, or with ``skip_bad_lines`` becomes ``{"_bad_line": message}``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {path}")
    raw = path.read_bytes()
    digest = hashlib.sha256(raw).hexdigest()
    if path.suffix == ".jsonl":
        records = []
        for lineno, line in enumerate(raw.split(b"\n"), 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                msg = f"{path}: line {lineno} is not valid JSON: {getattr(e, 'msg', e)}"
                if not skip_bad_lines:
                    raise BadSampleError(msg) from None
                records.append({BAD_LINE: msg})
        return records, digest
    try:
        records = json.loads(raw)
    except json.JSONDecodeError as e:
        raise BadSampleError(f"{path}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    except UnicodeDecodeError as e:
        raise BadSampleError(f"{path}: not UTF-8 text: {e}") from None
    if not isinstance(records, list):
        raise BadSampleError(f"{path}: expected a JSON list of records, got {type(records).__name__}")
    # a record that is not an object stays in place (indices unchanged) as a dict saying so
    records = [r if isinstance(r, dict) else {NOT_OBJECT: f"record is a {type(r).__name__}, not an object"}
               for r in records]
    return records, digest


RECORD_KINDS = {  # kind -> what a report calls it
    "bad_line": "JSONL lines that are not JSON",
    "malformed": "malformed records",
    "image_tags": "<image> tag count != image count",
    "image_in_answer": "<image> in an answer (gpt turn)",
    "empty_answer": "empty answers",
}


def images_of(record) -> list[str]:
    """The record's image paths in tag order (relative to the image folder): [] for text-only."""
    if not isinstance(record, dict):
        return []
    image = record.get("image")
    if image is None or image == "" or image == []:
        return []
    if isinstance(image, str):
        return [image]
    if isinstance(image, list) and all(isinstance(p, str) and p for p in image):
        return image
    raise RecordError(f"'image' must be a path or a list of paths (non-empty strings), got {image!r:.80}")


def video_of(record) -> str | None:
    """The record's ``video`` path (LLaVA-NeXT's format, data/video.py), or None. Images or a video, not both."""
    if not isinstance(record, dict) or record.get("video") in (None, ""):
        return None
    video = record["video"]
    if not isinstance(video, str):
        raise RecordError(f"'video' must be a path (a non-empty string), got {video!r:.80}")
    if record.get("image") not in (None, "", []):
        raise RecordError("record has both 'image' and 'video'; LLaVA-NeXT would train its image and drop the "
                          "video: give each its own record")
    return video


def normalize_turns(record) -> list[dict]:
    """Check a record and return its turns with ``<image>`` moved to the front of its message,
    as LLaVA does. Raises RecordError saying what is wrong."""
    if not isinstance(record, dict):
        raise RecordError(f"record is a {type(record).__name__}, not an object")
    if BAD_LINE in record:
        raise RecordError(record[BAD_LINE], kind="bad_line")
    if NOT_OBJECT in record:
        raise RecordError(record[NOT_OBJECT])
    turns = record.get("conversations")
    if turns is None:
        raise RecordError("record has no 'conversations'")
    if not isinstance(turns, list):
        raise RecordError(f"'conversations' must be a list, got {type(turns).__name__}")
    if not turns:
        raise RecordError("'conversations' is empty")
    out = []
    for k, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise RecordError(f"turn {k}: expected an object with 'from' and 'value', got {type(turn).__name__}")
        role, value = turn.get("from"), turn.get("value")
        if role not in (HUMAN, GPT):
            raise RecordError(f"turn {k}: unknown role {role!r} (expected 'human' or 'gpt')")
        if role != (HUMAN if k % 2 == 0 else GPT):
            raise RecordError(f"turn {k}: roles must alternate human, gpt, ... starting with human")
        if not isinstance(value, str):
            raise RecordError(f"turn {k}: 'value' must be a string, got {type(value).__name__}")
        out.append({"from": role, "value": image_to_front(value)})
    if len(out) < 2:
        raise RecordError("no assistant ('gpt') answer to train on")
    video = video_of(record)  # LLaVA-NeXT: one <image> tag marks where the video goes
    _check_images(turns, images_of(record) + ([video] if video else []))
    answers = [k for k, turn in enumerate(out) if turn["from"] == GPT]
    if all(not out[k]["value"].strip() for k in answers):  # one blank among real answers trains as in LLaVA
        where = f"turn {answers[0]}" if len(answers) == 1 else f"turns {', '.join(map(str, answers))}"
        raise RecordError(f"{where}: empty answer (nothing to train on)", kind="empty_answer")
    return out


def _check_images(turns: list[dict], images: list[str]) -> None:
    """Tags only in human turns, one per image (in any human turn, as LLaVA takes them)."""
    for k, turn in enumerate(turns):
        if turn["from"] == GPT and IMAGE_TOKEN in turn["value"]:
            raise RecordError(f"turn {k}: <image> in an answer (gpt turn); tags belong in human turns",
                              kind="image_in_answer")
    n_tags = sum(t["value"].count(IMAGE_TOKEN) for t in turns)
    if n_tags != len(images):
        where = "a text-only sample" if not images else f"{len(images)} image(s)"
        raise RecordError(f"{n_tags} <image> tag(s) in {where}", kind="image_tags")


def record_id(record):
    return record.get("id") if isinstance(record, dict) else None
