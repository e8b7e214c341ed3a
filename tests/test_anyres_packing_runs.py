"""Training runs with AnyRes models (slow): ``training.packing=true`` with model=tiny_next and
model=tiny_onevision in one process and in two (tiny_next under torchrun with ZeRO-2, tiny_onevision
with launcher.nproc_per_node=2 DDP), and QLoRA with model=tiny_next and model=tiny_onevision
(4-bit LLM on CPU through bitsandbytes): train, save the adapter, merge, evaluate; the OneVision adapter
run also answers through chat and eval without torchvision, as its merged model does in transformers.

Run with ``pytest -m slow tests/test_anyres_packing_runs.py``."""

from __future__ import annotations

import functools
import json
import math

import pytest
import torch

pytestmark = pytest.mark.slow

SMALL = ["stage=finetune", "stage.pretrain_mm_mlp_adapter=null", "data.synthetic.num_images=32",
         "data.synthetic.num_text_only=8", "data.synthetic.num_eval=4", "training.max_steps=3",
         "training.logging_steps=1", "eval.max_samples=4"]
PACKED = ["training.packing=true", "training.per_device_train_batch_size=2"]


def record_forwards(monkeypatch, cls) -> list[dict]:
    """What every training forward of ``cls`` receives: image tokens, image sizes, crops, samples per row."""
    seen, forward = [], cls.forward

    @functools.wraps(forward)  # generate reads forward's signature
    def spy(self, *args, **kwargs):
        ids = kwargs["input_ids"]
        if self.training:
            seen.append({"image_tokens": int((ids == self.config.image_token_index).sum()),
                         "images": len(kwargs["image_sizes"]) if kwargs.get("image_sizes") is not None else 0,
                         "crops": len(kwargs["pixel_values"]) if kwargs.get("pixel_values") is not None else 0,
                         "samples_per_row": (kwargs["position_ids"] == 0).sum(1).tolist(),
                         "images_per_row": _runs_per_row(ids == self.config.image_token_index),
                         "expected_tokens": _expected(self.config, kwargs)})
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(cls, "forward", spy)
    return seen


def _runs_per_row(is_image: torch.Tensor) -> list[int]:
    starts = is_image.clone()
    starts[:, 1:] &= ~is_image[:, :-1]
    return starts.sum(1).tolist()


def _expected(config, kwargs) -> int:
    """Image tokens the batch's image_sizes call for (the rule the data side counts with)."""
    from llava_hydra.data.image_tokens import tokens_for_config

    sizes = kwargs.get("image_sizes")
    return 0 if sizes is None else sum(tokens_for_config(config)(sizes.tolist()))


@pytest.mark.parametrize("model, rows, model_class", [
    ("tiny_next", 18, "LlavaNextForConditionalGeneration"),  # 40 samples in rows of 512 tokens
    ("tiny_onevision", 12, "LlavaOnevisionForConditionalGeneration"),
])
def test_one_process_packed_run(compose_spec, tmp_path, monkeypatch, caplog, model, rows, model_class):
    import transformers

    from llava_hydra.commands.runner import run

    seen = record_forwards(monkeypatch, getattr(transformers, model_class))
    with caplog.at_level("INFO"):
        run(compose_spec(f"model={model}", f"paths.output_root={tmp_path}", f"paths.cache_dir={tmp_path / 'c'}",
                         *SMALL, *PACKED, "model.model_max_length=512"))  # rows of 512 tokens
    assert f"packing: 40 samples in {rows} rows of at most" in caplog.text
    metrics = json.loads((tmp_path / model / "finetune" / "metrics.json").read_text())
    assert metrics["train_steps"] == 3 and math.isfinite(metrics["train_loss"]) and metrics["skipped_steps"] == 0
    assert len(seen) == 3
    for batch in seen:  # the model found exactly as many features as image tokens, image by image
        assert batch["image_tokens"] == batch["expected_tokens"] and batch["crops"] >= batch["images"]
        assert sum(batch["images_per_row"]) == batch["images"]  # every image's run whole, in its row
    assert any(n > 1 for b in seen for n in b["images_per_row"]), "no row held several image samples"


@pytest.mark.parametrize("model, launch, rows", [("tiny_next", "torchrun ZeRO-2", 18),
                                                 ("tiny_onevision", "launcher.nproc_per_node DDP", 12)])
def test_two_processes_packed(tmp_path, model, launch, rows):
    import os
    import subprocess
    import sys

    from launching import torchrun

    out = tmp_path / "out"
    overrides = [f"model={model}", f"paths.output_root={out}", f"paths.cache_dir={tmp_path / 'cache'}", *SMALL,
                 *PACKED, "model.model_max_length=512"]
    if launch.startswith("torchrun"):
        done = torchrun("-m", "llava_hydra", "deepspeed=zero2", *overrides, cwd=tmp_path)
    else:  # the runner starts its two workers itself
        env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
        done = subprocess.run([sys.executable, "-m", "llava_hydra", "launcher.nproc_per_node=2", "deepspeed=none",
                               *overrides], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    run_dir = out / model / "finetune"
    log = (run_dir / f"{model}_finetune.log").read_text()
    assert f"packing: 40 samples in {rows} rows of at most 512 tokens" in log
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["train_steps"] == 3 and math.isfinite(metrics["train_loss"]) and metrics["skipped_steps"] == 0
    assert (run_dir / "model.safetensors").exists()


def test_qlora_tiny_next_trains_saves_merges_and_evaluates(compose_spec, tmp_path, caplog):
    """4-bit NF4 LLM on CPU: the adapter + projector are saved, merge writes a LlavaNext model that
    computes what the 16-bit base + adapter computes on an AnyRes image, and the eval command gives
    the same answers from the adapter run and from the merged model."""
    from omegaconf import OmegaConf
    from peft import PeftModel
    from PIL import Image
    from safetensors.torch import load_file
    from transformers import AutoProcessor, LlavaNextForConditionalGeneration

    from llava_hydra.commands.merge import merge
    from llava_hydra.commands.runner import run
    from llava_hydra.model.assemble import assemble

    cache = tmp_path / "cache"
    with caplog.at_level("INFO"):
        run(compose_spec("model=tiny_next", f"paths.output_root={tmp_path}", f"paths.cache_dir={cache}", *SMALL,
                         "lora=qlora", "lora.r=4", "lora.alpha=8", "training.per_device_train_batch_size=4",
                         "training.learning_rate=1e-2"))
    run_dir = tmp_path / "tiny_next" / "finetune_qlora"
    assert "4-bit LLM" in caplog.text and "(llm through LoRA)" in caplog.text
    saved = load_file(run_dir / "adapter_model.safetensors")
    lora = {k.split(".lora_")[0].split("language_model.")[1] for k in saved if ".lora_" in k}
    assert lora == {f"layers.{i}.{m}" for i in range(2) for m in (
        "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
        "mlp.up_proj", "mlp.down_proj")}
    assert any(".multi_modal_projector." in k for k in saved)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["train_steps"] == 3 and math.isfinite(metrics["train_loss"]) and metrics["eval_samples"] == 4

    merged_dir = merge(run_dir, tmp_path / "merged")
    model = LlavaNextForConditionalGeneration.from_pretrained(merged_dir).eval()
    processor = AutoProcessor.from_pretrained(merged_dir)
    assert not any("lora" in n for n, _ in model.named_parameters())
    prompt = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What shape is it?"}]}],
        add_generation_prompt=True)
    inputs = processor(images=Image.new("RGB", (30, 70), "blue"), text=prompt, return_tensors="pt")
    assert inputs["pixel_values"].shape[1] == 4 and inputs["image_sizes"].tolist() == [[70, 30]]  # 3x1 grid
    spec = OmegaConf.load(run_dir / "llava_hydra_spec.yaml")
    spec.lora.bits = 16  # the adapter on the 16-bit base, as merge puts it
    base, _, _ = assemble(spec, torch.float32, "sdpa")
    adapted = PeftModel.from_pretrained(base, run_dir).eval()
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs).logits, adapted(**inputs).logits, rtol=1e-4, atol=1e-4)
        with adapted.disable_adapter():  # and training moved it away from the base
            assert not torch.allclose(model(**inputs).logits, adapted(**inputs).logits, atol=1e-3)

    adapter, merged = (own_eval_answers(d, tmp_path, cache) for d in (run_dir, merged_dir))
    assert len(adapter) == 4 and adapter == merged


def test_qlora_tiny_onevision_trains_the_tower_merges_and_answers_as_transformers(compose_spec, tmp_path, caplog,
                                                                                   capsys):
    """OneVision's stage 2 under QLoRA: LoRA on the 4-bit LLM, the vision tower and projector trained whole (the
    tower at its own lr), the newline embedding frozen and not saved. The merged model loads as transformers'
    LlavaOnevisionForConditionalGeneration; a stock client of it gets the ids and pixels our eval app makes for
    the adapter run (whose processor is built in memory: no torchvision here), the same logits and the same
    greedy answer, and chat and ``python -m llava_hydra.eval`` work on the adapter run directory."""
    from omegaconf import OmegaConf
    from onevision_client import stock_processor
    from PIL import Image
    from safetensors.torch import load_file
    from transformers import LlavaOnevisionForConditionalGeneration, LlavaOnevisionProcessor

    from llava_hydra.commands.chat import Chat, main as chat_main
    from llava_hydra.commands.merge import merge
    from llava_hydra.commands.runner import run
    from llava_hydra.eval.generation import answer, encode, render, user_message
    from llava_hydra.eval.loading import load_for_inference
    from llava_hydra.model.assemble import assemble

    cache = tmp_path / "cache"
    small = [o for o in SMALL if not o.startswith("training.max_steps")]
    with caplog.at_level("INFO"):
        run(compose_spec("model=tiny_onevision", f"paths.output_root={tmp_path}", f"paths.cache_dir={cache}", *small,
                         "training.max_steps=8", "lora=qlora", "lora.r=4", "lora.alpha=8",
                         "training.per_device_train_batch_size=4", "training.learning_rate=1e-2"))
    run_dir = tmp_path / "tiny_onevision" / "finetune_qlora"
    assert "4-bit LLM" in caplog.text and "(llm through LoRA)" in caplog.text
    assert "trained whole: ['mm_projector', 'vision_tower']" in caplog.text
    assert "optimizer group vision_tower_decay: 19 tensors, lr 0.0002" in caplog.text  # training.vision_tower_lr
    assert "dtypes: newline float32 frozen;" in caplog.text  # README: under LoRA the newline stays frozen

    saved = load_file(run_dir / "adapter_model.safetensors")
    lora = {k.split(".lora_")[0].split("language_model.")[1] for k in saved if ".lora_" in k}
    assert lora == {f"layers.{i}.{m}" for i in range(2) for m in (
        "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
        "mlp.up_proj", "mlp.down_proj")}
    whole = [k for k in saved if ".lora_" not in k]
    assert {k.removeprefix("base_model.model.model.").split(".")[0] for k in whole} == {"multi_modal_projector",
                                                                                      "vision_tower"}
    assert len(whole) == 4 + 48 and len(saved) == 28 + 4 + 48  # the whole tower, no newline / embeddings / lm_head
    state = json.loads((run_dir / "checkpoint-8" / "trainer_state.json").read_text())
    losses = [e["loss"] for e in state["log_history"] if "loss" in e]
    assert len(losses) == 8 and all(map(math.isfinite, losses))
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.5, losses  # 6.09 6.04 5.42 ... 5.23 4.64 4.61 here

    merged_dir = merge(run_dir, tmp_path / "merged")
    model = LlavaOnevisionForConditionalGeneration.from_pretrained(merged_dir).eval()
    assert not any("lora" in n for n, _ in model.named_parameters())
    spec = OmegaConf.load(run_dir / "llava_hydra_spec.yaml")
    spec.lora.bits = 16
    base, _, _ = assemble(spec, torch.float32, "sdpa")  # the base merge rebuilt: same seeded newline
    assert torch.equal(model.model.image_newline, base.model.image_newline)
    tower = dict(model.model.vision_tower.named_parameters())
    assert any(not torch.equal(tower[n], p) for n, p in base.model.vision_tower.named_parameters())  # it trained

    held = json.loads((cache / "synthetic" / "qa_eval.json").read_text())[0]["image"]
    image = tmp_path / "tall.png"  # a held-out shape, stretched to 30x70: cut into crops (a plain colour says "\n")
    Image.open(cache / "synthetic" / "images" / held).convert("RGB").resize((30, 70)).save(image)
    question = "What shape is this?"
    processor = stock_processor(merged_dir)
    message = {"role": "user", "content": [{"type": "image", "path": str(image)}, {"type": "text", "text": question}]}
    theirs = processor.apply_chat_template([message], add_generation_prompt=True, tokenize=True, return_dict=True,
                                           return_tensors="pt")
    loaded, inference, aspect = load_for_inference(run_dir, device="cpu")  # the adapter, merged in memory
    assert type(loaded) is LlavaOnevisionForConditionalGeneration and aspect == "anyres_max_9"
    assert isinstance(inference, LlavaOnevisionProcessor)
    prompt = render(inference, [user_message(question, image=True)])
    ours = encode(inference, [prompt], [str(image)], aspect)
    assert theirs["image_sizes"].tolist() == [[70, 30]] and theirs["pixel_values"].shape[1] == 4  # base + 3x1 grid
    for key in ("input_ids", "attention_mask", "pixel_values", "image_sizes"):
        assert torch.equal(ours[key], theirs[key]), key
    with torch.no_grad():
        torch.testing.assert_close(loaded(**ours).logits, model(**theirs).logits, rtol=1e-4, atol=1e-4)
    gen = {"max_new_tokens": 6, "min_new_tokens": 4, "do_sample": False}  # it would say <|im_end|> at once
    stock = model.generate(**theirs, **gen)
    stock = processor.tokenizer.decode(stock[0, theirs["input_ids"].shape[1]:], skip_special_tokens=True).strip()
    assert stock and answer(loaded, inference, [prompt], [str(image)], aspect, **gen) == [stock]
    assert Chat(loaded, inference, aspect, str(image), stream=None, **gen).ask(question) == stock

    plain = answer(loaded, inference, [prompt], [str(image)], aspect, max_new_tokens=6, do_sample=False)[0]
    capsys.readouterr()  # python -m llava_hydra.chat on the adapter run: decodes as the eval app (no minimum)
    assert chat_main([str(run_dir), "--image", str(image), "--prompt", question, "--max-new-tokens", "6",
                      "--device", "cpu"]) == 0
    assert capsys.readouterr().out.strip() == plain

    adapter, merged = (own_eval_answers(d, tmp_path, cache) for d in (run_dir, merged_dir))
    assert len(adapter) == 4 and adapter == merged


def own_eval_answers(model_dir, tmp_path, cache) -> list[str]:
    """``python -m llava_hydra.eval benchmark=own`` on the run's held-out synthetic questions: its answers."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    from llava_hydra.commands import eval_cli

    GlobalHydra.instance().clear()
    with initialize_config_module("llava_hydra.conf", version_base="1.3"):
        cfg = compose("eval", overrides=[f"model_dir={model_dir}", f"paths.eval_root={tmp_path / 'ev'}",
                                         "device=cpu", "benchmark=own", "benchmark.max_new_tokens=4",
                                         f"benchmark.question_file={cache / 'synthetic' / 'qa_eval.json'}",
                                         f"benchmark.image_folder={cache / 'synthetic' / 'images'}"])
    GlobalHydra.instance().clear()
    eval_cli.run(cfg)
    return [json.loads(line)["text"] for line in (model_dir / "eval" / "own" / "answers.jsonl").read_text().splitlines()]
