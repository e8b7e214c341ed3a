"""Question files in LLaVA's formats -> the questions the model is asked (``Item``).

- ``vqa_loader``: model_vqa_loader's JSONL (``question_id``, ``image``, ``text``, ...): POPE,
  GQA, TextVQA, VQAv2, MME. ``prompt_suffix`` is appended on a new line unless the text
  already ends with it (LLaVA's released question files carry it).
- ``science_qa``: model_vqa_science's JSON list (``id``, ``image``, ``conversations``): the first
  turn without ``<image>``, the suffix on a new line; the recorded prompt starts with
  ``<image>\\n`` for image questions (eval_science_qa.py counts those as IMG).
- ``mmbench``: model_vqa_mmbench's TSV (``index``, ``question``, ``hint``, ``A``..``D``, base64
  ``image``): the prompt mmbench.py builds as LLaVA does (hint, question, ``A. option`` lines up
  to the first missing option), then the suffix.
- ``training``: a held-out file in the training format: the conversation up to its last answer
  (owndata.py scores against that answer), its images (one, or several in tag order) as paths; a
  OneVision ``video`` record's video as a path under ``video_folder``, its ``<image>`` tag the turn's video part
  (the chat template writes ``<video>`` there, as training places the video: eval/videos.py).
"""

from __future__ import annotations

import base64
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llava_hydra.eval.mmbench import prompts

FORMATS = ("vqa_loader", "science_qa", "mmbench", "training")


@dataclass
class Item:
    question_id: Any
    text: str  # the user turn the model sees (image placed by the chat template)
    prompt: str  # what LLaVA records as the answers' "prompt"
    image: Any = None  # a path, a PIL image, a list of paths (several images, in tag order), or None
    extra: dict = field(default_factory=dict)  # more fields for the answers row
    messages: list | None = None  # a whole conversation (training format), else one user turn
    source: dict = field(default_factory=dict)  # the question file's row (POPE's category, ...)
    video: Any = None  # a video's path (training format, OneVision), or None


def _with_suffix(text: str, suffix: str | None) -> str:
    if not suffix or text.rstrip().endswith(suffix):
        return text
    return f"{text}\n{suffix}"


def _image_path(folder: str | None, name: str) -> Path:
    return Path(folder) / name if folder else Path(name)


def vqa_loader(path: str, image_folder: str | None, suffix: str | None) -> list[Item]:
    items = []
    for i, line in enumerate(Path(path).read_text().splitlines()):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            text = _with_suffix(row["text"], suffix)
            items.append(Item(row["question_id"], text, text,
                              _image_path(image_folder, row["image"]) if row.get("image") else None, source=row))
        except (json.JSONDecodeError, KeyError) as err:
            raise ValueError(f"{path}: line {i + 1}: not a model_vqa_loader question ({err!r})") from err
    return items


def science_qa(path: str, image_folder: str | None, suffix: str | None) -> list[Item]:
    items = []
    for i, row in enumerate(json.loads(Path(path).read_text())):
        try:
            question = row["conversations"][0]["value"].replace("<image>", "").strip()
        except (KeyError, IndexError, TypeError) as err:
            raise ValueError(f"{path}: question {i}: no conversations[0].value ({err!r})") from err
        text = _with_suffix(question, suffix)
        image = _image_path(image_folder, row["image"]) if row.get("image") else None
        items.append(Item(row["id"], text, ("<image>\n" + text) if image else text, image))
    return items


def _decode_image(data: str):
    from PIL import Image

    return Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB")


def mmbench(path: str, image_folder: str | None, suffix: str | None) -> list[Item]:
    return [Item(q["index"], _with_suffix(q["prompt"], suffix), q["prompt"], _decode_image(q["image"]),
                 {"round_id": 0, "options": q["options"], "option_char": q["option_char"]})
            for q in prompts(path)]


def _video_turn(value: str) -> list[dict]:
    """A human turn whose ``<image>`` tag marks the record's video, as transformers' message parts."""
    return [{"type": "video"}, {"type": "text", "text": value}]  # the template drops the tag, writes <video>


def training(path: str, image_folder: str | None, suffix: str | None, video_folder: str | None = None) -> list[Item]:
    from llava_hydra.data.records import RecordError, images_of, load_records, normalize_turns, record_id, video_of

    items = []
    records, _ = load_records(path)
    for i, record in enumerate(records):
        try:
            turns = normalize_turns(record)
            images = images_of(record)
            video = video_of(record)
        except RecordError as err:
            raise ValueError(f"{path}: sample {i}: {err}") from err
        if turns[-1]["from"] != "gpt":
            raise ValueError(f"{path}: sample {i}: the last turn must be the reference answer (from gpt)")
        paths = [_image_path(image_folder, name) for name in images]
        if video and not video_folder:
            raise ValueError(f"{path}: sample {i}: a video record ({video!r}): set benchmark.video_folder=DIR "
                             f"(default: the run's data.video_folder)")
        messages = [{"role": "user" if t["from"] == "human" else "assistant",
                     "content": _video_turn(t["value"]) if video and "<image>" in t["value"] else t["value"]}
                    for t in turns[:-1]]
        qid = record_id(record)
        items.append(Item(qid if qid is not None else i, turns[-2]["value"], turns[-2]["value"],
                          paths[0] if len(paths) == 1 else paths or None,
                          {"reference": turns[-1]["value"]}, messages,
                          video=_image_path(video_folder, video) if video else None))
    return items


def load_items(fmt: str, path: str, image_folder: str | None, suffix: str | None,
               video_folder: str | None = None) -> list[Item]:
    if fmt not in FORMATS:
        raise ValueError(f"benchmark.format must be one of {FORMATS}, got {fmt!r}")
    if not Path(path).exists():
        raise FileNotFoundError(f"{path}: question file not found (benchmarks read local files under "
                                f"paths.eval_root; see README 'Check and evaluate your model')")
    if fmt == "training":
        return training(path, image_folder, suffix, video_folder)
    return globals()[fmt](path, image_folder, suffix)
