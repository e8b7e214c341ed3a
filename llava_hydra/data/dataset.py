"""LLaVA-format records -> model inputs: tokenize + mask, image loading, the lazy dataset, the collator.

The mask comes from the rendered text: the prompt is tokenized once with character offsets
and a token is labelled when it overlaps an answer span. Each ``<image>`` (one special
token after tokenization) is then expanded to the vision tower's number of patch tokens,
which the Llava model replaces with projected image features.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image, ImageOps

from llava_hydra.data.conversation import GPT, HUMAN, IMAGE_TOKEN, Rendered, render

IGNORE_INDEX = -100


class BadSampleError(ValueError):
    """A record that cannot be trained on; the message names the file, sample and problem."""


def load_records(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"data file not found: {path}")
    text = path.read_text()
    if path.suffix == ".jsonl":
        records = []
        for lineno, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise BadSampleError(f"{path}: line {lineno} is not valid JSON: {e.msg}") from None
        return records
    try:
        records = json.loads(text)
    except json.JSONDecodeError as e:
        raise BadSampleError(f"{path}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    if not isinstance(records, list):
        raise BadSampleError(f"{path}: expected a JSON list of records, got {type(records).__name__}")
    return records


def normalize_turns(record: dict) -> list[dict]:
    """Check the turns and move ``<image>`` to the front of its message, as LLaVA does."""
    turns = record.get("conversations")
    if not isinstance(turns, list) or not turns:
        raise ValueError("record has no 'conversations' list" if turns is None else "'conversations' is empty")
    out = []
    for k, turn in enumerate(turns):
        role, value = turn.get("from"), turn.get("value")
        if role not in (HUMAN, GPT):
            raise ValueError(f"turn {k}: unknown role {role!r} (expected 'human' or 'gpt')")
        if role != (HUMAN if k % 2 == 0 else GPT):
            raise ValueError(f"turn {k}: roles must alternate human, gpt, ... starting with human")
        if not isinstance(value, str):
            raise ValueError(f"turn {k}: 'value' must be a string, got {type(value).__name__}")
        if IMAGE_TOKEN in value:
            value = IMAGE_TOKEN + "\n" + value.replace(IMAGE_TOKEN, "").strip()
        out.append({"from": role, "value": value})
    n_tags = sum(t["value"].count(IMAGE_TOKEN) for t in out)
    n_images = 1 if record.get("image") else 0
    if n_tags != n_images:
        raise ValueError(f"{n_tags} <image> tag(s) for {n_images} image(s)")
    return out


def tokenize_with_labels(rendered: Rendered, tokenizer, image_token_id: int, num_image_tokens: int,
                         max_length: int) -> tuple[list[int], list[int]]:
    """Token ids and labels: answer-span tokens keep their id, all else is IGNORE_INDEX."""
    enc = tokenizer(rendered.text, return_offsets_mapping=True, add_special_tokens=True)
    ids, labels = [], []
    for tok, (s, e) in zip(enc["input_ids"], enc["offset_mapping"]):
        n = num_image_tokens if tok == image_token_id else 1
        trained = tok != image_token_id and any(s < b and e > a for a, b in rendered.answer_spans)
        ids += [tok] * n
        labels += [tok if trained else IGNORE_INDEX] * n
    if len(ids) > max_length:
        ids, labels = ids[:max_length], labels[:max_length]
        if ids.count(image_token_id) % max(num_image_tokens, 1):
            raise ValueError(f"truncation at model_max_length={max_length} would cut an image's tokens")
    if all(lab == IGNORE_INDEX for lab in labels):
        raise ValueError(f"no answer token left to train on (model_max_length={max_length})")
    return ids, labels


def encode_prompt(text: str, tokenizer, image_token_id: int, num_image_tokens: int) -> list[int]:
    """Token ids of a generation prompt, each image token expanded to its patch tokens."""
    ids = []
    for tok in tokenizer(text, add_special_tokens=True)["input_ids"]:
        ids += [tok] * (num_image_tokens if tok == image_token_id else 1)
    return ids


def load_image(path: str | Path, aspect: str, image_processor) -> torch.Tensor:
    img = Image.open(path)
    img = ImageOps.exif_transpose(img).convert("RGB")
    if aspect == "pad":
        w, h = img.size
        if w != h:
            fill = tuple(int(round(c * 255)) for c in image_processor.image_mean)
            canvas = Image.new("RGB", (max(w, h), max(w, h)), fill)
            canvas.paste(img, ((max(w, h) - w) // 2, (max(w, h) - h) // 2))
            img = canvas
    elif aspect != "square":
        raise ValueError(f"image_aspect_ratio must be 'square' or 'pad', got {aspect!r}")
    return image_processor(img, return_tensors="pt")["pixel_values"][0]


class LazySupervisedDataset(torch.utils.data.Dataset):
    """Reads records up front, tokenizes and loads images only when a sample is asked for."""

    def __init__(self, data_path, tokenizer, image_processor, template: str, image_folder=None,
                 image_aspect_ratio: str = "square", model_max_length: int = 2048,
                 image_token_id: int | None = None, num_image_tokens: int = 576):
        self.data_path = str(data_path)
        self.records = load_records(data_path)
        self.tokenizer, self.image_processor = tokenizer, image_processor
        self.template, self.image_folder = template, Path(image_folder or ".")
        self.image_aspect_ratio, self.model_max_length = image_aspect_ratio, model_max_length
        self.image_token_id = image_token_id if image_token_id is not None else tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
        self.num_image_tokens = num_image_tokens
        self._lengths = None

    def __len__(self) -> int:
        return len(self.records)

    def _fail(self, i: int, problem: str) -> BadSampleError:
        rid = self.records[i].get("id") if isinstance(self.records[i], dict) else None
        return BadSampleError(f"{self.data_path}: sample {i} (id={rid!r}): {problem}")

    def _render(self, i: int) -> Rendered:
        record = self.records[i]
        try:
            turns = normalize_turns(record)
        except ValueError as e:
            raise self._fail(i, str(e)) from None
        return render(self.template, turns, eos=self.tokenizer.eos_token or "")

    @property
    def modality_lengths(self) -> list[int]:
        """Token count per sample (image tokens included); negative for text-only, as in LLaVA."""
        if self._lengths is None:
            texts = [self._render(i).text for i in range(len(self))]
            counts = self.tokenizer(texts, add_special_tokens=True)["input_ids"]
            extra = self.num_image_tokens - 1
            self._lengths = [
                len(ids) + extra if self.records[i].get("image") else -len(ids) for i, ids in enumerate(counts)
            ]
        return self._lengths

    def __getitem__(self, i: int) -> dict:
        record = self.records[i]
        try:
            ids, labels = tokenize_with_labels(self._render(i), self.tokenizer, self.image_token_id,
                                               self.num_image_tokens, self.model_max_length)
        except BadSampleError:
            raise
        except ValueError as e:
            raise self._fail(i, str(e)) from None
        sample = {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels)}
        if record.get("image"):
            path = self.image_folder / record["image"]
            try:
                sample["pixel_values"] = load_image(path, self.image_aspect_ratio, self.image_processor)
            except (OSError, SyntaxError) as e:
                raise self._fail(i, f"cannot read image {path}: {e}") from None
        return sample


@dataclass
class DataCollator:
    """Right-pads a batch; images of the batch's image samples are stacked (text-only have none)."""

    pad_token_id: int

    def __call__(self, samples: list[dict]) -> dict:
        longest = max(len(s["input_ids"]) for s in samples)
        ids = torch.full((len(samples), longest), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(samples), longest), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(samples), longest), dtype=torch.long)
        for row, s in enumerate(samples):
            n = len(s["input_ids"])
            ids[row, :n], labels[row, :n], mask[row, :n] = s["input_ids"], s["labels"], 1
        batch = {"input_ids": ids, "labels": labels, "attention_mask": mask}
        images = [s["pixel_values"] for s in samples if "pixel_values" in s]
        if images:
            batch["pixel_values"] = torch.stack(images)
        return batch
