"""Conversation templates: LLaVA-format turns -> prompt text + the character spans trained on.

A template renders the whole conversation to one string and records, for each assistant
answer, the span of characters the model must learn (the answer and the end-of-turn text
that closes it). Labels are later derived from these spans and the tokenizer's offsets, so
nothing here counts tokens by hand and a new tokenizer cannot shift the mask.

Built-in templates reproduce LLaVA's ``Conversation.get_prompt()`` character for character
(llava/conversation.py): ``plain`` (conv_llava_plain, as preprocess_plain builds it), ``v1``
(conv_vicuna_v1, what LLaVA-1.5 trains with ``--version v1``), ``llama_2``
(conv_llava_llama_2), ``mpt`` (conv_mpt, ChatML) and ``qwen_1_5`` (LLaVA-NeXT's conv_qwen, ChatML with a
newline after each turn, the prompt its preprocess_qwen trains OneVision on). ``chat_template`` renders with the
tokenizer's own Jinja chat template (Llama-3, Qwen2, ...) and locates the answers in its output.

``render_prompt(template, conversations)`` is the public entry for the text alone.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

IMAGE_TOKEN = "<image>"
HUMAN, GPT = "human", "gpt"

VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
LLAVA_LLAMA_2_SYSTEM = (
    "You are a helpful language and vision assistant. "
    "You are able to understand the visual content that the user provides, "
    "and assist the user with a variety of tasks using natural language."
)
MPT_SYSTEM = ("<|im_start|>system\nA conversation between a user and an LLM-based AI assistant. "
              "The assistant gives helpful and honest answers.")
MPT_USER, MPT_ASSISTANT, MPT_SEP = "<|im_start|>user\n", "<|im_start|>assistant\n", "<|im_end|>"
QWEN_SYSTEM = "You are a helpful assistant."  # LLaVA-NeXT's conv_qwen / preprocess_qwen system message


@dataclass
class Rendered:
    text: str = ""
    answer_spans: list[tuple[int, int]] = field(default_factory=list)
    add_special_tokens: bool = True  # False for chat templates: tokenized whole, bos as text (_tokenizer_bos)

    def add(self, piece: str, trained: bool = False) -> None:
        if trained and piece:
            self.answer_spans.append((len(self.text), len(self.text) + len(piece)))
        self.text += piece


def _pairs(conversations: list[dict]):
    """(question, answer) pairs; answer is None for an open final question (generation)."""
    turns = [t["value"] for t in conversations]
    for k in range(0, len(turns), 2):
        yield turns[k], turns[k + 1] if k + 1 < len(turns) else None


def _render_plain(conversations: list[dict], bos: str, eos: str) -> Rendered:
    # LLaVA's preprocess_plain: the human text is dropped, only its image stays; the caption
    # and the "\n" separator are trained.
    out = Rendered()
    for question, answer in _pairs(conversations):
        out.add(IMAGE_TOKEN * question.count(IMAGE_TOKEN))
        if answer is not None:
            out.add(answer + "\n", trained=True)
    return out


def _render_v1(conversations: list[dict], bos: str, eos: str) -> Rendered:
    # SeparatorStyle.TWO, sep " ", sep2 eos: "SYSTEM USER: q ASSISTANT: a</s>USER: ..."
    # An empty message is an open turn in get_prompt ("ASSISTANT:" and nothing after it).
    out = Rendered()
    out.add(VICUNA_SYSTEM + " ")
    for question, answer in _pairs(conversations):
        out.add(f"USER: {question} " if question else "USER:")
        out.add("ASSISTANT:")
        if answer:  # the space is trained with the answer: LLaVA labels the lone "▁" it may become
            out.add(" " + answer + eos, trained=True)
    return out


def _render_llama_2(conversations: list[dict], bos: str, eos: str) -> Rendered:
    # SeparatorStyle.LLAMA_2, sep bos, sep2 eos: "[INST] <<SYS>>\nS\n<</SYS>>\n\nq [/INST] a </s><s>[INST] q2 [/INST] a2 </s>"
    # (get_prompt's final lstrip(sep) removes the first "<s>": the tokenizer adds bos itself)
    out = Rendered()
    for k, (question, answer) in enumerate(_pairs(conversations)):
        if k == 0:
            out.add(f"[INST] <<SYS>>\n{LLAVA_LLAMA_2_SYSTEM}\n<</SYS>>\n\n{question} [/INST]")
        elif question:
            out.add(f"{bos}[INST] {question} [/INST]")
        if answer:  # the separator space trained with the answer, as in v1
            out.add(f" {answer} {eos}", trained=True)
    return out


def _render_mpt(conversations: list[dict], bos: str, eos: str) -> Rendered:
    # SeparatorStyle.MPT (ChatML without newlines between turns), every turn closed by <|im_end|>
    out = Rendered()
    out.add(MPT_SYSTEM + MPT_SEP)
    for question, answer in _pairs(conversations):
        out.add(MPT_USER + question + MPT_SEP if question else MPT_USER)
        out.add(MPT_ASSISTANT)
        if answer:
            out.add(answer + MPT_SEP, trained=True)
    return out


def _render_qwen_1_5(conversations: list[dict], bos: str, eos: str) -> Rendered:
    # SeparatorStyle.CHATML (conv_qwen): "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nq<|im_end|>\n
    # <|im_start|>assistant\na<|im_end|>\n"; the answer and its <|im_end|> trained (LLaVA-NeXT's preprocess_qwen
    # also trains the role header, the newlines and the user turns' <|im_start|>/<|im_end|>: README)
    out = Rendered()
    out.add("<|im_start|>system\n" + QWEN_SYSTEM + MPT_SEP + "\n")
    for question, answer in _pairs(conversations):
        out.add(MPT_USER + question + MPT_SEP + "\n" if question else MPT_USER)
        out.add(MPT_ASSISTANT)
        if answer:
            out.add(answer + MPT_SEP, trained=True)
            out.add("\n")
    return out


BUILTIN = {"plain": _render_plain, "v1": _render_v1, "llama_2": _render_llama_2, "mpt": _render_mpt,
           "qwen_1_5": _render_qwen_1_5}
TEMPLATES = (*BUILTIN, "chat_template")


def check_template(template: str) -> None:
    if template not in TEMPLATES:
        raise ValueError(f"unknown conversation template {template!r}; choose one of {sorted(TEMPLATES)}")


# -- the tokenizer's own chat template ---------------------------------------------------------

_SENTINEL = "\ue000{}\ue001"  # private-use characters: no template trims or escapes them


def _messages(conversations: list[dict], sentinel: bool = False) -> list[dict]:
    out = []
    for k, t in enumerate(conversations):
        content = t["value"]
        if sentinel and t["from"] == GPT:
            content = _SENTINEL.format(k)
        out.append({"role": "user" if t["from"] == HUMAN else "assistant", "content": content})
    return out


def _apply(tokenizer, messages: list[dict], generation: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation)


def _answer_starts_by_sentinel(conversations: list[dict], tokenizer, text: str, generation: bool):
    """Answer (start, end) in ``text`` found by rendering once with a sentinel per answer and
    checking that putting the answers (as is, or stripped as templates that ``trim`` do) back in
    gives ``text`` exactly; None if the template treats the sentinels differently."""
    skeleton = _apply(tokenizer, _messages(conversations, sentinel=True), generation)
    answers = [(k, t["value"]) for k, t in enumerate(conversations) if t["from"] == GPT]
    for transform in (lambda s: s, str.strip):
        spans, rebuilt, pos = [], [], 0
        for k, value in answers:
            mark = _SENTINEL.format(k)
            at = skeleton.find(mark, pos)
            if at < 0:
                return None
            rebuilt.append(skeleton[pos:at])
            start = sum(map(len, rebuilt))
            rebuilt.append(transform(value))
            spans.append((start, start + len(transform(value))))
            pos = at + len(mark)
        rebuilt.append(skeleton[pos:])
        if "".join(rebuilt) == text:
            return spans
    return None


def _answer_starts_by_prefix(conversations: list[dict], tokenizer, text: str):
    """Fallback: each answer is searched from where the conversation up to its question
    (rendered with the generation prompt) ends."""
    spans, cursor = [], 0
    msgs = _messages(conversations)
    for k, t in enumerate(conversations):
        if t["from"] != GPT:
            continue
        prefix = _apply(tokenizer, msgs[:k], generation=True)
        if text.startswith(prefix):
            cursor = max(cursor, len(prefix))
        content = t["value"].strip()
        at = text.find(content, cursor)
        if at < 0:
            raise ValueError(f"the chat template's output does not contain answer {k} verbatim")
        spans.append((at, at + len(content)))
        cursor = at + len(content)
    return spans


_warned_no_eot: set[str] = set()


def _end_of_turn(text: str, end: int, specials: list[str]) -> int:
    """End of the special token that closes an answer ending at ``end`` (spaces allowed between)."""
    j = end
    while j < len(text) and text[j] == " ":
        j += 1
    for s in specials:
        if text.startswith(s, j):
            return j + len(s)
    return end


def _closing_tokens(tokenizer) -> set[str]:
    """Special tokens that may close an answer: not bos, not <image>, not a turn-opening one."""
    found = {t.content for t in getattr(tokenizer, "added_tokens_decoder", {}).values() if t.special}
    found |= set(tokenizer.all_special_tokens)
    return {t for t in found if t and t not in (tokenizer.bos_token, IMAGE_TOKEN)
            and "start" not in t.lower() and "begin" not in t.lower()}


def _tokenizer_bos(text: str, tokenizer) -> str:
    """What a client's tokenizer puts before ``text``, written as text: transformers' processors
    (``apply_chat_template(tokenize=True)``, the image-text-to-text pipeline) add the tokenizer's
    special tokens to a rendered prompt that does not start with bos, so a template that writes
    none (llava-hf's, ours) is served with the tokenizer's bos; training gives it the same. ""
    when the text starts with bos or the tokenizer adds none. For SentencePiece tokenizers a space
    after bos keeps the first word's dummy prefix (measured on the text, not assumed)."""
    bos = tokenizer.bos_token
    if not bos or text.startswith(bos) or tokenizer("")["input_ids"][:1] != [tokenizer.bos_token_id]:
        return ""
    want = tokenizer(text)["input_ids"]
    for lead in (bos, bos + " "):
        if tokenizer(lead + text, add_special_tokens=False)["input_ids"] == want:
            return lead
    raise ValueError(f"chat template of {tokenizer.name_or_path!r}: no text before the rendered prompt gives "
                     f"the ids the tokenizer's own bos gives it")


def _render_chat_template(conversations: list[dict], tokenizer) -> Rendered:
    if tokenizer is None:
        raise ValueError("template chat_template needs the tokenizer (render(..., tokenizer=tok))")
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"template chat_template: tokenizer {getattr(tokenizer, 'name_or_path', '')!r} "
                         f"has no chat template; choose plain, v1, llama_2 or mpt")
    generation = conversations[-1]["from"] == HUMAN
    text = _apply(tokenizer, _messages(conversations), generation)
    spans = _answer_starts_by_sentinel(conversations, tokenizer, text, generation)
    if spans is None:
        spans = _answer_starts_by_prefix(conversations, tokenizer, text)
    specials = sorted(_closing_tokens(tokenizer), key=len, reverse=True)
    lead = _tokenizer_bos(text, tokenizer)
    out = Rendered(text=lead + text, add_special_tokens=False)
    for start, end in spans:
        closed = _end_of_turn(text, end, specials)
        if closed == end and tokenizer.name_or_path not in _warned_no_eot:
            _warned_no_eot.add(tokenizer.name_or_path)
            log.warning("chat template of %r closes an answer with no special end-of-turn token; "
                        "only the answer text is trained", tokenizer.name_or_path)
        out.answer_spans.append((len(lead) + start, len(lead) + closed))
    return out


# -- entry points ------------------------------------------------------------------------------

def image_to_front(value: str) -> str:
    """LLaVA's preprocess_multimodal: a message's one ``<image>`` moves to its front, followed
    by a newline (the rest stripped). A message with several tags (LLaVA-NeXT's interleaved
    multi-image format) keeps them where they stand, as LLaVA-NeXT does."""
    if value.count(IMAGE_TOKEN) != 1:
        return value
    return (IMAGE_TOKEN + "\n" + value.replace(IMAGE_TOKEN, "").strip()).strip()


def render(template: str, conversations: list[dict], eos: str | None = None, tokenizer=None) -> Rendered:
    """Render LLaVA-format turns (alternating human/gpt, human first) with answer spans.

    ``eos`` is the end-of-turn text that closes each answer in v1 and llama_2 (default: the
    tokenizer's eos token, or ``</s>`` without one); ``chat_template`` needs ``tokenizer``."""
    check_template(template)
    if template == "chat_template":
        return _render_chat_template(conversations, tokenizer)
    if eos is None:
        eos = (tokenizer.eos_token if tokenizer is not None else None) or "</s>"
    bos = (tokenizer.bos_token if tokenizer is not None else None) or "<s>"
    return BUILTIN[template](conversations, bos, eos)


def render_prompt(template: str, conversations: list[dict], tokenizer=None) -> str:
    """The full prompt text of a LLaVA-format conversation list, ``<image>`` kept as text:
    the string LLaVA's ``conv.get_prompt()`` gives for the built-in templates (``<image>``
    moved to the front of its message first, as LLaVA's preprocessing does)."""
    turns = [{**t, "value": image_to_front(t["value"])} for t in conversations]
    return render(template, turns, tokenizer=tokenizer).text
