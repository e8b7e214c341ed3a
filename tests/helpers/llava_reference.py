"""A small re-implementation of LLaVA-1.5's own training preprocessing, for comparison in tests.

Written from reading haotian-liu/LLaVA (llava/train/train.py: preprocess_multimodal,
preprocess_plain, preprocess_v1, preprocess_llama_2; llava/mm_utils.py: tokenizer_image_token;
llava/conversation.py: get_prompt of conv_llava_plain, conv_vicuna_v1, conv_llava_llama_2),
including its label arithmetic as it is: round lengths counted by tokenizing each round on its
own, ``- 2`` for bos and the trailing "▁" of "ASSISTANT: " / "[/INST] ", the ``- 1`` per later
round for non-legacy tokenizers (tokenizers >= 0.14) in v1, and the "tokenization mismatch"
rule that sets every label of the sample to IGNORE when the counted length differs from the
real one. ``llava_sample`` returns ids/labels with LLaVA's single IMAGE_TOKEN_INDEX expanded to
``num_image_tokens`` copies of our image token id (labels IGNORE), and whether LLaVA reported a
mismatch. Not used by the package: the point is an independent second implementation.

``SlowLlamaTokenizer`` is the tokenizer LLaVA's train.py loads (``use_fast=False``: transformers
4.3x's SentencePiece ``LlamaTokenizer``) for text without special tokens in it, written from that
class: ``legacy`` true encodes with SentencePiece as is (dummy prefix ``▁`` on); ``legacy`` false
turns the dummy prefix off in the model, writes ``▁`` in front of the text itself (``tokenize``)
and, for a text starting with ``▁``/space, encodes ``<unk>`` + text and drops the ``<unk>``
pieces (``_tokenize``). Either way ``" Two"`` is ``▁ ▁Two``: a space before the text is a ``▁``
of its own, the dummy prefix another.
"""

from __future__ import annotations

IGNORE = -100
IMAGE_TOKEN_INDEX = -200
IMAGE = "<image>"
VICUNA_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. "
                 "The assistant gives helpful, detailed, and polite answers to the user's questions.")
LLAMA_2_SYSTEM = ("You are a helpful language and vision assistant. You are able to understand the visual content "
                  "that the user provides, and assist the user with a variety of tasks using natural language.")


class SlowLlamaTokenizer:
    """transformers 4.3x's slow LlamaTokenizer (as LLaVA loads it) on text with no special tokens."""

    SPIECE_UNDERLINE = "▁"

    def __init__(self, model_file, legacy: bool):
        import sentencepiece as spm
        from sentencepiece import sentencepiece_model_pb2

        proto = open(model_file, "rb").read()
        if not legacy:  # get_spm_processor: the model's own dummy prefix is turned off
            model = sentencepiece_model_pb2.ModelProto.FromString(proto)
            model.normalizer_spec.add_dummy_prefix = False
            proto = model.SerializeToString()
        self.sp = spm.SentencePieceProcessor(model_proto=proto)
        self.legacy = legacy
        self.bos_token_id = self.sp.bos_id()
        self.unk_token = self.sp.id_to_piece(self.sp.unk_id())
        self.unk_token_length = len(self.sp.encode(self.unk_token))

    def _tokenize(self, text):
        tokens = self.sp.encode(text, out_type=str)
        if self.legacy or not text.startswith((self.SPIECE_UNDERLINE, " ")):
            return tokens
        tokens = self.sp.encode(self.unk_token + text, out_type=str)
        return tokens[self.unk_token_length:] if len(tokens) >= self.unk_token_length else tokens

    def tokenize(self, text):
        if self.legacy or not text:
            return self._tokenize(text) if text else []
        return self._tokenize(self.SPIECE_UNDERLINE + text.replace(self.SPIECE_UNDERLINE, " "))

    def __call__(self, text):
        from types import SimpleNamespace

        assert "<s>" not in text and "</s>" not in text, "special tokens are not modelled here"
        return SimpleNamespace(input_ids=[self.bos_token_id] + [self.sp.piece_to_id(p) for p in self.tokenize(text)])


def tokenizer_image_token(prompt, tok):
    pieces = [tok(c).input_ids for c in prompt.split(IMAGE)]
    out, offset = [], 0
    if pieces and pieces[0] and pieces[0][0] == tok.bos_token_id:
        offset = 1
        out.append(pieces[0][0])
    for k, x in enumerate(pieces):
        if k:
            out.append(IMAGE_TOKEN_INDEX)
        out.extend(x[offset:])
    return out


def preprocess_multimodal(conv):
    out = []
    for t in conv:
        v = t["value"]
        if IMAGE in v:
            v = (IMAGE + "\n" + v.replace(IMAGE, "").strip()).strip()
        out.append({**t, "value": v})
    return out


def prompt_v1(conv):
    seps = [" ", "</s>"]
    ret = VICUNA_SYSTEM + seps[0]
    for i, t in enumerate(conv):
        role = "USER" if i % 2 == 0 else "ASSISTANT"
        ret += role + ": " + t["value"] + seps[i % 2]
    return ret


def prompt_llama_2(conv):
    ret = ""
    for i, t in enumerate(conv):
        msg = t["value"]
        if i == 0:
            msg = f"<<SYS>>\n{LLAMA_2_SYSTEM}\n<</SYS>>\n\n" + msg
        if i % 2 == 0:
            ret += "<s>" + f"[INST] {msg} [/INST]"
        else:
            ret += " " + msg + " " + "</s>"
    return ret.lstrip("<s>")  # LLaVA's lstrip(sep): strips those characters


def _ids(text, tok, has_image):
    return tokenizer_image_token(text, tok) if has_image else tok(text).input_ids


def _label_rounds(prompt, ids, tok, has_image, sep, adjust_non_legacy):
    target = list(ids)
    total = len(ids)
    cur = 1
    target[:cur] = [IGNORE] * cur
    for i, rou in enumerate(prompt.split("</s>")):
        if rou == "":
            break
        parts = rou.split(sep)
        if len(parts) != 2:
            break
        parts[0] += sep
        round_len = len(_ids(rou, tok, has_image))
        instruction_len = len(_ids(parts[0], tok, has_image)) - 2
        if adjust_non_legacy and i != 0 and not tok.legacy:
            round_len -= 1
            instruction_len -= 1
        target[cur:cur + instruction_len] = [IGNORE] * len(target[cur:cur + instruction_len])
        cur += round_len
    target[cur:] = [IGNORE] * len(target[cur:])
    mismatch = cur != total
    if mismatch:
        target = [IGNORE] * total
    return target, mismatch


def llava_sample(template, conv, tok, has_image, image_token_id, num_image_tokens):
    """(input_ids, labels, mismatch) as LLaVA trains the conversation, image run expanded."""
    conv = preprocess_multimodal(conv) if has_image else conv
    if template == "plain":
        prompt = IMAGE + conv[1]["value"] + "\n"
        ids = tokenizer_image_token(prompt, tok)
        labels = list(ids)
        n = len(tokenizer_image_token(IMAGE, tok))
        labels[:n] = [IGNORE] * n
        mismatch = False
    elif template == "v1":
        prompt = prompt_v1(conv)
        ids = _ids(prompt, tok, has_image)
        labels, mismatch = _label_rounds(prompt, ids, tok, has_image, " ASSISTANT: ", adjust_non_legacy=True)
    elif template == "llama_2":
        prompt = prompt_llama_2(conv)
        ids = _ids(prompt, tok, has_image)
        labels, mismatch = _label_rounds(prompt, ids, tok, has_image, "[/INST] ", adjust_non_legacy=False)
    else:
        raise ValueError(template)
    out_ids, out_labels = [], []
    for t, lab in zip(ids, labels):
        if t == IMAGE_TOKEN_INDEX:
            out_ids += [image_token_id] * num_image_tokens
            out_labels += [IGNORE] * num_image_tokens
        else:
            out_ids.append(t)
            out_labels.append(lab)
    return out_ids, out_labels, mismatch
