"""Local stand-ins for hub tokenizers and processors, for tests and benchmarks (no download; not shipped:
tests/helpers is on sys.path through conftest.py, bench scripts add it themselves).

``vicuna_tokenizer``: a Llama/Vicuna-v1.5-style SentencePiece model (byte fallback, split
digits, dummy prefix, ``<unk>``=0 ``<s>``=1 ``</s>``=2) saved in Vicuna's folder layout —
``tokenizer.model`` + ``tokenizer_config.json`` (LlamaTokenizer, ``legacy`` as asked), no
``tokenizer.json`` — and loaded through ``load_tokenizer`` as a real one is.
``sentencepiece_tokenizer``: a Llama-style tokenizer — a SentencePiece BPE model with byte
fallback trained here with the ``sentencepiece`` package, converted to transformers' fast
``LlamaTokenizer`` (vocab + merges read from the model). ``bpe_tokenizer``: a byte-level BPE
(GPT-2 / Llama-3 / Qwen2 family) with optional extra special tokens and a Jinja chat template.
Both come back finished as ``load_tokenizer`` finishes a real one (pad token, ``<image>``).
``clip_processor``: a CLIP image processor at any size.
"""

from __future__ import annotations

import os
from pathlib import Path

from llava_hydra.data.conversation import LLAVA_LLAMA_2_SYSTEM, MPT_SYSTEM, VICUNA_SYSTEM

WORDS = ("the a an is are what which color shape image picture describe answer question red green blue "
         "yellow black white circle square triangle cross cat dog sky tree house car two three on in of "
         "user assistant system chat curious artificial intelligence helpful detailed polite honest visual "
         "language vision provides tasks natural conversation").split()


def turns(*values: str) -> list[dict]:
    """A LLaVA-format conversation: human, gpt, human, ... turns with these values."""
    return [{"from": "human" if k % 2 == 0 else "gpt", "value": v} for k, v in enumerate(values)]


def corpus(n: int = 3000, seed: int = 0) -> list[str]:
    import random

    rng = random.Random(seed)
    texts = [VICUNA_SYSTEM, LLAVA_LLAMA_2_SYSTEM, MPT_SYSTEM, "USER: ASSISTANT: [INST] [/INST] <<SYS>> <</SYS>>"]
    texts += [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 16))).capitalize() + rng.choice(".?!")
              for _ in range(n)]
    return texts


def _finish(tok, path: Path, model_max_length: int):
    from llava_hydra.data.tokenizer import load_tokenizer

    tok.save_pretrained(path)
    return load_tokenizer(str(path), model_max_length)


def sentencepiece_tokenizer(path: str | Path, vocab_size: int = 600, model_max_length: int = 2048):
    """A Llama-style SentencePiece tokenizer (bos ``<s>``, eos ``</s>``, unk ``<unk>``), fast."""
    import sentencepiece as spm
    from transformers import LlamaTokenizer

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    prefix = str(path / "sp")
    spm.SentencePieceTrainer.train(sentence_iterator=iter(corpus()), model_prefix=prefix, vocab_size=vocab_size,
                                   model_type="bpe", unk_id=0, bos_id=1, eos_id=2, pad_id=-1, byte_fallback=True,
                                   character_coverage=1.0, minloglevel=2, num_threads=1)
    sp = spm.SentencePieceProcessor(model_file=prefix + ".model")
    vocab = {sp.id_to_piece(i): i for i in range(sp.get_piece_size())}
    merges = []  # SentencePiece BPE keeps no merge list: every piece splits into two pieces, by rank
    for piece, pid in sorted(vocab.items(), key=lambda kv: kv[1]):
        if sp.is_control(pid) or sp.is_byte(pid) or sp.is_unknown(pid) or len(piece) < 2:
            continue
        splits = sorted((vocab[piece[:k]], vocab[piece[k:]], piece[:k], piece[k:]) for k in range(1, len(piece))
                        if piece[:k] in vocab and piece[k:] in vocab)
        merges += [(a, b) for _, _, a, b in splits]
    os.remove(prefix + ".model")
    os.remove(prefix + ".vocab")
    tok = LlamaTokenizer(vocab=vocab, merges=merges, add_bos_token=True, add_eos_token=False)
    return _finish(tok, path, model_max_length)


def _chat_corpus(seed: int = 1) -> list[str]:
    """corpus() plus Vicuna-style turns where ``USER`` only ever follows ``</s>``: like Llama's
    vocabulary, the model learns ``USER`` as a piece but not ``▁USER`` (which is ``▁`` + ``USER``)."""
    import random

    rng = random.Random(seed)
    base = [t for t in corpus() if "USER" not in t]
    return base + [f"{rng.choice(base)}</s>USER: {rng.choice(base)} ASSISTANT: {rng.choice(base)}"
                   for _ in range(500)]


def vicuna_tokenizer(path: str | Path, legacy: bool = False, vocab_size: int = 600, model_max_length: int = 2048,
                     llama_normalizer: bool = False):
    """A SentencePiece tokenizer in Vicuna-v1.5's folder layout, loaded through load_tokenizer.
    ``llama_normalizer``: the model normalizes as Llama's ``tokenizer.model`` does (rule
    ``identity``, extra whitespace kept), so SentencePiece itself tokenizes ``" Two"`` as
    ``▁ ▁Two``, as LLaVA's slow tokenizer did (the default trains with SentencePiece's ``nmt_nfkc``,
    which collapses spaces)."""
    import json

    import sentencepiece as spm

    from llava_hydra.data.tokenizer import load_tokenizer

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    spm.SentencePieceTrainer.train(sentence_iterator=iter(_chat_corpus()), model_prefix=str(path / "tokenizer"),
                                   vocab_size=vocab_size, model_type="bpe", unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
                                   byte_fallback=True, split_digits=True, character_coverage=1.0, minloglevel=2,
                                   num_threads=1, **({"normalization_rule_name": "identity",
                                                      "remove_extra_whitespaces": False} if llama_normalizer else {}))
    os.remove(path / "tokenizer.vocab")
    config = {"tokenizer_class": "LlamaTokenizer", "legacy": legacy, "add_bos_token": True, "add_eos_token": False,
              "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": None,
              "model_max_length": 4096, "clean_up_tokenization_spaces": False, "padding_side": "right"}
    (path / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    return load_tokenizer(str(path), model_max_length)


def bpe_tokenizer(path: str | Path, vocab_size: int = 600, specials: tuple[str, ...] = (),
                  bos: str | None = "<s>", eos: str = "</s>", chat_template: str | None = None,
                  model_max_length: int = 2048, texts: list[str] | None = None):
    """A byte-level BPE tokenizer; ``bos`` None: no bos token is added (Qwen2-like)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    base = ["<unk>", *([bos] if bos else []), eos]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[*base, *specials], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts or corpus(), trainer=trainer)
    if bos:
        tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A $B",
                                                           special_tokens=[(bos, tok.token_to_id(bos))])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=eos, unk_token="<unk>",
                                   additional_special_tokens=list(specials))
    if chat_template:
        fast.chat_template = chat_template
    return _finish(fast, path, model_max_length)


# Chat templates as the models ship them (Llama-3-Instruct trims content; Qwen2 adds a default system turn)
LLAMA3_CHAT_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")
LLAMA3_SPECIALS = ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")
QWEN2_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
QWEN2_SPECIALS = ("<|im_start|>", "<|im_end|>")


def llama3_tokenizer(path: str | Path, **kw):
    return bpe_tokenizer(path, specials=LLAMA3_SPECIALS, bos="<|begin_of_text|>", eos="<|end_of_text|>",
                         chat_template=LLAMA3_CHAT_TEMPLATE, **kw)


def qwen2_tokenizer(path: str | Path, **kw):
    return bpe_tokenizer(path, specials=QWEN2_SPECIALS, bos=None, eos="<|endoftext|>",
                         chat_template=QWEN2_CHAT_TEMPLATE, **kw)


def clip_processor(size: int = 32):
    from transformers.models.clip import CLIPImageProcessorPil

    return CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
