"""The LLM's tokenizer as training and the data commands use it: fast (labels come from
character offsets), right padding, the spec's ``model_max_length``, a pad token, and the
``<image>`` token added."""

from __future__ import annotations

from llava_hydra.data.conversation import IMAGE_TOKEN


def finish_tokenizer(tok, source: str, model_max_length: int):
    """Right padding, the spec's length, a pad token and the image token."""
    if not tok.is_fast:
        raise ValueError(f"{source}: a fast tokenizer is needed (labels come from character offsets)")
    tok.padding_side = "right"
    tok.model_max_length = model_max_length
    if tok.pad_token is None:
        if tok.unk_token is not None:  # LLaVA's choice for Llama/Vicuna
            tok.pad_token = tok.unk_token
        else:  # Llama 3 has neither pad nor unk
            tok.add_special_tokens({"pad_token": "<pad>"})
    if IMAGE_TOKEN not in tok.get_vocab():
        tok.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    if isinstance(getattr(tok, "legacy", None), bool):  # transformers 5 drops it on save; a reload would
        tok.init_kwargs["legacy"] = tok.legacy          # then tokenize text after special tokens differently
    return tok


def load_tokenizer(llm_path: str, model_max_length: int, trust_remote_code: bool = False):
    """The LLM's fast tokenizer with the image token added and a pad token guaranteed."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(llm_path, model_max_length=model_max_length, padding_side="right",
                                        trust_remote_code=trust_remote_code)
    return finish_tokenizer(tok, llm_path, model_max_length)
