"""GPU training throughput and MFU: LLaVA-1.5-shaped stacks, padded against packed, sdpa against flash-attn.

Issue 7, part 3. The script measures real tokens/s and model FLOPs utilisation for one
forward + backward + AdamW step. It uses random weights, built from configs, so nothing is
downloaded. Two stacks are measured, both with CLIP ViT-L/14-336 (24 layers, hidden 1024,
576 image tokens, features from layer -2) and an mlp2x_gelu projector:

- ``7b-lora``: a 7B-shaped Llama (hidden 4096, 32 layers, 32 heads, MLP 11008, vocab 32064).
  LoRA r=128, alpha=256 on the LLM's linear layers (``llava_hydra.model.lora.apply_lora``), with
  the projector trained whole.
- ``1b-full``: a ~1B-shaped Llama (hidden 2048, 22 layers, 32 heads, 4 KV heads, MLP 5632).
  The LLM and the projector are fully trained.

In both, the vision tower is frozen. On a GPU, weights are bf16, the forward runs under bf16
autocast (as the Trainer's ``bf16=true`` does), and gradient checkpointing is on
(``activation_checkpointing_enable``, as the Trainer calls it).

Data: synthetic LLaVA-mix-like image samples, 576 image tokens + 30-300 text tokens. The
prompt (bos, question and image) has labels -100; the answer, 2/3 of the text, is trained.
Every step takes --batch fresh samples, the same samples for every row:
- padded: one batch of --batch rows, right-padded (``data.dataset.DataCollator``);
- packed: the same samples bin-packed into rows of --max-len and collated for the attention
  implementation (flash: one varlen row), by ``packing.packed_training`` as the runner does.
The script asserts that both layouts see the same real tokens and the same labelled tokens.

Run on a GPU from the repository root (the run time on a GPU is not yet known):

    .venv/bin/python bench/bench_gpu.py                    # -> bench/results/gpu.json
    .venv/bin/python bench/bench_gpu.py --configs 1b-full --attn sdpa --batch 8
    .venv/bin/python bench/bench_gpu.py --tiny --steps 3 --warmup 1   # CPU smoke test -> gpu_tiny.json

``--input-grads llm`` (default) is what ``build_model`` does for a frozen vision tower
(``model.freezing.hook_input_grads_on_text_only``): only the LLM's token embeddings get the require-grad
hook that gradient checkpointing and PEFT need. ``--input-grads all`` is transformers' own
``enable_input_require_grads``, which hooks CLIP's patch embedding too: the frozen tower then
keeps its activations, is recomputed and runs a backward pass nothing uses. Run both to see
what that costs.

Columns: real tok/s = non-pad tokens (image tokens included) per second; pad = pad tokens /
all tokens in the batches; step s = mean wall time of a timed step (CUDA synchronised);
peak GiB = ``torch.cuda.max_memory_allocated``.

MFU = model FLOPs per step / step s / peak FLOPs. Peak FLOPs come from --peak-tflops, by
default from the device name (dense bf16: H100/H200 SXM 989, H100 PCIe 756, A100 312). Model
FLOPs are the FLOPs the model needs. Recomputation from checkpointing is not counted (that
would be HFU), nor padding, nor attention across samples, so a padded row and a packed row of
the same samples do the same model FLOPs. Per sample of s tokens (576 of them image tokens):

    LLM        s * sum_W c_W * |W|  +  3 * L * 2 * d_attn * s * (s + 1)
    projector  576 * 6 * |P|
    vision     577 * 2 * |V| + 576 * 2 * |patch conv| + L_v * 4 * d_v * 577^2   (forward only)

Here W runs over the weight matrices of the decoder and lm_head, and LoRA's A and B are
matrices too. c_W = 6 for a trained matrix (forward 2, input gradient 2, weight gradient 2).
c_W = 4 for a frozen matrix on the gradient path (forward 2, input gradient 2). So the full
finetune is the usual 6N, and the LoRA stack's frozen base is 4N, not 6N. Causal attention
costs 4 * d_attn FLOPs per (query, key) pair and s(s+1)/2 pairs per layer; the backward is
twice the forward. |V| are the tower's linear weights, run on 577 tokens (CLS + 576 patches);
all 24 layers run although layer -2 is the one read. Norms, activations, softmax and
embedding lookups are not counted.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch

PAD_ID, BOS_ID = 0, 1
VISION = dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
              image_size=336, patch_size=14, projection_dim=768)
LLMS = {"7b-lora": dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
                        intermediate_size=11008),
        "1b-full": dict(hidden_size=2048, num_hidden_layers=22, num_attention_heads=32, num_key_value_heads=4,
                        intermediate_size=5632)}
TINY_VISION = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                   image_size=56, patch_size=14, projection_dim=32)  # 16 image tokens
TINY_LLMS = {"7b-lora": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                             intermediate_size=172),
             "1b-full": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                             intermediate_size=128)}
LORA = SimpleNamespace(r=128, alpha=256, dropout=0.05, bias="none", bits=16)  # LLaVA-1.5's LoRA recipe
TINY_LORA = SimpleNamespace(r=8, alpha=16, dropout=0.05, bias="none", bits=16)
PEAK_TFLOPS = [("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0), ("H200", 989.0), ("GH200", 989.0),
               ("A100", 312.0)]  # dense bf16, first match on the device name


# -- model ----------------------------------------------------------------------------------------

def llava_config(name: str, tiny: bool):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    vocab = 1024 if tiny else 32064
    vision = CLIPVisionConfig(**(TINY_VISION if tiny else VISION))
    text = LlamaConfig(**(TINY_LLMS if tiny else LLMS)[name], vocab_size=vocab, max_position_embeddings=4096,
                       rms_norm_eps=1e-5, tie_word_embeddings=False, pad_token_id=PAD_ID, bos_token_id=BOS_ID,
                       eos_token_id=2)
    n_image = (vision.image_size // vision.patch_size) ** 2
    return LlavaConfig(vision_config=vision, text_config=text, image_token_index=vocab - 64,
                       image_seq_length=n_image, projector_hidden_act="gelu", vision_feature_layer=-2,
                       vision_feature_select_strategy="default", multimodal_projector_bias=True,
                       tie_word_embeddings=False)


def build(name: str, attn: str, tiny: bool, device: torch.device, dtype: torch.dtype, input_grads: str):
    """The training-ready model: random weights, trainable parts as the config says, gradient
    checkpointing on, KV cache off (``prepare_model_for_packing``)."""
    from transformers import LlavaForConditionalGeneration

    from llava_hydra.model.lora import apply_lora
    from llava_hydra.model.freezing import freeze_all_but, hook_input_grads_on_text_only
    from llava_hydra.sampling.packing import prepare_model_for_packing

    torch.manual_seed(0)
    with torch.device(device):
        model = LlavaForConditionalGeneration._from_config(llava_config(name, tiny), dtype=dtype,
                                                           attn_implementation=attn)
    parts = ["llm", "mm_projector"]
    if input_grads == "llm":
        hook_input_grads_on_text_only(model)
    if name.endswith("lora"):  # as build_model: LoRA on the LLM, the projector trained whole, the rest frozen
        model = apply_lora(model, TINY_LORA if tiny else LORA, parts, gradient_checkpointing=True)
    else:
        freeze_all_but(model, parts)
        model.enable_input_require_grads()
    model.activation_checkpointing_enable()  # what the Trainer calls for activation_checkpointing=true
    prepare_model_for_packing(model)
    model.to(device).train()
    return model


def flops_per_sample(model, n_tokens: int) -> float:
    """Model FLOPs for one training sample of ``n_tokens`` tokens (formula: module docstring)."""
    from llava_hydra.model.llava import find_llava_model

    core = find_llava_model(model)
    tc, vc = core.config.text_config, core.config.vision_config
    modules = list(core.language_model.named_modules()) + [
        (n, m) for n, m in model.named_modules() if n.endswith("lm_head")]
    llm = sum((6 if m.weight.requires_grad else 4) * m.weight.numel()
              for _, m in modules if isinstance(m, torch.nn.Linear))
    head_dim = getattr(tc, "head_dim", None) or tc.hidden_size // tc.num_attention_heads
    d_attn = tc.num_attention_heads * head_dim
    attention = 3 * tc.num_hidden_layers * 2 * d_attn * n_tokens * (n_tokens + 1)
    n_image = (vc.image_size // vc.patch_size) ** 2
    projector = sum(m.weight.numel() for n, m in core.multi_modal_projector.named_modules()
                    if isinstance(m, torch.nn.Linear) and "original_module" not in n)  # PEFT keeps a frozen copy
    vision = sum(m.weight.numel() for m in core.vision_tower.modules() if isinstance(m, torch.nn.Linear))
    conv = core.vision_tower.get_input_embeddings().weight.numel()
    t_v = n_image + 1
    vision_flops = t_v * 2 * vision + n_image * 2 * conv + vc.num_hidden_layers * 4 * vc.hidden_size * t_v ** 2
    return n_tokens * llm + attention + n_image * 6 * projector + vision_flops


# -- data -----------------------------------------------------------------------------------------

class Samples(list):
    """A list of tokenized samples with the ``modality_lengths`` PackedDataset reads."""

    @property
    def modality_lengths(self) -> list[int]:
        return [len(s["input_ids"]) for s in self]  # all image samples: positive


def make_steps(n_steps: int, batch: int, config, tiny: bool, max_len: int, seed: int = 0) -> list[Samples]:
    """``n_steps`` lists of ``batch`` image samples: bos, a question with the image tokens
    inside it (labels -100), then the answer (trained)."""
    g = torch.Generator().manual_seed(seed)
    n_image, image_id = config.image_seq_length, config.image_token_index
    size = config.vision_config.image_size
    lo, hi = (8, 75) if tiny else (30, 300)
    steps = []
    for _ in range(n_steps):
        samples = Samples()
        for _ in range(batch):
            text = int(torch.randint(lo, hi + 1, (), generator=g))
            question = text // 3
            words = torch.randint(3, image_id, (text - 1,), generator=g)
            ids = torch.cat([torch.tensor([BOS_ID]), words[:question // 2], torch.full((n_image,), image_id),
                             words[question // 2:]])
            labels = ids.clone()
            labels[:n_image + question] = -100
            if len(ids) > max_len:
                raise ValueError(f"a {len(ids)}-token sample does not fit --max-len {max_len}")
            samples.append({"input_ids": ids, "labels": labels,
                            "pixel_values": torch.randn(3, size, size, generator=g)})
        steps.append(samples)
    return steps


def collate(samples: Samples, layout: str, attn: str, max_len: int, seed: int) -> dict:
    from llava_hydra.data.dataset import DataCollator
    from llava_hydra.sampling.packing import packed_training

    if layout == "padded":
        return DataCollator(PAD_ID)(list(samples))
    rows, collator = packed_training(samples, PAD_ID, max_len, attn, seed=seed)  # what the runner swaps in
    return collator([rows[i] for i in range(len(rows))])


# -- measurement ----------------------------------------------------------------------------------

def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_layout(model, steps: list[Samples], layout: str, attn: str, args, device, dtype) -> dict:
    batches, real, labelled, total, shapes = [], 0, 0, 0, set()
    for i, samples in enumerate(steps):
        batch = collate(samples, layout, attn, args.max_len, seed=i)
        n_real = int((batch["input_ids"] != PAD_ID).sum())
        assert n_real == sum(len(s["input_ids"]) for s in samples), f"{layout}: real tokens lost"
        if i >= args.warmup:
            real += n_real
            labelled += int((batch["labels"] != -100).sum())
            total += batch["input_ids"].numel()
            shapes.add(tuple(batch["input_ids"].shape))
        batches.append({k: (v.to(device, dtype) if k == "pixel_values" else v.to(device))
                        if torch.is_tensor(v) else v for k, v in batch.items()})
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-5, fused=device.type == "cuda")
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)
    times, loss = [], None
    try:
        for i, batch in enumerate(batches):
            sync(device)
            t0 = time.perf_counter()
            with autocast:
                loss = model(**batch).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            sync(device)
            if i >= args.warmup:
                times.append(time.perf_counter() - t0)
    finally:
        optimizer.zero_grad(set_to_none=True)
        del optimizer, batches
    seconds = sum(times)
    rows = sorted({s[0] for s in shapes})
    return {"real_tokens": real, "labelled_tokens": labelled, "pad_fraction": 1 - real / total,
            "rows": rows[0] if len(rows) == 1 else f"{rows[0]}-{rows[-1]}", "step_s": seconds / len(times),
            "tokens_per_s": real / seconds, "loss": float(loss.detach()),
            "peak_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None}


def flash_unavailable(device: torch.device) -> str | None:
    if device.type != "cuda":
        return "no CUDA device"
    try:
        import flash_attn  # noqa: F401
    except ImportError:
        return "flash-attn not installed"
    return None


def peak_tflops(device: torch.device, given: float | None) -> float | None:
    if device.type != "cuda":
        return None  # no MFU on a CPU
    if given:
        return given
    name = torch.cuda.get_device_name(device)
    return next((v for key, v in PEAK_TFLOPS if key in name), None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", default="7b-lora,1b-full")
    ap.add_argument("--attn", default="sdpa,flash_attention_2")
    ap.add_argument("--layouts", default="padded,packed")
    ap.add_argument("--batch", type=int, default=None, help="samples per step (default 16, tiny 8)")
    ap.add_argument("--max-len", type=int, default=None, help="packed row length (default 2048, tiny 128)")
    ap.add_argument("--steps", type=int, default=10, help="timed steps")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--peak-tflops", type=float, default=None, help="device peak (default from the device name)")
    ap.add_argument("--input-grads", default="llm", choices=["all", "llm"],
                    help="which input embeddings get a require-grad hook (see the module docstring)")
    ap.add_argument("--tiny", action="store_true", help="tiny shapes, fp32: a CPU smoke test of the logic")
    ap.add_argument("--out", default=None, help="default bench/results/gpu.json (tiny: gpu_tiny.json)")
    args = ap.parse_args()
    args.batch = args.batch or (8 if args.tiny else 16)
    args.max_len = args.max_len or (128 if args.tiny else 2048)
    out = Path(args.out or Path(__file__).parent / "results" / ("gpu_tiny.json" if args.tiny else "gpu.json"))

    import peft
    import transformers

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.float32 if args.tiny or device.type == "cpu" else torch.bfloat16
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    peak = peak_tflops(device, args.peak_tflops)
    print(f"device: {device_name}; torch {torch.__version__}, transformers {transformers.__version__}, "
          f"peft {peft.__version__}; {'tiny shapes' if args.tiny else 'full shapes'}, {dtype}, batch {args.batch} "
          f"samples, max-len {args.max_len}, {args.warmup} warm-up + {args.steps} timed steps, "
          f"input grads: {args.input_grads}, peak {peak or '-'} TFLOP/s")

    results = []
    for name in args.configs.split(","):
        config = llava_config(name, args.tiny)
        steps = make_steps(args.warmup + args.steps, args.batch, config, args.tiny, args.max_len)
        for attn in args.attn.split(","):
            skip = flash_unavailable(device) if "flash" in attn else None
            model, error = None, None
            if skip is None:
                try:
                    model = build(name, attn, args.tiny, device, dtype, args.input_grads)
                except torch.OutOfMemoryError:
                    error = "OOM"
            per_sample = None
            for layout in args.layouts.split(","):
                row = {"config": name, "attention": attn, "layout": layout}
                if skip or error:
                    row["skipped" if skip else "error"] = skip or error
                    results.append(row)
                    continue
                if per_sample is None:
                    per_sample = {n: flops_per_sample(model, n) for n in
                                  {len(s["input_ids"]) for step in steps for s in step}}
                try:
                    row.update(run_layout(model, steps, layout, attn, args, device, dtype))
                except torch.OutOfMemoryError:
                    row["error"] = "OOM"
                if "error" not in row:
                    flops = sum(per_sample[len(s["input_ids"])] for step in steps[args.warmup:] for s in step)
                    row["model_tflop_per_step"] = flops / args.steps / 1e12
                    row["mfu"] = flops / args.steps / row["step_s"] / (peak * 1e12) if peak else None
                results.append(row)
                gc.collect()
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            del model
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
        done = [r for r in results if r["config"] == name and "real_tokens" in r]
        for r in done:  # every layout and attention saw the same samples
            first = done[0]
            assert (r["real_tokens"], r["labelled_tokens"]) == (first["real_tokens"], first["labelled_tokens"]), \
                f"{name}: {r['attention']}/{r['layout']} saw other tokens than {first['attention']}/{first['layout']}"

    print("\n| config | attention | layout | rows | real tok/s | pad | step s | peak GiB | MFU |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|")
    for r in results:
        if "real_tokens" not in r:
            why = r.get("error") or "skipped: " + r["skipped"]
            print(f"| {r['config']} | {r['attention']} | {r['layout']} | {why} | | | | | |")
            continue
        mem = f"{r['peak_gib']:.1f}" if r["peak_gib"] is not None else "-"
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "-"
        print(f"| {r['config']} | {r['attention']} | {r['layout']} | {r['rows']} | {r['tokens_per_s']:,.0f} "
              f"| {100 * r['pad_fraction']:.1f}% | {r['step_s']:.3f} | {mem} | {mfu} |")
    real = {r["config"]: r["real_tokens"] for r in results if "real_tokens" in r}
    print(f"\nreal tokens per run ({args.steps} timed steps), the same in every row of a config: {real}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"device": device_name, "torch": torch.__version__,
                               "transformers": transformers.__version__, "peft": peft.__version__,
                               "dtype": str(dtype), "peak_tflops": peak, "args": vars(args), "rows": results,
                               "command": " ".join(sys.argv)}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
