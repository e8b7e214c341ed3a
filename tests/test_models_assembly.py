"""Model assembly from local tiny parts (a Llama, a CLIP tower, a tokenizer saved to temp dirs):
the Llava config follows the spec, exactly stage.trainable learns, both projector types work and
reload, LLaVA's mm_projector.bin loads (and bad files fail by name), an assembled checkpoint is a
starting point, and a saved model generates with from_pretrained + AutoProcessor alone."""

from __future__ import annotations

import pickle
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent / "helpers"))
from local_parts import NUM_PATCHES, IMAGE_SIZE, spec_overrides  # noqa: E402

from llava_hydra.model import build_model, make_processor  # noqa: E402
from llava_hydra.model.precision import pick_attention  # noqa: E402
from llava_hydra.model.projector import load_projector, projector_state  # noqa: E402


@pytest.fixture
def spec(compose_spec, parts, tmp_path):
    return lambda *overrides: compose_spec(*spec_overrides(parts, tmp_path), *overrides)


def image_prompt(model, tokenizer, n_image_tokens=None):
    n = n_image_tokens or model.config.image_seq_length
    return torch.tensor([[tokenizer.bos_token_id] + [model.config.image_token_index] * n + [5, 6, 7]])


def test_assembly_follows_the_spec(spec):
    model, tokenizer, _ = build_model(spec("model.mm_vision_select_layer=-3"))
    c = model.config
    assert c.image_token_index == tokenizer.convert_tokens_to_ids("<image>") and tokenizer.pad_token == "<pad>"
    assert (c.vision_feature_layer, c.vision_feature_select_strategy) == (-3, "default")
    assert c.image_seq_length == NUM_PATCHES  # patch: CLS dropped
    assert c.mm_projector_type == "mlp2x_gelu" and c.projector_hidden_act == "gelu"
    emb = model.get_input_embeddings().weight
    assert emb.shape[0] == len(tokenizer) == model.lm_head.weight.shape[0]
    old = emb.shape[0] - 1  # one token added (<image>); its row is the mean of the old rows
    torch.testing.assert_close(emb[old], emb[:old].mean(0))
    logits = model(input_ids=image_prompt(model, tokenizer), pixel_values=torch.zeros(1, 3, IMAGE_SIZE, IMAGE_SIZE)).logits
    assert logits.shape == (1, 1 + NUM_PATCHES + 3, len(tokenizer))


def test_cls_patch_keeps_the_cls_token(spec):
    model, tokenizer, _ = build_model(spec("model.mm_vision_select_feature=cls_patch"))
    assert model.config.vision_feature_select_strategy == "full"
    assert model.config.image_seq_length == NUM_PATCHES + 1
    model(input_ids=image_prompt(model, tokenizer), pixel_values=torch.zeros(1, 3, IMAGE_SIZE, IMAGE_SIZE))


def trainable_parts(model) -> set[str]:
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    return {".".join(n.split(".")[:2]) if n.startswith("model.") else n.split(".")[0] for n in names}


@pytest.mark.parametrize("trainable, expected", [
    ("[mm_projector]", {"model.multi_modal_projector"}),
    ("[llm]", {"model.language_model", "lm_head"}),
    ("[vision_tower]", {"model.vision_tower"}),
    ("[mm_projector,llm,vision_tower]", {"model.multi_modal_projector", "model.language_model", "lm_head",
                                         "model.vision_tower"}),
])
def test_stage_trainable_freezes_exactly_the_rest(spec, trainable, expected):
    model, tokenizer, _ = build_model(spec(f"stage.trainable={trainable}"))
    assert trainable_parts(model) == expected
    last = model.config.vision_config.num_hidden_layers - 1  # features come from layer -2: the last never helps
    never_used = (f"vision_tower.encoder.layers.{last}.", "vision_tower.post_layernorm.")
    in_parts = {n for n, _ in model.named_parameters()
                if any(n.startswith(prefix + ".") for prefix in expected) and not any(u in n for u in never_used)}
    assert in_parts == {n for n, p in model.named_parameters() if p.requires_grad}
    # gradients reach exactly the trainable parameters; the vision tower is not behind no_grad
    ids = image_prompt(model, tokenizer)
    model(input_ids=ids, pixel_values=torch.rand(1, 3, IMAGE_SIZE, IMAGE_SIZE), labels=ids).loss.backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert with_grad <= in_parts
    if "vision_tower" in trainable:
        assert any(n.startswith("model.vision_tower.") for n in with_grad)


def test_linear_projector_is_one_linear_layer_and_reloads(spec, tmp_path):
    from transformers import LlavaForConditionalGeneration

    model, tokenizer, image_processor = build_model(spec("model.mm_projector_type=linear",
                                                         "stage.trainable=[mm_projector]"))
    projector = model.model.multi_modal_projector
    assert model.config.projector_hidden_act == "linear" and model.config.mm_projector_type == "linear"
    x = torch.randn(3, model.config.vision_config.hidden_size)
    torch.testing.assert_close(projector(x), projector.linear_1(x))
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {
        "model.multi_modal_projector.linear_1.weight", "model.multi_modal_projector.linear_1.bias"}
    model.save_pretrained(tmp_path / "saved")
    reloaded = LlavaForConditionalGeneration.from_pretrained(tmp_path / "saved")
    assert reloaded.config.mm_projector_type == "linear"
    torch.testing.assert_close(reloaded.model.multi_modal_projector(x), projector(x))


def test_unknown_projector_type_names_the_choices(spec):
    with pytest.raises(ValueError, match="mlp3x_gelu.*linear.*mlp2x_gelu"):
        build_model(spec("model.mm_projector_type=mlp3x_gelu"))


def llava_projector_bin(path: Path, model, kind: str, scale: float = 1.0) -> dict[str, torch.Tensor]:
    """A projector file as LLaVA's training writes it (keys model.mm_projector.*)."""
    vision, text = model.config.vision_config.hidden_size, model.config.text_config.hidden_size
    torch.manual_seed(7)
    if kind == "mlp2x_gelu":
        state = {"model.mm_projector.0.weight": torch.randn(text, vision), "model.mm_projector.0.bias": torch.randn(text),
                 "model.mm_projector.2.weight": torch.randn(text, text), "model.mm_projector.2.bias": torch.randn(text)}
    else:
        state = {"model.mm_projector.weight": torch.randn(text, vision), "model.mm_projector.bias": torch.randn(text)}
    state = {k: v * scale for k, v in state.items()}
    torch.save(state, path)
    return state


def test_llava_mm_projector_bin_loads(spec, tmp_path):
    model, _, _ = build_model(spec())
    released = llava_projector_bin(tmp_path / "mm_projector.bin", model, "mlp2x_gelu")
    model, _, _ = build_model(spec(f"stage.pretrain_mm_mlp_adapter={tmp_path / 'mm_projector.bin'}"))
    p = model.model.multi_modal_projector
    torch.testing.assert_close(p.linear_1.weight, released["model.mm_projector.0.weight"])
    torch.testing.assert_close(p.linear_2.bias, released["model.mm_projector.2.bias"])

    released = llava_projector_bin(tmp_path / "linear.bin", model, "linear")
    model, _, _ = build_model(spec("model.mm_projector_type=linear", f"stage.pretrain_mm_mlp_adapter={tmp_path / 'linear.bin'}"))
    x = torch.randn(2, model.config.vision_config.hidden_size)
    expected = x @ released["model.mm_projector.weight"].T + released["model.mm_projector.bias"]
    torch.testing.assert_close(model.model.multi_modal_projector(x), expected)


def test_our_projector_file_round_trips(spec, tmp_path):
    from safetensors.torch import save_file

    model, _, _ = build_model(spec())
    state = {k: v + 1 for k, v in projector_state(model).items()}
    save_file(state, tmp_path / "mm_projector.safetensors")
    load_projector(model, tmp_path / "mm_projector.safetensors")
    for k, v in projector_state(model).items():
        torch.testing.assert_close(v, state[k])


def test_projector_file_mismatch_names_expected_and_found(spec, tmp_path):
    model, _, _ = build_model(spec())
    state = llava_projector_bin(tmp_path / "x.bin", model, "mlp2x_gelu")
    state["model.mm_projector.0.weight"] = torch.zeros(5, 3)
    torch.save(state, tmp_path / "wrong_shape.bin")
    text, vision = model.config.text_config.hidden_size, model.config.vision_config.hidden_size
    with pytest.raises(ValueError, match=rf"linear_1.weight has shape \(5, 3\), the model expects \({text}, {vision}\)"):
        load_projector(model, tmp_path / "wrong_shape.bin")
    llava_projector_bin(tmp_path / "linear.bin", model, "linear")
    with pytest.raises(ValueError, match="holds a linear projector, the model expects mlp2x_gelu"):
        load_projector(model, tmp_path / "linear.bin")


class Payload:
    def __reduce__(self):
        return (print, ("unpickled!",))


def test_projector_pickles_are_loaded_weights_only(spec, tmp_path):
    model, _, _ = build_model(spec())
    with open(tmp_path / "evil.bin", "wb") as f:
        pickle.dump({"model.mm_projector.0.weight": Payload()}, f)
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        load_projector(model, tmp_path / "evil.bin")


def test_starts_from_an_assembled_llava_checkpoint(spec, tmp_path):
    model, tokenizer, image_processor = build_model(spec())
    model.save_pretrained(tmp_path / "llava")
    make_processor(tokenizer, image_processor, model).save_pretrained(tmp_path / "llava")
    again, tok2, _ = build_model(spec(f"model.pretrained_llava={tmp_path / 'llava'}", "model.llm=unused",
                                      "model.vision_tower=unused", "stage.trainable=[mm_projector,llm]"))
    assert len(tok2) == len(tokenizer) and again.config.image_token_index == model.config.image_token_index
    ours, theirs = model.state_dict(), again.state_dict()
    assert ours.keys() == theirs.keys()
    for key in ours:
        torch.testing.assert_close(ours[key], theirs[key], msg=key)
    assert trainable_parts(again) == {"model.multi_modal_projector", "model.language_model", "lm_head"}


def test_saved_model_generates_with_hugging_face_classes_alone(spec, tmp_path):
    from PIL import Image
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    model, tokenizer, image_processor = build_model(spec())
    model.save_pretrained(tmp_path / "out")
    make_processor(tokenizer, image_processor, model).save_pretrained(tmp_path / "out")

    reloaded = LlavaForConditionalGeneration.from_pretrained(tmp_path / "out")
    processor = AutoProcessor.from_pretrained(tmp_path / "out")
    inputs = processor(images=Image.new("RGB", (40, 30), "red"), text="USER: <image>\nWhat colour? ASSISTANT:",
                       return_tensors="pt")
    assert (inputs["input_ids"] == reloaded.config.image_token_index).sum() == reloaded.config.image_seq_length
    out = reloaded.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 4
    with torch.no_grad():  # the same model: the reloaded logits are the trained model's
        torch.testing.assert_close(reloaded(**inputs).logits, model(**inputs).logits)


def test_attention_auto_is_sdpa_without_flash_attn_or_gpu(caplog):
    with caplog.at_level("INFO"):
        assert pick_attention("auto") == "sdpa"
    assert "attention: sdpa" in caplog.text
    assert pick_attention("eager") == "eager"


@pytest.fixture(scope="module")
def siglip(tmp_path_factory):
    from llava_hydra.data.tiny import build_siglip

    path = tmp_path_factory.mktemp("siglip")
    build_siglip(path)  # 32 px, patch 8: 16 patch tokens, no CLS
    return path


def test_siglip_tower_keeps_every_token_as_patch_features(spec, siglip, tmp_path, caplog):
    from PIL import Image
    from transformers import AutoProcessor

    model, tokenizer, image_processor = build_model(spec(f"model.vision_tower={siglip}",
                                                         "stage.trainable=[mm_projector,llm,vision_tower]"))
    assert (model.config.vision_feature_select_strategy, model.config.image_seq_length) == ("full", 16)
    ids = image_prompt(model, tokenizer)
    loss = model(input_ids=ids, pixel_values=torch.rand(1, 3, 32, 32), labels=ids).loss
    loss.backward()  # every trainable vision parameter gets a gradient: the pooling head is frozen
    vision = {n: p for n, p in model.named_parameters() if ".vision_tower." in n and p.requires_grad}
    assert vision and all(p.grad is not None for p in vision.values())
    assert not any(".head." in n for n in vision)

    model.save_pretrained(tmp_path / "out")
    make_processor(tokenizer, image_processor, model).save_pretrained(tmp_path / "out")
    processor = AutoProcessor.from_pretrained(tmp_path / "out")
    inputs = processor(images=Image.new("RGB", (40, 30), "red"), text="USER: <image>\nWhat? ASSISTANT:",
                       return_tensors="pt")
    assert (inputs["input_ids"] == model.config.image_token_index).sum() == 16
    with caplog.at_level("WARNING"):  # the checkpoint reads back as mm_vision_select_feature=patch
        again, _, _ = build_model(spec(f"model.pretrained_llava={tmp_path / 'out'}", "model.llm=unused",
                                       "model.vision_tower=unused"))
    assert again.config.vision_feature_select_strategy == "full" and "mm_vision_select_feature" not in caplog.text


def test_siglip_has_no_cls_to_keep(spec, siglip):
    with pytest.raises(ValueError, match="no CLS token"):
        build_model(spec(f"model.vision_tower={siglip}", "model.mm_vision_select_feature=cls_patch"))


@pytest.mark.e2e
def test_siglip_tower_trains_end_to_end(compose_spec, tmp_path):
    import json

    from llava_hydra.commands.runner import run

    run(compose_spec("model.vision_tower=builtin://tiny-siglip", "stage=finetune", "stage.pretrain_mm_mlp_adapter=null",
                     f"paths.output_root={tmp_path}", f"paths.cache_dir={tmp_path / 'cache'}",
                     "data.synthetic.num_images=32", "data.synthetic.num_text_only=8", "data.synthetic.num_eval=4",
                     "training.max_steps=3", "training.per_device_train_batch_size=4", "eval.max_samples=4"))
    metrics = json.loads((tmp_path / "tiny" / "finetune" / "metrics.json").read_text())
    assert metrics["train_steps"] == 3 and metrics["eval_samples"] == 4
    assert torch.isfinite(torch.tensor(metrics["train_loss_mean"]))
