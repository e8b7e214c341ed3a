"""The chat template a saved model carries: the training template (plain, v1, llama_2, mpt, qwen_1_5) as Jinja.

``chat_template_for(template, tokenizer)`` returns a Jinja template such that
``processor.apply_chat_template(messages, add_generation_prompt=True)`` followed by tokenizing
the string whole with the tokenizer's special tokens (as transformers' processors and lmms-eval
do) gives the ids training gave, up to the first answer token, for single and multi-turn
conversations. ``None`` for ``chat_template`` (the tokenizer keeps its own).

Training tokenizes as LLaVA does (labels.tokenize): the text is split at each ``<image>`` and
every piece is tokenized on its own, so a SentencePiece (Llama / Vicuna) tokenizer starts each
piece with its dummy-prefix ``▁``. A whole-string tokenization adds that prefix only at the
very start (``legacy: false``), so the template writes it out: a space after each message's
image run (a space before the text becomes that same ``▁``). A piece
that starts with a space gets SentencePiece's ``▁ ▁...`` in training (labels.tokenize), so
the template writes one more space before it. Whether the
tokenizer needs the space is measured (``piece_prefix``), not assumed: byte-level BPE
tokenizers (Llama-3 / Qwen2 family) need none.

The template writes no bos at its start: the tokenizer adds it, as training's tokenization did
(llava-hf's own llava-1.5 templates do the same). So every client that tokenizes the rendered
prompt with the tokenizer's special tokens gets exactly one: transformers'
``processor.apply_chat_template(tokenize=True)`` and ``pipeline("image-text-to-text")`` (which
add them to a prompt that does not start with bos), ``processor(text=rendered)``, lmms-eval's
``llava_hf``. (A client that tokenizes without special tokens, as
``tokenizer.apply_chat_template(tokenize=True)`` does, gets none, as with llava-hf's models.)
LLaVA's llama_2 separator ``</s><s>`` between turns is text inside the prompt and stays.

Message content is LLaVA's (a string, ``<image>`` anywhere in it) or transformers' (a list of
``{"type": "image"}`` / ``{"type": "video"}`` / ``{"type": "text", "text": ...}`` parts: a video part is
written ``<video>`` where an image's ``<image>`` goes, as llava-hf's OneVision template and as a OneVision video
record's tag stands in training, data/video.py); as LLaVA's
preprocess_multimodal does, a message's one image moves to its front, followed by a newline. A
message with several images keeps them where they stand, as training does (LLaVA-NeXT's
interleaved format): the string's tags in place, or the parts in their order, texts verbatim.
A ``system`` message replaces the template's system text (v1, llama_2, mpt, qwen_1_5).
"""

from __future__ import annotations

import logging

from llava_hydra.data.conversation import (IMAGE_TOKEN, LLAVA_LLAMA_2_SYSTEM, MPT_ASSISTANT, MPT_SEP, MPT_SYSTEM,
                                           MPT_USER, QWEN_SYSTEM, VICUNA_SYSTEM)

from llava_hydra.data.labels import swallows_leading_space

log = logging.getLogger(__name__)

MPT_SYSTEM_HEADER = "<|im_start|>system\n"
_PROBES = ("\nWhat is in the picture?", "Two squares", "3 cats", "(a)")


def piece_prefix(tokenizer) -> str:
    """The text that, written after ``<image>``, makes a whole-string tokenization (with the
    tokenizer's special tokens, as clients tokenize a rendered prompt) give the tokens training
    gives a piece tokenized on its own: ``" "`` for SentencePiece tokenizers (the dummy prefix
    ``▁``), ``""`` for byte-level ones. Raises if neither fits."""
    from llava_hydra.data.labels import tokenize

    image_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    for pad in ("", " "):
        if all(tokenize(f"{IMAGE_TOKEN}{p}", tokenizer, image_id, True)[0]
               == tokenizer(f"{IMAGE_TOKEN}{pad}{p}")["input_ids"] for p in _PROBES):
            return pad
    raise ValueError(f"tokenizer {tokenizer.name_or_path!r}: no chat template reproduces its piece-wise "
                     f"tokenization under whole-string tokenization")


# Jinja pieces shared by the templates. ``content(m)``: the message text with its one image moved
# to the front (LLaVA's preprocess_multimodal), PAD after the image run; a message with several
# images keeps them where they stand (LLaVA-NeXT's interleaved format), PAD after each tag that
# text follows; LEAD instead before a text that starts with a space, where training gives that
# piece SentencePiece's ``▁ ▁...`` (labels.swallows_leading_space).
_MACROS = """\
{%- macro images(m) -%}
{%- if m['content'] is string -%}{{ m['content'].count('<image>') }}\
{%- else -%}{{ m['content'] | selectattr('type', 'in', ['image', 'video']) | list | length }}{%- endif -%}
{%- endmacro -%}
{%- macro tag(m) -%}
{%- if m['content'] is not string and m['content'] | selectattr('type', 'equalto', 'video') | list -%}{{ '<video>' }}\
{%- else -%}{{ '<image>' }}{%- endif -%}
{%- endmacro -%}
{%- macro text(m) -%}
{%- if m['content'] is string -%}{{ m['content'] }}\
{%- else -%}{{ m['content'] | selectattr('type', 'equalto', 'text') | map(attribute='text') | join(' ') }}\
{%- endif -%}
{%- endmacro -%}
{%- macro after_image(text) -%}\
{%- if text.startswith(' ') -%}{{ LEAD }}{%- elif text -%}{{ PAD }}{%- endif -%}{%- endmacro -%}
{%- macro interleaved(m) -%}
{%- if m['content'] is string -%}{%- for piece in m['content'].split('<image>') -%}\
{%- if not loop.first -%}{{ '<image>' ~ after_image(piece) }}{%- endif -%}{{ piece }}{%- endfor -%}\
{%- else -%}{%- for part in m['content'] -%}\
{%- if part['type'] in ['image', 'video'] -%}{{ '<' ~ part['type'] ~ '>' }}\
{%- if loop.last or loop.nextitem['type'] != 'text' -%}{{ after_image('') }}{%- endif -%}\
{%- elif part['type'] == 'text' -%}\
{%- if not loop.first and loop.previtem['type'] in ['image', 'video'] -%}{{ after_image(part['text']) }}{%- endif -%}\
{{ part['text'] }}{%- endif -%}{%- endfor -%}{%- endif -%}
{%- endmacro -%}
{%- macro content(m) -%}
{%- set n = images(m) | int -%}
{%- if n > 1 -%}{{ interleaved(m) }}\
{%- elif n > 0 -%}{{ tag(m) ~ PAD ~ ('\\n' ~ text(m).replace('<image>', '').strip()).rstrip() }}\
{%- else -%}{{ text(m) }}{%- endif -%}
{%- endmacro -%}
{%- set ns = namespace(system=DEFAULT_SYSTEM, turns=messages) -%}
{%- if messages and messages[0]['role'] == 'system' -%}\
{%- set ns.system = text(messages[0]) -%}{%- set ns.turns = messages[1:] -%}{%- endif -%}
"""

_BODIES = {
    # preprocess_plain: the question's text is dropped, only its images stay; caption + "\n" after
    "plain": """\
{%- for m in ns.turns -%}
{%- if m['role'] == 'user' -%}{{ '<image>' * (images(m) | int) }}\
{%- else -%}{{ after_image(text(m) ~ '\\n') ~ text(m) ~ '\\n' }}{%- endif -%}
{%- endfor -%}
""",
    # conv_vicuna_v1: "SYSTEM USER: q ASSISTANT: a</s>USER: ..."
    "v1": """\
{{- ns.system ~ ' ' -}}
{%- for m in ns.turns -%}
{%- if m['role'] == 'user' -%}{{ 'USER: ' ~ content(m) ~ ' ' }}\
{%- else -%}{{ 'ASSISTANT: ' ~ content(m) ~ eos_token }}{%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}{{ 'ASSISTANT:' }}{%- endif -%}
""",
    # conv_llava_llama_2: "[INST] <<SYS>>\\nS\\n<</SYS>>\\n\\nq [/INST] a </s><s>[INST] q2 [/INST] ..."
    "llama_2": """\
{%- for m in ns.turns -%}
{%- if m['role'] == 'user' -%}
{%- if loop.first -%}{{ '[INST] <<SYS>>\\n' ~ ns.system ~ '\\n<</SYS>>\\n\\n' ~ content(m) ~ ' [/INST]' }}\
{%- else -%}{{ bos_token ~ '[INST] ' ~ content(m) ~ ' [/INST]' }}{%- endif -%}
{%- else -%}{{ ' ' ~ content(m) ~ ' ' ~ eos_token }}{%- endif -%}
{%- endfor -%}
""",
    # conv_mpt (ChatML with no newlines between turns)
    "mpt": """\
{{- MPT_SYSTEM_HEADER ~ ns.system ~ MPT_SEP -}}
{%- for m in ns.turns -%}
{%- if m['role'] == 'user' -%}{{ MPT_USER ~ content(m) ~ MPT_SEP }}\
{%- else -%}{{ MPT_ASSISTANT ~ content(m) ~ MPT_SEP }}{%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}{{ MPT_ASSISTANT }}{%- endif -%}
""",
    # conv_qwen (LLaVA-NeXT's qwen_1_5: ChatML, a newline after every turn)
    "qwen_1_5": """\
{{- BOS ~ PAD ~ MPT_SYSTEM_HEADER ~ ns.system ~ MPT_SEP ~ '\\n' -}}
{%- for m in ns.turns -%}
{%- if m['role'] == 'user' -%}{{ MPT_USER ~ content(m) ~ MPT_SEP ~ '\\n' }}\
{%- else -%}{{ MPT_ASSISTANT ~ content(m) ~ MPT_SEP ~ '\\n' }}{%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}{{ MPT_ASSISTANT }}{%- endif -%}
""",
}

_SYSTEMS = {"plain": "", "v1": VICUNA_SYSTEM, "llama_2": LLAVA_LLAMA_2_SYSTEM,
            "mpt": MPT_SYSTEM.removeprefix(MPT_SYSTEM_HEADER), "qwen_1_5": QWEN_SYSTEM}


def _literal(s: str) -> str:
    return "'" + s.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n") + "'"


def chat_template_for(template: str, tokenizer) -> str | None:
    """The Jinja chat template of training template ``template`` for ``tokenizer`` (None for
    ``chat_template``: the tokenizer's own is what training used)."""
    if template == "chat_template":
        return None
    if template not in _BODIES:
        raise ValueError(f"no chat template for data.template {template!r}; choose one of "
                         f"{sorted([*_BODIES, 'chat_template'])}")
    header = {
        "PAD": _literal(piece_prefix(tokenizer)),
        "LEAD": _literal(" " if swallows_leading_space(tokenizer) else ""),
        "DEFAULT_SYSTEM": _literal(_SYSTEMS[template]),
        "MPT_SYSTEM_HEADER": _literal(MPT_SYSTEM_HEADER), "MPT_SEP": _literal(MPT_SEP),
        "MPT_USER": _literal(MPT_USER), "MPT_ASSISTANT": _literal(MPT_ASSISTANT),
    }
    body = _BODIES[template]
    sets = "".join(f"{{%- set {k} = {v} -%}}\n" for k, v in header.items())
    return sets + _MACROS + body
