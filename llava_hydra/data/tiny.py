"""The embedded default's "pretrained" parts, generated locally: ``builtin://tiny-llama``
(a 2-layer Llama with a byte-level BPE tokenizer trained here) and ``builtin://tiny-clip``
(a 2-layer CLIP vision tower at 32 px; ``builtin://tiny-siglip`` the same as a SigLIP tower,
which has no CLS token: ``model.vision_tower=builtin://tiny-siglip``); ``builtin://tiny-qwen2`` a 2-layer
Qwen2 with a ChatML tokenizer as Qwen2-Instruct's (no bos, eos ``<|im_end|>``, pad ``<|endoftext|>``,
Qwen2-Instruct's chat template: model=tiny_onevision). Random weights from a fixed seed, written once
under the cache directory and then loaded by the same ``from_pretrained`` code as a hub
model, so the tiny default exercises the real loading path.
"""

from __future__ import annotations

import json
from pathlib import Path

BUILTIN_PREFIX = "builtin://"
VERSION = 1  # bump when a builder changes, so stale caches are rebuilt


def _system_and_template_text() -> list[str]:
    from llava_hydra.data.conversation import VICUNA_SYSTEM

    return [VICUNA_SYSTEM, "USER:", "ASSISTANT:", "USER: ASSISTANT:"]


def build_tokenizer(path: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    from llava_hydra.data.synthetic import corpus

    specials = ["<unk>", "<s>", "</s>", "<pad>"]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    texts = corpus() + _system_and_template_text()
    tok.train_from_iterator(texts * 4, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A $B",
                                                       special_tokens=[("<s>", tok.token_to_id("<s>"))])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>", pad_token="<pad>")
    fast.save_pretrained(path)


QWEN2_CHAT_TEMPLATE = (  # Qwen2-Instruct's own (tokenizer_config.json of Qwen/Qwen2-7B-Instruct)
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")


def build_qwen2_tokenizer(path: Path) -> None:
    """Byte-level BPE as Qwen2's: no bos, ChatML's turn tokens as special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from llava_hydra.data.synthetic import corpus

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    texts = corpus() + ["system", "user", "assistant", "You are a helpful assistant."]
    tok.train_from_iterator(texts * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   additional_special_tokens=["<|im_start|>", "<|im_end|>"])
    fast.chat_template = QWEN2_CHAT_TEMPLATE
    fast.save_pretrained(path)


def build_qwen2(path: Path) -> None:
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    build_qwen2_tokenizer(path)
    tok = AutoTokenizer.from_pretrained(path)
    config = Qwen2Config(vocab_size=len(tok), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                         bos_token_id=None, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                         tie_word_embeddings=True)  # as Qwen2-0.5B-Instruct
    torch.manual_seed(1234)
    Qwen2ForCausalLM(config).save_pretrained(path)


def build_llm(path: Path) -> None:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    build_tokenizer(path)
    tok = AutoTokenizer.from_pretrained(path)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id, tie_word_embeddings=False)
    torch.manual_seed(1234)
    LlamaForCausalLM(config).save_pretrained(path)


def build_clip(path: Path) -> None:
    import torch
    from transformers import CLIPVisionConfig, CLIPVisionModel
    from transformers.models.clip import CLIPImageProcessorPil

    config = CLIPVisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                              image_size=32, patch_size=8, projection_dim=64)
    torch.manual_seed(4321)
    CLIPVisionModel(config).save_pretrained(path)
    CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(path)


def build_siglip(path: Path) -> None:
    import torch
    from transformers import SiglipVisionConfig, SiglipVisionModel
    from transformers.models.siglip import SiglipImageProcessorPil

    config = SiglipVisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                                image_size=32, patch_size=8)
    torch.manual_seed(4321)
    SiglipVisionModel(config).save_pretrained(path)
    SiglipImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(path)


BUILDERS = {"tiny-llama": build_llm, "tiny-clip": build_clip, "tiny-siglip": build_siglip, "tiny-qwen2": build_qwen2}


def pretrained_path(name_or_path: str, cache_dir: str | Path) -> str:
    """What ``from_pretrained`` loads for a ``model.*`` value: the local directory of
    ``builtin://NAME`` (built on first use under ``cache_dir``); a hub id or path as given."""
    if not name_or_path.startswith(BUILTIN_PREFIX):
        return name_or_path
    name = name_or_path[len(BUILTIN_PREFIX):]
    if name not in BUILDERS:
        raise ValueError(f"unknown builtin model {name_or_path!r}; available: "
                         + ", ".join(BUILTIN_PREFIX + n for n in BUILDERS))
    path = Path(cache_dir) / "builtin" / name
    if not _is_current(path):
        _build(name, path)
    return str(path)


def _is_current(path: Path) -> bool:
    stamp = path / "llava_hydra_builtin.json"
    return stamp.exists() and json.loads(stamp.read_text()).get("version") == VERSION


def _build(name: str, path: Path) -> None:
    """Build into a private directory and rename it into place, so ranks building at once
    never see half a model; the global torch RNG is left as it was."""
    import os
    import shutil

    import torch

    staging = path.with_name(f"{path.name}.building-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    with torch.random.fork_rng(devices=[]):
        BUILDERS[name](staging)
    (staging / "llava_hydra_builtin.json").write_text(json.dumps({"version": VERSION}))
    if path.exists() and not _is_current(path):
        shutil.rmtree(path, ignore_errors=True)  # a stale version
    try:
        os.replace(staging, path)
    except OSError:  # another process got there first
        shutil.rmtree(staging, ignore_errors=True)
        if not _is_current(path):
            raise
