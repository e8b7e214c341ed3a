"""Several processes are data-parallel and never break their collectives (two processes, torchrun
on gloo, the embedded default's tiny model):

- a step where one rank's micro-batch has images and the other's is text-only completes under
  DDP and DeepSpeed ZeRO-2/3, vision tower frozen or trainable, and logs the loss and gradient
  norm that one process computes for the same global batch in plain transformers (from the
  weights the run started with): the model is wrapped, the gradients averaged, and the ranks'
  collectives match because a text-only micro-batch runs the tower on a zero placeholder image
  (llava_hydra.model.placeholder) without changing the loss;
- under DDP every rank holds the same weights after training;
- a full epoch of the default grouped sampler whose last step mixes both modalities' leftovers
  ends under ZeRO-3 (LLaVA-1.5 stage 2's engine; before the placeholder: gloo "collective
  mismatch" at the first mixed step);
- an exception on one rank ends every rank within seconds (torchrun stops the others), its
  message and traceback in torchrun's closing report (config.distributed.failure_reported_to_launcher).

CI runs the cases that cover the mechanisms (DDP with a trainable tower under gradient
checkpointing: gradient buckets the text-only rank never filled hung; ZeRO-2 with a trainable
tower: its gradient reduction; ZeRO-3 with the recipe's frozen tower, whose parameter gathers
mismatched: the full grouped epoch under ZeRO-3, whose last step is such a mixed step -- its
loss-equality case, 40 s on 2 cores, is in the slow grid); ``pytest -m slow`` runs the rest of the grid (about 10 s a case on 2 quiet cores),
FSDP2 among it (``fsdp=full``: every decoder / vision-encoder layer sharded, frozen ones too, so a
text-only rank that skipped the tower would miss its all-gathers) and the one-rank-fails case
under FSDP2.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
from launching import torchrun
from PIL import Image
from safetensors.torch import load_file
from transformers import LlavaConfig, LlavaForConditionalGeneration

pytestmark = pytest.mark.e2e
pytest.importorskip("deepspeed")

HELPER = Path(__file__).parent / "helpers" / "mixed_ranks.py"
TOWER_TRAINS = "stage.trainable=[mm_projector,llm,vision_tower]"
CASES = {  # id: (overrides, in CI)
    "ddp-tower-trains-gc": (["deepspeed=none", TOWER_TRAINS, "training.gradient_checkpointing=true"], True),
    "zero3-tower-frozen": (["deepspeed=zero3"], False),  # CI: the full grouped epoch under ZeRO-3 (below)
    "ddp-tower-frozen": (["deepspeed=none"], False),
    "zero2-tower-frozen": (["deepspeed=zero2"], False),
    "zero2-tower-trains": (["deepspeed=zero2", TOWER_TRAINS], True),
    "zero3-tower-trains": (["deepspeed=zero3", TOWER_TRAINS], False),
    "fsdp2-tower-frozen": (["fsdp=full"], False),  # every layer its own FSDP2 unit, frozen ones too
    "fsdp2-tower-trains-ac": (["fsdp=full", TOWER_TRAINS, "fsdp.activation_checkpointing=true"], False),
}


def turn(question: str, answer: str) -> list[dict]:
    return [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]


@pytest.fixture(scope="module")
def mixed_data(tmp_path_factory) -> Path:
    """8 records, in steps of 4: two with an image (rank 0's micro-batch under a sequential
    sampler and per-device batch 2), then two text-only (rank 1's)."""
    root = tmp_path_factory.mktemp("mixed")
    (root / "images").mkdir()
    Image.new("RGB", (40, 36), "red").save(root / "images" / "r.png")
    Image.new("RGB", (30, 44), "blue").save(root / "images" / "b.png")
    records = []
    for k in range(2):
        records += [{"id": f"i{k}a", "image": "r.png", "conversations": turn("<image>\nWhat color is the shape?", "Red.")},
                    {"id": f"i{k}b", "image": "b.png", "conversations": turn("<image>\nWhat color?", "Blue, all blue.")},
                    {"id": f"t{k}a", "conversations": turn("Repeat the word: apple", "apple")},
                    {"id": f"t{k}b", "conversations": turn("Say hello to me", "Hello there, nice to meet you.")}]
    (root / "qa.json").write_text(json.dumps(records))
    return root


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


def run_mixed(out: Path, data: Path, cache: Path, *overrides: str, env: dict | None = None):
    return torchrun(str(HELPER), "stage=finetune", "stage.pretrain_mm_mlp_adapter=null",
                    f"data.data_path={data / 'qa.json'}", f"data.image_folder={data / 'images'}",
                    f"paths.cache_dir={cache}", f"paths.output_root={out / 'runs'}", "eval.enable=false",
                    "training.group_by_modality_length=false", "training.per_device_train_batch_size=2",
                    "training.max_steps=2", "training.logging_steps=1", "training.warmup_ratio=0",
                    *overrides, env={"MIXED_OUT": str(out), "SEQUENTIAL": "1", **(env or {})}, timeout=600)


def reference_step(out: Path, tower_trains: bool) -> tuple[float, float]:
    """Loss and gradient norm of the first step's global batch in one process, plain transformers."""
    model = LlavaForConditionalGeneration._from_config(LlavaConfig.from_json_file(out / "config.json"))
    model.load_state_dict(load_file(out / "start.safetensors"), strict=True)
    model.train().requires_grad_(False)
    for part in [model.model.language_model, model.lm_head, model.model.multi_modal_projector,
                 *([model.model.vision_tower] if tower_trains else [])]:
        part.requires_grad_(True)
    batch = torch.load(out / "batch.pt", weights_only=True)
    has_image = (batch["input_ids"] == model.config.image_token_id).any(1)
    assert has_image.tolist() == [True, True, False, False]  # rank 0: images, rank 1: text only
    loss = model(**batch).loss
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    return loss.item(), torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])).item()


@pytest.mark.parametrize("case", [pytest.param(c, id=c, marks=() if ci else pytest.mark.slow)
                                  for c, (_, ci) in CASES.items()])
def test_a_text_only_rank_steps_with_the_one_process_loss(tmp_path, mixed_data, cache, case):
    overrides, _ = CASES[case]
    out = tmp_path / "out"
    out.mkdir()
    done = run_mixed(out, mixed_data, cache, *overrides)
    assert done.returncode == 0, done.stderr[-8000:]  # room for a rank's fault-handler stacks
    loss, grad_norm = reference_step(out, TOWER_TRAINS in overrides)
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    for rank in ranks:
        if case.startswith("ddp"):
            assert (rank["distributed_type"], rank["wrapped"]) == ("DistributedType.MULTI_CPU",
                                                                  "DistributedDataParallel")
        elif case.startswith("fsdp2"):  # sharded by fully_shard, not DDP (accelerate's own CPU choice)
            assert (rank["distributed_type"], rank["wrapped"]) == ("DistributedType.FSDP",
                                                                  "FSDPLlavaForConditionalGeneration")
        else:
            assert rank["wrapped"] == "DeepSpeedEngine"
        first = next(e for e in rank["log_history"] if e.get("step") == 1 and "loss" in e)
        assert first["loss"] == pytest.approx(loss, rel=1e-5)
        assert first["grad_norm"] == pytest.approx(grad_norm, rel=1e-4)
    if not case.startswith("zero"):  # and the ranks hold the same weights after both steps
        assert ranks[0]["digest"] and ranks[0]["digest"] == ranks[1]["digest"]


def test_a_full_grouped_epoch_with_mixed_leftovers_ends_under_zero3(tmp_path, cache):
    """13 image and 7 text-only samples, megabatches of 4: the last step holds one image sample
    and three text-only ones, so one rank's micro-batch has no image."""
    out = tmp_path / "out"
    done = torchrun("-m", "llava_hydra", "stage=finetune", "stage.pretrain_mm_mlp_adapter=null", "deepspeed=zero3",
                    f"paths.output_root={out}", f"paths.cache_dir={tmp_path / 'cache'}",
                    "data.synthetic.num_images=13", "data.synthetic.num_text_only=7", "data.synthetic.num_eval=2",
                    "training.num_train_epochs=1", "training.per_device_train_batch_size=2", "eval.enable=false",
                    cwd=tmp_path, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    log = (out / "tiny" / "finetune" / "tiny_finetune.log").read_text()
    assert "(13 with an image, 7 text-only)" in log
    assert json.loads((out / "tiny" / "finetune" / "metrics.json").read_text())["train_steps"] == 5


@pytest.mark.parametrize("engine", ["deepspeed=none", pytest.param("fsdp=full", marks=pytest.mark.slow)])
def test_an_exception_on_one_rank_ends_every_rank_within_seconds(tmp_path, mixed_data, cache, engine):
    started = time.time()
    done = run_mixed(tmp_path, mixed_data, cache, engine, "training.max_steps=50",
                     env={"RAISE_AT_STEP": "1", "RAISE_ON_RANK": "1"})
    ended = time.time()
    assert done.returncode != 0
    report = done.stderr.rsplit("Root Cause", 1)[-1]  # torchrun's closing report names the error
    assert "rank      : 1" in report and "RuntimeError: rank 1 raised at step 1 on purpose" in report
    raised = float((tmp_path / "raised_at").read_text())
    assert started < raised and ended - raised < 20, f"rank 0 outlived rank 1's exception by {ended - raised:.1f} s"
    assert not (tmp_path / "rank0.json").exists()  # rank 0 did not train on alone
