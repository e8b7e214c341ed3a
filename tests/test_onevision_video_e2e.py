"""model=tiny_onevision stage 2 on a mix of video, image and text-only records (in one process, batches of
several samples: data.force_sample=true, 4 frames each), and what it saves answers a video question from
LlavaOnevisionForConditionalGeneration.from_pretrained with the <video> run and pixel_values_videos training's
encoding makes (the frames as the saved video processor's config says: the tower's size, mean and std)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from stand_ins import turns
from test_onevision_video import make_video

pytestmark = pytest.mark.slow

av = pytest.importorskip("av")


def test_video_mix_trains_and_transformers_answers_from_the_saved_folder(compose_spec, tmp_path):
    from PIL import Image
    from transformers import LlavaOnevisionForConditionalGeneration

    from llava_hydra.commands.runner import run
    from llava_hydra.data.spec import data_parts, spec_dataset

    videos, images = tmp_path / "vid", tmp_path / "img"
    videos.mkdir(), images.mkdir()
    for k in range(4):
        make_video(videos / f"clip{k}.mov", frames=6 + 3 * k, fps=2)
    Image.new("RGB", (48, 32), (200, 30, 30)).save(images / "red.png")
    records = []
    for i in range(24):
        if i % 3 == 0:
            records.append({"id": i, "image": "red.png", "conversations": turns("<image>\nWhat color?", "red.")})
        elif i % 3 == 1:
            records.append({"id": i, "video": f"clip{i % 4}.mov",
                            "conversations": turns("<image>\nWhat happens in the video?", "it gets brighter.")})
        else:
            records.append({"id": i, "conversations": turns("Say yes.", "yes.")})
    (tmp_path / "train.json").write_text(json.dumps(records))
    held = [records[1], records[4], records[0]]  # two video questions and an image one: the in-run eval
    (tmp_path / "held.json").write_text(json.dumps(held))
    fin = tmp_path / "out" / "fin"
    spec = compose_spec("model=tiny_onevision", "stage=finetune", "stage.pretrain_mm_mlp_adapter=null",
                        f"paths.output_root={tmp_path / 'out'}", f"paths.cache_dir={tmp_path / 'cache'}",
                        f"data.data_path={tmp_path / 'train.json'}", f"data.image_folder={images}",
                        f"data.video_folder={videos}", "data.frames_upbound=4", "data.force_sample=true",
                        "data.synthetic=null", f"data.eval_data_path={tmp_path / 'held.json'}", f"training.output_dir={fin}",
                        "training.max_steps=8", "training.per_device_train_batch_size=4", "training.logging_steps=1",
                        "training.learning_rate=1e-3", "training.warmup_ratio=0", "training.save_steps=100")
    run(spec)
    metrics = json.loads((fin / "metrics.json").read_text())
    assert metrics["train_steps"] == 8 and metrics["skipped_samples"] == 0 and metrics["eval_samples"] == 3
    state = json.loads((fin / "checkpoint-8" / "trainer_state.json").read_text())
    losses = [e["loss"] for e in state["log_history"] if "loss" in e]
    assert len(losses) == 8 and all(map(math.isfinite, losses))
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3, losses

    saved = json.loads((fin / "processor_config.json").read_text())["video_processor"]
    assert saved["size"] == {"height": 32, "width": 32} and saved["image_mean"] == [0.5, 0.5, 0.5]
    model = LlavaOnevisionForConditionalGeneration.from_pretrained(fin).eval()
    tokenizer, image_processor, rule = data_parts(spec)
    video_id = model.config.video_token_id
    (tmp_path / "q.json").write_text(json.dumps([records[1]]))
    ds = spec_dataset(spec, str(tmp_path / "q.json"), tokenizer, image_processor, rule)
    sample = ds.build(0)
    assert int((sample["input_ids"] == video_id).sum()) == 4 * 4 + 1  # 4 frames x (2 x 2 pooled) + 1
    prompt_len = int((sample["labels"] != -100).nonzero()[0])  # the question, up to the answer
    ids = sample["input_ids"][:prompt_len][None]
    from llava_hydra.eval.heldout import prompt_and_reference

    assert prompt_and_reference(ds, 0) == (ids[0].tolist(), "it gets brighter.")  # the in-run eval's prompt
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                         pixel_values_videos=sample["pixel_values_videos"][None], max_new_tokens=4, min_new_tokens=2,
                         do_sample=False)
    assert out.shape[1] > prompt_len
    # the video reaches the answer: another video's frames change the logits
    logits = model(input_ids=ids, pixel_values_videos=sample["pixel_values_videos"][None]).logits[0, -1]
    other = model(input_ids=ids, pixel_values_videos=torch.zeros_like(sample["pixel_values_videos"])[None]).logits[0, -1]
    assert not torch.allclose(logits, other)
