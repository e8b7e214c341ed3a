"""Tiny pretrained parts saved to a directory, as a user's local copies of hub models would be:
a Llama (GQA) with a tokenizer that has no pad token (like Llama 3), and a CLIP vision tower
at 28 px / patch 14 (2 x 2 patches). ``spec_overrides(parts)`` points model.llm and
model.vision_tower at them."""

from __future__ import annotations

from pathlib import Path

IMAGE_SIZE, PATCH = 28, 14
NUM_PATCHES = (IMAGE_SIZE // PATCH) ** 2


def save_parts(root: Path) -> dict[str, Path]:
    import torch
    from transformers import AutoTokenizer, CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM
    from transformers.models.clip import CLIPImageProcessorPil

    from llava_hydra.data.tiny import build_tokenizer

    llm, clip = root / "llama", root / "clip"
    build_tokenizer(llm)
    tok = AutoTokenizer.from_pretrained(llm)
    tok.pad_token = tok.unk_token = None  # neither, as in Llama 3: the runner must add a pad token
    tok.save_pretrained(llm)
    # every linear dimension a multiple of 64: bitsandbytes repacks 4-bit weights in 64-blocks for CPU
    # inference on processors with AVX512-BF16 (an intermediate size of 96 fails there)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, tie_word_embeddings=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        LlamaForCausalLM(config).save_pretrained(llm)
        vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2,
                                  image_size=IMAGE_SIZE, patch_size=PATCH, projection_dim=32)
        CLIPVisionModel(vision).save_pretrained(clip)
    CLIPImageProcessorPil(size={"shortest_edge": IMAGE_SIZE},
                          crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}).save_pretrained(clip)
    return {"llm": llm, "vision_tower": clip}


def spec_overrides(parts: dict[str, Path], cache: Path) -> list[str]:
    return [f"model.llm={parts['llm']}", f"model.vision_tower={parts['vision_tower']}", f"paths.cache_dir={cache}"]
