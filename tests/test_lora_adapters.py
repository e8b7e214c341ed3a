"""LoRA / QLoRA on local tiny parts: adapters sit on the LLM's linear layers only (names read
back), exactly adapters + projector train, the projector keeps its own learning rate, 4-bit
QLoRA trains on CPU with tower and projector unquantized, and a LoRA run's checkpoints (each
holding adapter + projector) merge into a model that from_pretrained + AutoProcessor load and
that generates."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent / "helpers"))
from local_parts import IMAGE_SIZE, NUM_PATCHES, spec_overrides  # noqa: E402

from llava_hydra.model.lora import lora_targets  # noqa: E402
from llava_hydra.model import build_model  # noqa: E402
from llava_hydra.train.param_groups import parameter_groups  # noqa: E402

LLM_LINEAR = [f"layers.{i}.{m}" for i in range(2) for m in
              ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
               "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")]
PREFIX = "base_model.model."


@pytest.fixture
def spec(compose_spec, parts, tmp_path):
    return lambda *overrides: compose_spec(*spec_overrides(parts, tmp_path), "stage=finetune",
                                           "stage.pretrain_mm_mlp_adapter=null", "lora=lora", "lora.r=4",
                                           "lora.alpha=8", *overrides)


def batch(model, tokenizer):
    torch.manual_seed(0)
    ids = torch.tensor([[tokenizer.bos_token_id] + [model.config.image_token_index] * NUM_PATCHES + [5, 6, 7, 8]] * 2)
    return {"input_ids": ids, "labels": ids, "pixel_values": torch.rand(2, 3, IMAGE_SIZE, IMAGE_SIZE)}


def test_lora_sits_on_the_llm_linear_layers_only(spec):
    model, _, _ = build_model(spec("lora.dropout=0.1", "lora.bias=lora_only"))
    assert sorted(lora_targets(model)) == sorted(f"{PREFIX}model.language_model.{n}" for n in LLM_LINEAR)
    # CLIP has q/k/v/out projections of its own: none of them got an adapter
    assert any(n.endswith("self_attn.q_proj") for n, _ in model.named_modules() if ".vision_tower." in n)
    config = model.peft_config["default"]
    assert (config.r, config.lora_alpha, config.lora_dropout, config.bias) == (4, 8, 0.1, "lora_only")


@pytest.mark.parametrize("trainable, whole", [("[mm_projector,llm]", ["multi_modal_projector"]),
                                              ("[mm_projector,llm,vision_tower]", ["multi_modal_projector", "vision_tower"])])
def test_exactly_adapters_and_the_parts_trained_whole_learn(spec, trainable, whole):
    model, _, _ = build_model(spec(f"stage.trainable={trainable}"))
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    adapters = {n for n in names if ".lora_A." in n or ".lora_B." in n}
    assert {n.rsplit(".lora_", 1)[0] for n in adapters} == {f"{PREFIX}model.language_model.{n}" for n in LLM_LINEAR}
    copies = names - adapters
    assert copies and all(".modules_to_save.default." in n for n in copies)
    assert {n.split(".modules_to_save.")[0].removeprefix(f"{PREFIX}model.") for n in copies} == set(whole)
    assert not any("lm_head" in n or "embed_tokens" in n for n in names)


def test_lora_without_llm_in_stage_trainable_is_an_error(spec):
    with pytest.raises(ValueError, match="add llm to stage.trainable"):
        build_model(spec("stage.trainable=[mm_projector]"))


def test_quantized_llm_needs_lora(spec):
    with pytest.raises(ValueError, match="lora.enable=true"):
        build_model(spec("lora.enable=false", "lora.bits=4"))


def test_projector_trains_at_its_own_learning_rate_under_lora(spec):
    model, _, _ = build_model(spec())
    decay = {n for n, p in model.named_parameters() if p.ndim >= 2}
    groups = parameter_groups(model, decay, 0.0, mm_projector_lr=2e-5)
    by_part = {}
    for g in groups:
        by_part.setdefault(g["name"].rsplit("_", 2)[0] if "no_decay" in g["name"] else g["name"].rsplit("_", 1)[0],
                           []).extend(g["params"])
    names = {id(p): n for n, p in model.named_parameters()}
    projector = {names[id(p)] for p in by_part["mm_projector"]}
    assert projector == {n for n, p in model.named_parameters() if p.requires_grad and "multi_modal_projector" in n}
    assert all(".modules_to_save.default." in n for n in projector)
    assert all(g.get("lr") == 2e-5 for g in groups if g["name"].startswith("mm_projector"))
    assert {names[id(p)] for p in by_part["base"]} == {
        n for n, p in model.named_parameters() if p.requires_grad and ".lora_" in n}


def test_qlora_4bit_trains_on_cpu_with_tower_and_projector_unquantized(spec):
    import bitsandbytes as bnb

    model, tokenizer, _ = build_model(spec("lora=qlora", "lora.r=4", "lora.alpha=8"))
    for name in LLM_LINEAR:
        layer = model.get_submodule(f"{PREFIX}model.language_model.{name}").base_layer
        assert isinstance(layer, bnb.nn.Linear4bit), name
        assert layer.weight.quant_state.quant_type == "nf4" and layer.weight.quant_state.nested  # double quant
    core = model.base_model.model.model
    unquantized = [m for part in (core.vision_tower, core.multi_modal_projector, model.base_model.model.lm_head)
                   for m in part.modules() if isinstance(m, torch.nn.Linear)]
    assert unquantized and not any(isinstance(m, (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt)) for m in unquantized)
    assert all(m.weight.dtype == torch.float32 for m in unquantized)

    frozen = model.get_submodule(f"{PREFIX}model.language_model.layers.0.self_attn.q_proj").base_layer.weight
    packed = frozen.data.clone()
    trainable = [p for p in model.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in trainable]
    optimizer = torch.optim.AdamW(trainable, lr=1e-2)
    data, losses = batch(model, tokenizer), []
    for _ in range(4):
        loss = model(**data).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0], losses
    assert torch.equal(frozen.data, packed)  # the 4-bit base never changes
    assert all(not torch.equal(a, b) for a, b in zip(before, trainable))  # every adapter / projector tensor moved


def test_qlora_8bit_builds_and_backpropagates(spec):
    import bitsandbytes as bnb

    model, tokenizer, _ = build_model(spec("lora.bits=8"))
    layer = model.get_submodule(f"{PREFIX}model.language_model.layers.1.mlp.down_proj").base_layer
    assert isinstance(layer, bnb.nn.Linear8bitLt)
    model(**batch(model, tokenizer)).loss.backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if p.requires_grad and ".lora_B." in n)


SMALL = ["data.synthetic.num_images=32", "data.synthetic.num_text_only=8", "data.synthetic.num_eval=4",
         "training.max_steps=4", "training.save_steps=2", "training.save_total_limit=null",
         "training.per_device_train_batch_size=4", "training.logging_steps=1", "eval.max_samples=4"]


@pytest.mark.e2e
@pytest.mark.parametrize("lora", ["lora", "qlora"])
def test_lora_run_checkpoints_merge_into_a_model_that_generates(compose_spec, parts, tmp_path, lora):
    from PIL import Image
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from llava_hydra.commands.merge import merge
    from llava_hydra.model.assemble import assemble
    from llava_hydra.commands.runner import run

    cache = tmp_path / "cache"
    run(compose_spec(*spec_overrides(parts, cache), f"paths.output_root={tmp_path}", "stage=finetune",
                     "stage.pretrain_mm_mlp_adapter=null", f"lora={lora}", "lora.r=4", "lora.alpha=8",
                     "training.learning_rate=1e-2", *SMALL))
    run_dir = tmp_path / "tiny" / f"finetune_{lora}"  # a LoRA run's own directory (config/run_dir.py)
    for step in (2, 4):  # every checkpoint holds the adapter and the projector
        saved = load_file(run_dir / f"checkpoint-{step}" / "adapter_model.safetensors")
        assert {k.split(".multi_modal_projector.")[1] for k in saved if ".multi_modal_projector." in k} == {
            "linear_1.weight", "linear_1.bias", "linear_2.weight", "linear_2.bias"}
        assert {k.split(".lora_")[0].removeprefix(f"{PREFIX}model.language_model.") for k in saved if ".lora_" in k} \
            == set(LLM_LINEAR)
    assert not torch.equal(load_file(run_dir / "checkpoint-2" / "adapter_model.safetensors")[
        f"{PREFIX}model.multi_modal_projector.linear_1.weight"], saved[f"{PREFIX}model.multi_modal_projector.linear_1.weight"])

    merged_dir = merge(run_dir / "checkpoint-2", tmp_path / "merged")  # an intermediate checkpoint
    from llava_hydra.eval.loading import spec_data  # the run's data settings travel with the merged model

    assert spec_data(merged_dir)["image_aspect_ratio"] == "pad" and not (merged_dir / "adapter_config.json").exists()
    model = LlavaForConditionalGeneration.from_pretrained(merged_dir)
    processor = AutoProcessor.from_pretrained(merged_dir)
    assert not any("lora" in n or "modules_to_save" in n for n, _ in model.named_parameters())
    inputs = processor(images=Image.new("RGB", (32, 32), "blue"),
                       text="USER: <image>\nWhat shape is it? ASSISTANT:", return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=4, min_new_tokens=4, do_sample=False)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 4
    answer = processor.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    assert isinstance(answer, str)
    # the merged model carries its training prompt (v1) as its chat template
    assert processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What shape is it?"}]}],
        add_generation_prompt=True).endswith("questions. USER: <image>\nWhat shape is it? ASSISTANT:")

    # the merged model computes what base + adapter computes (for QLoRA: on the 16-bit base)
    from omegaconf import OmegaConf

    spec = OmegaConf.load(run_dir / "llava_hydra_spec.yaml")
    spec.lora.bits = 16
    base, _, _ = assemble(spec, torch.float32, "sdpa")
    adapted = PeftModel.from_pretrained(base, run_dir / "checkpoint-2").eval()
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs).logits, adapted(**inputs).logits, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(model.model.multi_modal_projector.linear_1.weight,
                               load_file(run_dir / "checkpoint-2" / "adapter_model.safetensors")[
                                   f"{PREFIX}model.multi_modal_projector.linear_1.weight"])
