"""Conversation templates: LLaVA-format turns -> prompt text + the character spans trained on.

A template renders the whole conversation to one string and records, for each assistant
answer, the span of characters the model must learn (the answer and the end-of-turn text
that closes it). Labels are later derived from these spans and the tokenizer's offsets, so
nothing here counts tokens by hand and a new tokenizer cannot shift the mask.

``render_prompt(template, conversations)`` is the public entry for the text alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field

IMAGE_TOKEN = "<image>"
HUMAN, GPT = "human", "gpt"

VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)


@dataclass
class Rendered:
    text: str = ""
    answer_spans: list[tuple[int, int]] = field(default_factory=list)

    def add(self, piece: str, trained: bool = False) -> None:
        if trained and piece:
            self.answer_spans.append((len(self.text), len(self.text) + len(piece)))
        self.text += piece


def _pairs(conversations: list[dict]):
    """(question, answer) pairs; answer is None for an open final question (generation)."""
    turns = [t["value"] for t in conversations]
    for k in range(0, len(turns), 2):
        yield turns[k], turns[k + 1] if k + 1 < len(turns) else None


def _render_plain(conversations: list[dict], eos: str) -> Rendered:
    # LLaVA's preprocess_plain: the human text is dropped, only its image stays; the caption
    # and the "\n" separator are trained.
    out = Rendered()
    for question, answer in _pairs(conversations):
        out.add(IMAGE_TOKEN * question.count(IMAGE_TOKEN))
        if answer is not None:
            out.add(answer + "\n", trained=True)
    return out


def _render_v1(conversations: list[dict], eos: str) -> Rendered:
    # Vicuna v1.1 (LLaVA conv_vicuna_v1, SeparatorStyle.TWO, sep " ", sep2 "</s>")
    out = Rendered()
    out.add(VICUNA_SYSTEM + " ")
    for question, answer in _pairs(conversations):
        out.add(f"USER: {question} ASSISTANT:")
        if answer is not None:
            out.add(" ")
            out.add(answer + eos, trained=True)
    return out


TEMPLATES = {"plain": _render_plain, "v1": _render_v1}


def check_template(template: str) -> None:
    if template not in TEMPLATES:
        raise ValueError(f"unknown conversation template {template!r}; choose one of {sorted(TEMPLATES)}")


def render(template: str, conversations: list[dict], eos: str = "</s>") -> Rendered:
    """Render LLaVA-format turns (alternating human/gpt, human first) with answer spans.

    ``eos`` is the end-of-turn text that closes each answer in templates that have one
    (the tokenizer's eos token for v1)."""
    check_template(template)
    return TEMPLATES[template](conversations, eos)


def render_prompt(template: str, conversations: list[dict]) -> str:
    """The full prompt text of a LLaVA-format conversation list, ``<image>`` kept as text."""
    return render(template, conversations).text
