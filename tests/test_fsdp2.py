"""FSDP2 (``fsdp=full|grad_op|hybrid``) as the engine instead of DeepSpeed.

Default suite: the spec's rules (one engine, one activation checkpointing, the settings a machine
cannot run refused with the reason) and what the ``fsdp`` node becomes for transformers/accelerate.

``-m slow``: two processes on gloo (torchrun, CPU) train stage 1 (frozen LLM: every decoder layer an
FSDP unit of frozen weights), stage 2 and LoRA under FSDP2 and log the per-step losses and gradient
norms of DDP on the same data, within float tolerance: rel 1e-6 for the loss, 1e-5 for the gradient
norm (measured: losses bitwise equal, gradient norms within 3e-7 relative; the reduce-scatter of
FSDP sums in another order than DDP's all-reduce); final weights within 1e-6 (measured 6e-8). The
final folder is HF-native with the key names one process writes, and stage 1 writes only the
projector. ``grad_op`` and hybrid shard on four ranks (2 replicas x 2 shards) train as DDP too; bf16 runs
with bf16 compute and fp32 reduction. Kill-and-resume under FSDP2 is in test_resume_matrix.py, the
mixed-modality and one-rank-fails cases in test_data_parallel.py, the preemption checkpoint (SIGTERM to
one rank) and the NaN stop in test_preemption.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from launching import torchrun
from safetensors.torch import load_file

from llava_hydra.config.validate import SpecError, validate
from llava_hydra.train.fsdp2 import fsdp_arguments, hybrid_mesh_sizes, layer_classes, refusal

HELPER = Path(__file__).parent / "helpers" / "run_and_die.py"
SMALL = ["data.synthetic.num_images=32", "data.synthetic.num_text_only=8", "data.synthetic.num_eval=4",
         "training.max_steps=3", "training.save_steps=3", "training.logging_steps=1",
         "training.per_device_train_batch_size=2", "eval.enable=false", "stage.pretrain_mm_mlp_adapter=null"]
STAGES = {"stage1": (["stage=pretrain"], "mm_projector.safetensors"),
          "stage2": (["stage=finetune"], "model.safetensors"),
          "stage2-lora": (["stage=finetune", "lora=lora", "lora.r=8", "lora.alpha=16"], "adapter_model.safetensors")}


# -- the spec (default suite) -------------------------------------------------------------------------

def test_two_engines_at_once_are_refused_naming_both(compose_spec):
    with pytest.raises(SpecError) as e:
        validate(compose_spec("stage=finetune", "model=vicuna7b", "fsdp=full"), local_paths=False)
    assert ("deepspeed (ZeRO-3) and fsdp (full) are both set: a run has one engine; add deepspeed=none to train "
            "under FSDP2, or fsdp=none to keep DeepSpeed") in str(e.value)
    validate(compose_spec("stage=finetune", "model=vicuna7b", "fsdp=full", "deepspeed=none"), local_paths=False)


def test_settings_that_cannot_go_together_are_each_named(compose_spec):
    spec = compose_spec("fsdp=grad_op", "fsdp.activation_checkpointing=true", "training.gradient_checkpointing=true",
                        "fsdp.shard_group_size=2", "fsdp.reduce_dtype=float16", "lora=qlora")
    with pytest.raises(SpecError) as e:
        validate(spec, local_paths=False)
    message = str(e.value)
    assert "the run spec has 4 problems" in message
    assert "fsdp.activation_checkpointing=true and training.gradient_checkpointing=true: checkpoint once" in message
    assert "fsdp.shard_group_size=2 is for fsdp.sharding=hybrid" in message
    assert "fsdp.reduce_dtype='float16': not one of float32, bfloat16" in message
    assert "lora.bits=4 (QLoRA) under fsdp is not supported here" in message


def test_the_fsdp_node_becomes_transformers_fsdp2_arguments():
    node = {"sharding": "grad_op", "shard_group_size": None, "activation_checkpointing": True,
            "reduce_dtype": "float32", "cpu_offload": False}
    args = fsdp_arguments(node)
    assert args["fsdp"] is True
    config = args["fsdp_config"]
    assert (config["version"], config["reshard_after_forward"], config["activation_checkpointing"]) == (2, False, True)
    assert (config["auto_wrap_policy"], config["state_dict_type"]) == ("TRANSFORMER_BASED_WRAP", "FULL_STATE_DICT")
    assert fsdp_arguments({**node, "sharding": "full"})["fsdp_config"]["reshard_after_forward"] is True


def test_what_a_machine_cannot_run_is_refused_with_the_reason():
    on = {"cpu_offload": True}
    assert "fsdp.cpu_offload=true needs a GPU" in refusal(on, gpu=False, world_size=2)
    assert refusal(on, gpu=True, world_size=2) is None
    assert "fsdp needs several processes" in refusal({}, gpu=True, world_size=1)
    assert hybrid_mesh_sizes(8, None, 4) == (2, 4) and hybrid_mesh_sizes(4, 2, 4) == (2, 2)
    with pytest.raises(ValueError, match="6 ranks do not split into shard groups of 4"):
        hybrid_mesh_sizes(6, 4, 2)


def test_each_decoder_and_vision_encoder_layer_is_a_unit():
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    config = LlavaConfig(text_config=LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                                 num_attention_heads=2, num_key_value_heads=2, vocab_size=64),
                         vision_config=CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                                        num_attention_heads=2, image_size=28, patch_size=14))
    model = LlavaForConditionalGeneration._from_config(config)
    assert layer_classes(model) == ["CLIPEncoderLayer", "CLIPVisionEmbeddings", "LlamaDecoderLayer"]


# -- two processes on gloo (slow) ---------------------------------------------------------------------

def run(run_dir: Path, cache: Path, *overrides: str, nproc: int = 2):
    done = torchrun(str(HELPER), f"run_dir={run_dir}", f"paths.cache_dir={cache}", *SMALL, *overrides, nproc=nproc)
    assert done.returncode == 0, done.stderr[-4000:]
    history = json.loads((run_dir / "checkpoint-3" / "trainer_state.json").read_text())["log_history"]
    return done.stderr, [e for e in history if "loss" in e]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def ddp_runs(tmp_path_factory, cache):
    """DDP's run of each stage, made once."""
    made = {}

    def get(stage):
        if stage not in made:
            out = tmp_path_factory.mktemp(f"ddp-{stage}")
            made[stage] = (out, run(out, cache, *STAGES[stage][0], "deepspeed=none")[1])
        return made[stage]

    return get


def same_steps(steps, reference):
    assert [e["step"] for e in steps] == [1, 2, 3]
    for e, r in zip(steps, reference):
        assert e["loss"] == pytest.approx(r["loss"], rel=1e-6, abs=0)
        assert e["grad_norm"] == pytest.approx(r["grad_norm"], rel=1e-5, abs=0)


@pytest.mark.slow
@pytest.mark.e2e
@pytest.mark.parametrize("stage", STAGES)
def test_two_process_fsdp2_trains_as_ddp_and_saves_hf_native(tmp_path, cache, ddp_runs, stage):
    overrides, weights = STAGES[stage]
    log, steps = run(tmp_path, cache, *overrides, "deepspeed=none", "fsdp=full")
    assert "FSDP2: full shard over mesh (2,)" in log
    ddp_dir, reference = ddp_runs(stage)
    same_steps(steps, reference)
    a, b = load_file(tmp_path / weights), load_file(ddp_dir / weights)
    assert sorted(a) == sorted(b)  # the key names one process writes
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6, msg=key)
    if stage == "stage1":  # the projector alone, never the frozen LLM
        assert not (tmp_path / "model.safetensors").exists()
        assert sorted(a) == ["multi_modal_projector.linear_1.bias", "multi_modal_projector.linear_1.weight",
                             "multi_modal_projector.linear_2.bias", "multi_modal_projector.linear_2.weight"]
    if stage == "stage2":
        from transformers import LlavaForConditionalGeneration

        model, info = LlavaForConditionalGeneration.from_pretrained(tmp_path, output_loading_info=True)
        assert info["missing_keys"] == set() and info["unexpected_keys"] == set()


@pytest.mark.slow
@pytest.mark.e2e
def test_grad_op_sharding_trains_as_ddp(tmp_path, cache, ddp_runs):
    """Weights kept gathered from forward to backward (ZeRO-2-like): the same steps as DDP's."""
    log, steps = run(tmp_path, cache, "stage=finetune", "deepspeed=none", "fsdp=grad_op")
    assert "FSDP2: grad_op shard over mesh (2,)" in log
    same_steps(steps, ddp_runs("stage2")[1])


@pytest.mark.slow
@pytest.mark.e2e
def test_hybrid_shard_on_four_ranks_trains_as_ddp(tmp_path, cache, ddp_runs):
    """2 replicas x 2 shards, one sample a rank: the same global batch of 4 as DDP's 2 x 2."""
    log, steps = run(tmp_path, cache, "stage=finetune", "deepspeed=none", "fsdp=hybrid", "fsdp.shard_group_size=2",
                     "training.per_device_train_batch_size=1", nproc=4)
    assert "FSDP2: hybrid shard over mesh (2, 2)" in log
    same_steps(steps, ddp_runs("stage2")[1])


@pytest.mark.slow
@pytest.mark.e2e
def test_bf16_computes_in_bf16_and_reduces_in_fp32(tmp_path, cache):
    log, steps = run(tmp_path, cache, "stage=finetune", "deepspeed=none", "fsdp=full", "training.bf16=true",
                     "training.use_cpu=true")  # transformers: bf16 on a machine without a GPU
    assert "MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32" in log
    assert all(torch.isfinite(torch.tensor(e["loss"])) for e in steps)
