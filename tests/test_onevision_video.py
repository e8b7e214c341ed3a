"""LLaVA-OneVision video records (data/video.py, data/video_tokens.py): LLaVA-NeXT's frame sampling
(``process_video_with_decord``: every round(fps / video_fps)-th frame, capped at frames_upbound, or always
frames_upbound under force_sample), transformers' token count (frames x ceil(side / 2)^2 + 1 newline) written
out and equal to LlavaOnevisionProcessor's, ids / labels of a video sample with its <video> run in place,
pixels equal to the image processor's view of each frame, the length pass, a video + image + text batch
through LlavaOnevisionForConditionalGeneration with one training step, and bad / missing videos.
Videos are made on the fly with PyAV (32x32, a few frames, lossless PNG in a .mov)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from stand_ins import turns
from llava_hydra.data.labels import IGNORE_INDEX
from llava_hydra.data.video_tokens import VideoTokens
from test_onevision_multi_image import TINY, ov_processor, qwen_tok, runs_of, tiny_onevision  # noqa: F401

av = pytest.importorskip("av")

GREY = 20  # frame k is a uniform grey of level k * GREY


def make_video(path, frames: int = 10, fps: int = 4, size=(32, 32)):
    """A lossless clip: frame k uniform grey k * GREY mod 256 (PNG frames keep the levels exactly)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("png", rate=fps)
        stream.width, stream.height, stream.pix_fmt = size[1], size[0], "rgb24"
        for k in range(frames):
            frame = av.VideoFrame.from_ndarray(np.full((*size, 3), k * GREY % 256, np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


VIDEO = {"id": "vid", "video": "clip.mov", "conversations": turns("<image>\nWhat happens?", "It gets brighter.")}
IMAGE = {"id": "img", "image": "green.png", "conversations": turns("<image>\nWhat color is this?", "Green.")}
TEXT = {"id": "text", "conversations": turns("Say yes.", "Yes.")}


@pytest.fixture
def folder(tmp_path):
    make_video(tmp_path / "clip.mov")  # 10 frames at 4 fps: frames 0, 4, 8 at 1 frame per second
    make_video(tmp_path / "long.mov", frames=40, fps=4)  # 10 frames at 1/s
    Image.new("RGB", (64, 64), (30, 200, 30)).save(tmp_path / "green.png")
    return tmp_path


def dataset(folder, tok, records, upbound=0, force=False, video_folder=None, **kw):
    from llava_hydra.data.dataset import LazySupervisedDataset
    from llava_hydra.data.video import VideoSource

    (folder / "d.json").write_text(json.dumps(records))
    proc = ov_processor()
    return LazySupervisedDataset(folder / "d.json", tok, proc, "qwen_1_5", image_folder=folder,
                                 image_aspect_ratio="anyres_max_9", num_image_tokens=TINY,
                                 videos=VideoSource(video_folder or folder, VideoTokens(TINY.side, upbound, force), proc),
                                 **kw)


def test_counts_written_out_and_equal_to_transformers_processor():
    from transformers import LlavaOnevisionProcessor

    ov = VideoTokens(27, frames_upbound=32)  # SigLIP-so400m-384/14: 27 x 27 patches -> 14 x 14 pooled
    assert ov.per_frame == 196 and ov.tokens(32) == 6273 and ov.tokens(1) == 197
    assert ov.frames(total=300, fps=30) == 10 and ov.tokens(10) == 1961  # a 10 s clip: one frame a second
    assert ov.frames(total=3000, fps=30) == 32  # 100 s: capped at the upbound
    assert ov.indices(total=100, fps=1) == [0, 3, 6, 9, 12, 15, 19, 22, 25, 28, 31, 35, 38, 41, 44, 47, 51, 54,
                                            57, 60, 63, 67, 70, 73, 76, 79, 83, 86, 89, 92, 95, 99]  # linspace, int
    forced = VideoTokens(27, frames_upbound=32, force_sample=True)
    assert forced.constant_frames == 32 and forced.frames(total=300, fps=30) == 32
    assert VideoTokens(27).frames(total=3000, fps=30) == 100  # no upbound: every second
    assert VideoTokens(27, frames_upbound=8).indices(total=10, fps=4) == [0, 4, 8]
    assert VideoTokens(27, video_fps=2).indices(total=10, fps=4) == [0, 2, 4, 6, 8]
    assert VideoTokens(24).per_frame == 144 and VideoTokens(4).per_frame == 4  # CLIP-336; tiny_onevision (32/8)
    with pytest.raises(ValueError, match="frames_upbound > 0"):
        VideoTokens(27, force_sample=True)

    proc = object.__new__(LlavaOnevisionProcessor)  # its own count (constructor needs torchvision's video processor)
    proc.num_image_tokens, proc.vision_feature_select_strategy, proc.vision_aspect_ratio = 729, "full", "anyres_max_9"
    proc.video_token = "<video>"
    for frames in (1, 10, 32):
        video = {"pixel_values_videos": [torch.zeros(frames, 3, 384, 384)]}
        assert len(proc.replace_video_token(video, 0)) // len("<video>") == ov.tokens(frames)
    proc.image_processor = type("P", (), {"size": {"height": 384, "width": 384}, "image_grid_pinpoints": [[384, 384]]})()
    theirs = proc._get_num_multimodal_tokens(video_sizes=[(32, 384, 384), (10, 384, 384)])["num_video_tokens"]
    assert theirs == [6273, 1961]


def test_video_sample_ids_labels_pixels(folder, qwen_tok):
    video_id, image_id = qwen_tok.convert_tokens_to_ids("<video>"), qwen_tok.convert_tokens_to_ids("<image>")
    ds = dataset(folder, qwen_tok, [VIDEO])
    s = ds[0]
    assert runs_of(s["input_ids"], video_id) == [(21, 13)]  # frames 0, 4, 8: 3 x (2 x 2 pooled) + 1 newline
    assert image_id not in s["input_ids"].tolist()
    assert (s["labels"][21:34] == IGNORE_INDEX).all()
    ids = s["input_ids"].tolist()
    one_tag = [image_id if t == video_id else t for k, t in enumerate(ids) if not (t == video_id and ids[k - 1] == t)]
    assert qwen_tok.decode(one_tag) == (  # LLaVA-NeXT's qwen_1_5 with the video where its <image> tag stands
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n<image>\nWhat happens?"
        "<|im_end|>\n<|im_start|>assistant\nIt gets brighter.<|im_end|>\n")
    assert qwen_tok.decode(s["input_ids"][s["labels"] != IGNORE_INDEX]) == "It gets brighter.<|im_end|>"
    assert len(ids) == ds.modality_lengths[0] == 21 + 13 + len(ids) - 34 and ds.modality_lengths[0] > 0

    px = s["pixel_values_videos"]
    assert px.shape == (3, 3, 32, 32) and "pixel_values" not in s
    # grey levels 0, 80, 160 (frames 0, 4, 8), SigLIP's mean / std 0.5: level / 127.5 - 1
    assert px[:, 0, 5, 5].tolist() == pytest.approx([-1.0, 80 / 127.5 - 1, 160 / 127.5 - 1], abs=1e-5)
    # each frame as the image processors see it: OneVision's base view, and the tower's own (LLaVA-NeXT)
    from transformers.models.siglip import SiglipImageProcessorPil

    for k, level in enumerate((0, 80, 160)):
        frame = Image.fromarray(np.full((32, 32, 3), level, np.uint8))
        assert torch.allclose(px[k], ov_processor()(images=[frame], return_tensors="pt")["pixel_values"][0, 0], atol=1e-6)
        assert torch.allclose(px[k], SiglipImageProcessorPil(size={"height": 32, "width": 32})(
            images=[frame], return_tensors="pt")["pixel_values"][0], atol=1e-6)


def test_frames_of_another_size_are_resized_as_the_image_processor_does(tmp_path):
    from llava_hydra.data.video import frame_pixels

    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (2, 48, 80, 3), dtype=np.uint8)
    mine = frame_pixels(frames, ov_processor())
    for k in range(2):
        theirs = ov_processor()(images=[Image.fromarray(frames[k])], return_tensors="pt")["pixel_values"][0, 0]
        assert torch.allclose(mine[k], theirs, atol=1e-5)


def test_upbound_force_sample_and_the_length_pass(folder, qwen_tok):
    video_id = qwen_tok.convert_tokens_to_ids("<video>")
    long = {**VIDEO, "video": "long.mov"}
    capped = dataset(folder, qwen_tok, [VIDEO, long], upbound=4)
    assert [n for _, n in runs_of(capped[1]["input_ids"], video_id)] == [17]  # 10 frames at 1/s -> 4 (upbound)
    assert capped[1]["pixel_values_videos"][:, 0, 0, 0].tolist() == pytest.approx(  # linspace(0, 39, 4): 0 13 26 39
        [(k * GREY % 256) / 127.5 - 1 for k in (0, 13, 26, 39)], abs=1e-5)
    assert [n for _, n in runs_of(capped[0]["input_ids"], video_id)] == [13]  # 3 frames: under the upbound
    assert capped.modality_lengths == [len(capped[0]["input_ids"]), len(capped[1]["input_ids"])]
    forced = dataset(folder, qwen_tok, [VIDEO, long], upbound=4, force=True)
    assert [len(forced[i]["pixel_values_videos"]) for i in (0, 1)] == [4, 4]  # clip.mov: linspace(0, 9, 4)
    assert forced.modality_lengths == [len(forced[0]["input_ids"])] * 2


def test_video_image_text_batch_trains_one_step(folder, qwen_tok):
    """The collator stacks videos to (videos, frames, C, H, W); the model finds as many video features as
    <video> tokens (it raises otherwise), the loss is finite and one optimizer step changes the weights."""
    from llava_hydra.data.dataset import DataCollator

    model = tiny_onevision(qwen_tok)
    ds = dataset(folder, qwen_tok, [VIDEO, IMAGE, TEXT, VIDEO])
    samples = [ds[i] for i in range(4)]
    batch = DataCollator(qwen_tok.pad_token_id)(samples)
    video_id = qwen_tok.convert_tokens_to_ids("<video>")
    assert batch["pixel_values_videos"].shape == (2, 3, 3, 32, 32)
    assert int((batch["input_ids"] == video_id).sum()) == 2 * 13
    assert batch["pixel_values"].shape == (5, 3, 32, 32) and batch["batch_num_images"].tolist() == [1]
    feats = model.model.get_video_features(batch["pixel_values_videos"], vision_feature_layer=-1,
                                           vision_feature_select_strategy="full").pooler_output
    assert feats.shape[:2] == (2, 13)  # per video: its <video> run
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    before = model.model.image_newline.detach().clone()
    out = model(**batch)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert model.model.image_newline.grad.abs().sum() > 0
    opt.step()
    assert not torch.equal(before, model.model.image_newline)
    bad = dict(batch, input_ids=batch["input_ids"].masked_fill(batch["input_ids"] == video_id, qwen_tok.pad_token_id))
    with pytest.raises(ValueError, match="Video features and video tokens do not match"):
        model(**bad)


def test_videos_of_different_frame_counts_cannot_share_a_batch(folder, qwen_tok):
    from llava_hydra.data.dataset import DataCollator
    from llava_hydra.sampling.packing import PackedCollator, pack_samples

    long = {**VIDEO, "video": "long.mov"}
    ds = dataset(folder, qwen_tok, [VIDEO, long], upbound=4)
    with pytest.raises(ValueError, match=r"videos of \[3, 4\] frames.*data.force_sample=true"):
        DataCollator(qwen_tok.pad_token_id)([ds[0], ds[1]])
    with pytest.raises(ValueError, match="data.force_sample=true"):
        pack_samples([ds[0], ds[1]])
    forced = dataset(folder, qwen_tok, [VIDEO, long], upbound=4, force=True)
    row = pack_samples([forced[0], forced[1]])  # packing: one frame count, rows concatenate
    assert row["pixel_values_videos"].shape == (2, 4, 3, 32, 32)
    batch = PackedCollator(qwen_tok.pad_token_id)([row, pack_samples([forced[1]])])
    assert batch["pixel_values_videos"].shape == (3, 4, 3, 32, 32)


def test_bad_missing_and_misplaced_videos(folder, qwen_tok):
    from llava_hydra.data.records import BadSampleError, RecordError, normalize_turns

    (folder / "broken.mov").write_bytes(b"not a video at all" * 10)
    records = [VIDEO, {**VIDEO, "id": "gone", "video": "gone.mov"}, {**VIDEO, "id": "broken", "video": "broken.mov"}]
    ds = dataset(folder, qwen_tok, records)
    with pytest.raises(BadSampleError, match=r"d.json: sample 1 \(id='gone'\): video file not found: .*gone.mov"):
        ds[1]
    with pytest.raises(BadSampleError, match=r"sample 2 \(id='broken'\): video .*broken.mov: unreadable"):
        ds[2]
    with pytest.raises(BadSampleError, match=r"sample 1 \(id='gone'\)"):  # the length pass finds it first
        dataset(folder, qwen_tok, records).modality_lengths
    skipping = dataset(folder, qwen_tok, records, on_bad_sample="skip")
    skipping.modality_lengths
    assert skipping.report()["by_reason"] == {"missing_video": 1, "unreadable_video": 1}

    with pytest.raises(RecordError, match="both 'image' and 'video'"):
        normalize_turns({**VIDEO, "image": "green.png"})
    with pytest.raises(RecordError, match=r"2 <image> tag\(s\) in 1 image"):
        normalize_turns({**VIDEO, "conversations": turns("<image><image>\nWhat?", "This.")})

    from llava_hydra.data.dataset import LazySupervisedDataset  # a model without video (LLaVA-NeXT, LLaVA-1.5)

    (folder / "v.json").write_text(json.dumps([VIDEO]))
    plain = LazySupervisedDataset(folder / "v.json", qwen_tok, ov_processor(), "qwen_1_5", image_folder=folder,
                                  image_aspect_ratio="anyres_max_9", num_image_tokens=TINY)
    with pytest.raises(BadSampleError, match="sample 0 .*videos train with model.family=llava_onevision"):
        plain[0]


def test_data_check_finds_missing_and_broken_videos_before_training(folder, qwen_tok):
    """Under force_sample the length pass opens no file; data.check still reads every video's header
    (--images: decodes its sampled frames) and names the record."""
    from llava_hydra.data.check import check_dataset

    (folder / "broken.mov").write_bytes(b"not a video at all" * 10)
    records = [VIDEO, {**VIDEO, "id": "gone", "video": "gone.mov"}, {**VIDEO, "id": "broken", "video": "broken.mov"},
               IMAGE, TEXT]
    report = check_dataset(dataset(folder, qwen_tok, records, upbound=4, force=True, on_bad_sample="skip"))
    assert report["found"]["missing_video"] == [[1, "gone", f"video file not found: {folder / 'gone.mov'}"]]
    assert [i for i, _, _ in report["found"]["unreadable_video"]] == [2]
    assert (report["video_samples"], report["image_samples"], report["bad_samples"], report["errors"]) == (1, 2, 2, 2)


def test_a_container_without_a_frame_count_has_its_packets_counted(tmp_path):
    """WebM records no frame count in its header (PyAV's stream.frames is 0): the packets are counted."""
    from llava_hydra.data.video import VideoSource

    if "libvpx-vp9" not in av.codecs_available:
        pytest.skip("this PyAV build has no VP9 encoder")
    with av.open(str(tmp_path / "clip.webm"), "w") as container:
        stream = container.add_stream("libvpx-vp9", rate=4)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        for k in range(10):
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.full((32, 32, 3), k * GREY, np.uint8), "rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    with av.open(str(tmp_path / "clip.webm")) as container:
        assert container.streams.video[0].frames == 0
    videos = VideoSource(tmp_path, VideoTokens(4))
    assert videos.header("clip.webm") == (10, 4.0) and videos.frame_count("clip.webm") == 3
    assert videos.frames("clip.webm")[:, 0, 0, 0].tolist() == pytest.approx([0, 80, 160], abs=3)  # lossy VP9


def test_the_spec_gives_videos_to_onevision_only_from_its_or_a_sources_folder():
    from pathlib import Path

    from omegaconf import OmegaConf

    from llava_hydra.data.image_tokens import ImageTokens
    from llava_hydra.data.spec import video_source

    cfg = OmegaConf.create({"data": {"video_folder": "/v", "frames_upbound": 32, "force_sample": False,
                                     "video_fps": 1, "allow_images_outside_folder": False}})
    videos = video_source(cfg, TINY, None)
    assert videos.folder == Path("/v") and videos.rule.key == ["video", 4, 32, False, 1]
    assert video_source(cfg, TINY, None, video_folder="/source_videos").folder == Path("/source_videos")
    assert video_source(cfg, ImageTokens(576), None) is None  # LLaVA-1.5: video records are refused
    assert video_source(cfg, ImageTokens(576, 336, 14, [[336, 672]], "anyres"), None) is None  # LLaVA-NeXT


def test_a_length_pass_of_another_video_folder_is_not_read_from_the_cache(folder, qwen_tok, tmp_path):
    """The length cache's key holds the video folder: a video missing from one folder is not missing
    from another (before, the second dataset read the first one's problems and text-only lengths)."""
    empty = tmp_path / "empty"
    empty.mkdir()
    cache = tmp_path / "cache"
    missing = dataset(folder, qwen_tok, [VIDEO, TEXT], on_bad_sample="skip", video_folder=empty, cache_dir=cache)
    missing.modality_lengths
    assert missing.report()["by_reason"] == {"missing_video": 1}
    found = dataset(folder, qwen_tok, [VIDEO, TEXT], on_bad_sample="skip", cache_dir=cache)
    assert found.modality_lengths[0] > 0 and found.report()["skipped"] == 0  # 3 frames x 4 + 1 tokens + text


def test_video_batches_that_need_one_frame_count_are_refused_before_the_run():
    from omegaconf import OmegaConf

    from llava_hydra.config.families import family_problems

    def problems(data, **training):
        data = {"image_aspect_ratio": "anyres_max_9", "video_folder": None, "force_sample": False, **data}
        return family_problems(OmegaConf.create({"family": "llava_onevision"}), OmegaConf.create(data),
                               OmegaConf.create({"per_device_train_batch_size": 1, "packing": False, **training}))

    assert problems({"video_folder": "/v"}) == []  # OneVision's recipe: batch 1
    assert problems({"video_folder": "/v", "force_sample": True}, per_device_train_batch_size=4) == []
    assert problems({}, per_device_train_batch_size=4) == []  # no videos
    [batch] = problems({"video_folder": "/v"}, per_device_train_batch_size=4)
    assert "training.per_device_train_batch_size=4" in batch and "data.force_sample=true" in batch
    [packed] = problems({"sources": [{"video_folder": "/s"}]}, packing=True)
    assert packed.startswith("video records (a video_folder is set) with training.packing")


def test_in_run_eval_makes_the_same_generate_calls_on_every_rank(folder, qwen_tok, monkeypatch):
    """Questions go to generate in groups of one frame count, and the groups are the whole held-out set's,
    so every rank shards each group alike (ZeRO-3's generate is a collective: a rank that split its own
    share into more calls than another would wait forever)."""
    from types import SimpleNamespace

    import torch

    from llava_hydra.eval import heldout, sharding

    long = {**VIDEO, "video": "long.mov"}
    ds = dataset(folder, qwen_tok, [VIDEO, IMAGE, long, TEXT, VIDEO], upbound=4)  # 3, -, 4, -, 3 frames
    calls = []

    def sharded(items, answer_batch, batch_size):
        calls.append(list(items))
        return [("ref", f"answer {i}") for i in items]

    monkeypatch.setattr(sharding, "answer_sharded", sharded)
    monkeypatch.setattr(heldout, "find_llava_model", lambda model: SimpleNamespace(vision_tower=torch.nn.Linear(1, 1)))
    model = torch.nn.Linear(1, 1)
    out = heldout.exact_match(model, ds)
    assert calls == [[0, 4], [1, 3], [2]]  # 3 frames, no video, 4 frames: in the set's order, not a rank's
    assert out["eval_samples"] == 5
