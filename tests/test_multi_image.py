"""Multi-image records (LLaVA-NeXT / OneVision interleaved format): ``image`` a list of paths,
one ``<image>`` per image in tag order. Each image's token run stands where its tag stands,
labels are ignored over every run, the sample's pixel values are its images in tag order,
the collator and packing concatenate them across a batch in order, truncation drops whole
runs with their images, and the tiny model trains on them with a finite loss."""

from __future__ import annotations

import json
import math

import pytest
import torch
from PIL import Image

import stand_ins as testing
from llava_hydra.data.dataset import DataCollator, LazySupervisedDataset
from llava_hydra.data.records import BadSampleError
from stand_ins import turns
from llava_hydra.sampling.packing import PackedCollator, pack_samples

N_IMG = 4
I = "<image>"
# CLIP normalisation of a solid colour, per channel: (value - mean) / std
RED = [1.9303, -1.7521, -1.4802]
BLUE = [-1.7923, -1.7521, 2.1459]
GREEN = [-1.7923, 2.0749, -1.4802]

TWO_TURNS = {"id": "m1", "image": ["red.png", "blue.png"],
             "conversations": turns("<image>\nWhat color?", "Red.", "And this one? <image>", "Blue.")}
ONE_MESSAGE = {"id": "m2", "image": ["blue.png", "red.png"],
               "conversations": turns("Compare <image> with <image>.", "Blue, red.")}
SINGLE = {"id": "s1", "image": "green.png", "conversations": turns("<image>\nWhat color?", "Green.")}
TEXT = {"id": "t1", "conversations": turns("Say yes.", "Yes.")}


@pytest.fixture(scope="module")
def tok(bpe400):
    return bpe400


@pytest.fixture
def folder(tmp_path):
    folder = tmp_path / "img"
    folder.mkdir()
    Image.new("RGB", (40, 30), (255, 0, 0)).save(folder / "red.png")
    Image.new("RGB", (30, 40), (0, 0, 255)).save(folder / "blue.png")
    Image.new("RGB", (30, 30), (0, 255, 0)).save(folder / "green.png")
    return folder


def dataset(tmp_path, tok, folder, records, template="plain", max_length=2048, policy="raise"):
    path = tmp_path / "data.json"
    path.write_text(json.dumps(records))
    return LazySupervisedDataset(path, tok, testing.clip_processor(), template, image_folder=folder,
                                 model_max_length=max_length, num_image_tokens=N_IMG, on_bad_sample=policy)


class colours:
    """Each image's (R, G, B) at its top-left pixel (the images are solid colours), compared with
    a list of expected colours to 1e-3."""

    def __init__(self, pixel_values):
        self.got = [im[:, 0, 0].tolist() for im in pixel_values]

    def __eq__(self, expected):
        return len(self.got) == len(expected) and all(
            got == pytest.approx(want, abs=1e-3) for got, want in zip(self.got, expected))

    def __repr__(self):
        return repr(self.got)


def test_two_images_in_two_turns_ids_labels_and_pixels(tmp_path, tok, folder):
    s = dataset(tmp_path, tok, folder, [TWO_TURNS])[0]
    # plain: each question's images, then its caption + "\n" (trained)
    assert tok.convert_ids_to_tokens(s["input_ids"].tolist()) == [
        "<s>", I, I, I, I, "R", "e", "d", ".", "Ċ", I, I, I, I, "B", "l", "ue", ".", "Ċ"]
    assert s["labels"].tolist() == [-100, -100, -100, -100, -100, 52, 71, 70, 16, 201,
                                    -100, -100, -100, -100, 36, 78, 381, 16, 201]
    assert s["input_ids"].tolist()[5:10] == [52, 71, 70, 16, 201]
    assert s["pixel_values"].shape == (2, 3, 32, 32)
    assert colours(s["pixel_values"]) == [RED, BLUE]  # tag order: red's run first


def test_tags_in_one_message_stay_where_they_stand(tmp_path, tok, folder):
    """Several tags in one message are interleaved with its text (LLaVA-NeXT), not moved to the
    front as a single tag is; images in tag order."""
    ds = dataset(tmp_path, tok, folder, [ONE_MESSAGE], template="v1")
    assert ds.prepare(0)[0].text.endswith("USER: Compare <image> with <image>. ASSISTANT: Blue, red.</s>")
    s = ds[0]
    # text around a tag is a piece of its own (LLaVA's tokenizer_image_token): "Compare " ends in "Ġ"
    assert tok.convert_ids_to_tokens(s["input_ids"].tolist()[-43:]) == [
        "Ġ", "C", "o", "m", "p", "a", "re", "Ġ", I, I, I, I, "Ġw", "i", "t", "h", "Ġ", I, I, I, I, ".", "Ġ",
        "A", "S", "S", "I", "S", "T", "A", "N", "T", ":", "Ġ", "B", "l", "ue", ",", "Ġ", "re", "d", ".", "</s>"]
    ids = s["input_ids"].tolist()
    runs = [k for k in range(len(ids)) if ids[k] == 400 and (k == 0 or ids[k - 1] != 400)]
    assert len(runs) == 2 and all(ids[k:k + N_IMG] == [400] * N_IMG for k in runs)
    assert tok.decode(ids[runs[0] + N_IMG:runs[1]]) == " with "
    assert all(s["labels"][k:k + N_IMG].tolist() == [-100] * N_IMG for k in runs)
    trained = [t for t, lab in zip(ids, s["labels"].tolist()) if lab != -100]
    assert tok.decode(trained) == " Blue, red.</s>"
    assert colours(s["pixel_values"]) == [BLUE, RED]


def test_collator_concatenates_every_image_in_batch_order(tmp_path, tok, folder):
    ds = dataset(tmp_path, tok, folder, [TWO_TURNS, TEXT, SINGLE])
    batch = DataCollator(pad_token_id=tok.pad_token_id)([ds[0], ds[1], ds[2]])
    assert batch["pixel_values"].shape == (3, 3, 32, 32)
    assert colours(batch["pixel_values"]) == [RED, BLUE, GREEN]
    assert (batch["input_ids"] == 400).sum(dim=1).tolist() == [2 * N_IMG, 0, N_IMG]


def test_packing_keeps_every_image_run_and_image_in_order(tmp_path, tok, folder):
    ds = dataset(tmp_path, tok, folder, [TWO_TURNS, SINGLE, ONE_MESSAGE])
    row = pack_samples([ds[0], ds[1]])
    assert row["pixel_values"].shape == (3, 3, 32, 32) and colours(row["pixel_values"]) == [RED, BLUE, GREEN]
    assert int((row["input_ids"] == 400).sum()) == 3 * N_IMG
    batch = PackedCollator(tok.pad_token_id)([row, pack_samples([ds[2]])])
    assert colours(batch["pixel_values"]) == [RED, BLUE, GREEN, BLUE, RED]
    assert int((batch["input_ids"] == 400).sum()) == 5 * N_IMG


def test_truncation_drops_a_whole_run_and_its_image(tmp_path, tok, folder):
    # 19 tokens: <s>, red's run (1-4), "Red.\n" (5-9), blue's run (10-13), "Blue.\n" (14-18)
    for limit in (11, 12, 13):  # cuts inside blue's run: the run and blue's pixels go
        s = dataset(tmp_path, tok, folder, [TWO_TURNS], max_length=limit)[0]
        assert len(s["input_ids"]) == 10 and int((s["input_ids"] == 400).sum()) == N_IMG
        assert s["pixel_values"].shape == (1, 3, 32, 32) and colours(s["pixel_values"]) == [RED]
    s = dataset(tmp_path, tok, folder, [TWO_TURNS], max_length=14)[0]
    assert colours(s["pixel_values"]) == [RED, BLUE] and int((s["input_ids"] == 400).sum()) == 2 * N_IMG


def test_length_pass_counts_every_image_run(tmp_path, tok, folder):
    ds = dataset(tmp_path, tok, folder, [TWO_TURNS, ONE_MESSAGE, SINGLE, TEXT])
    lengths = ds.modality_lengths
    assert lengths == [len(ds[i]["input_ids"]) * (1 if i < 3 else -1) for i in range(4)]
    assert lengths[0] == 19


@pytest.mark.parametrize("images,tags,problem", [
    (["red.png", "blue.png"], "<image>\nOne tag only.", "1 <image> tag(s) in 2 image(s)"),
    (["red.png"], "<image> and <image>", "2 <image> tag(s) in 1 image(s)"),
    (["red.png", "blue.png", "green.png"], "<image><image>", "2 <image> tag(s) in 3 image(s)"),
    (["red.png", 7], "<image><image>", "'image' must be a path or a list of paths"),
])
def test_tags_and_images_that_do_not_match(tmp_path, tok, folder, images, tags, problem):
    bad = {"id": "m3", "image": images, "conversations": turns(tags, "No.")}
    ds = dataset(tmp_path, tok, folder, [TWO_TURNS, bad])
    with pytest.raises(BadSampleError) as e:
        ds[1]
    assert str(e.value).startswith(f"{tmp_path / 'data.json'}: sample 1 (id='m3'): {problem}")
    skipping = dataset(tmp_path, tok, folder, [TWO_TURNS, bad, SINGLE], policy="skip")
    # sample 1's stand-in in epoch 0 is record 0 (data/stand_in.py): its two images, red then blue
    assert colours(skipping[1]["pixel_values"]) == [RED, BLUE] and skipping.report()["skipped"] == 1


def test_a_missing_second_image_names_the_sample_and_the_file(tmp_path, tok, folder):
    bad = {**TWO_TURNS, "image": ["red.png", "gone.png"]}
    with pytest.raises(BadSampleError, match=r"sample 0 \(id='m1'\): image file not found: .*gone\.png"):
        dataset(tmp_path, tok, folder, [bad])[0]


# -- the tiny model trains on them ----------------------------------------------------------------

@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


def write_data(tmp_path):
    folder = tmp_path / "img"
    folder.mkdir(exist_ok=True)
    for name, rgb in (("red.png", (255, 0, 0)), ("blue.png", (0, 0, 255)), ("green.png", (0, 255, 0))):
        Image.new("RGB", (40, 30), rgb).save(folder / name)
    records = [{**TWO_TURNS, "id": f"m{k}"} for k in range(4)] + [{**ONE_MESSAGE, "id": f"n{k}"} for k in range(4)]
    records += [{**SINGLE, "id": f"s{k}"} for k in range(4)]
    path = tmp_path / "multi.json"
    path.write_text(json.dumps(records))
    return path, folder


def test_tiny_model_trains_on_multi_image_batches(compose_spec, cache, tmp_path):
    """Unpacked and packed batches of multi-image samples: the model takes every image for its
    run (it refuses a count mismatch), the loss is finite and reaches the projector."""
    from llava_hydra.model import build_model
    from llava_hydra.data.spec import spec_dataset

    path, folder = write_data(tmp_path)
    spec = compose_spec(f"paths.cache_dir={cache}", "stage=finetune", "stage.pretrain_mm_mlp_adapter=null",
                        f"data.data_path={path}", f"data.image_folder={folder}", "data.synthetic=null")
    model, tokenizer, processor = build_model(spec)
    ds = spec_dataset(spec, str(path), tokenizer, processor, model.config.image_seq_length,
                      model.config.image_token_index)
    model.train()
    for batch in (DataCollator(tokenizer.pad_token_id)([ds[0], ds[4], ds[8]]),
                  PackedCollator(tokenizer.pad_token_id)([pack_samples([ds[0], ds[8]]), pack_samples([ds[4]])])):
        assert batch["pixel_values"].shape[0] == 5
        batch.pop("use_cache", None)
        model.zero_grad()
        loss = model(**batch).loss
        assert math.isfinite(loss.item())
        loss.backward()
        grad = model.model.multi_modal_projector.linear_1.weight.grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0


@pytest.mark.parametrize("packing", [False, True], ids=["padded", "packed"])
def test_a_run_on_multi_image_records(compose_spec, cache, tmp_path, packing):
    from llava_hydra.commands.runner import run

    path, folder = write_data(tmp_path)
    run(compose_spec(f"paths.output_root={tmp_path / 'out'}", f"paths.cache_dir={cache}", "stage=finetune",
                     "stage.pretrain_mm_mlp_adapter=null", f"data.data_path={path}", f"data.image_folder={folder}",
                     "data.synthetic=null", "training.max_steps=2", "training.per_device_train_batch_size=4",
                     "training.logging_steps=1", "eval.enable=false", f"training.packing={str(packing).lower()}"))
    metrics = json.loads((tmp_path / "out" / "tiny" / "finetune_multi" / "metrics.json").read_text())  # multi.json's run
    assert metrics["train_steps"] == 2 and metrics["skipped_samples"] == 0
    assert math.isfinite(metrics["train_loss"]) and math.isfinite(metrics["train_loss_mean"])


# -- the saved model's chat template prompts as training did -----------------------------------

INTERLEAVED = [{"from": "human", "value": "Compare <image> with <image>."}, {"from": "gpt", "value": "Same."},
               {"from": "human", "value": "And <image>\nthis?"}, {"from": "gpt", "value": "Red."}]


@pytest.fixture(scope="module")
def chat_toks(tmp_path_factory):
    root = tmp_path_factory.mktemp("chat_tok")
    return {"vicuna": testing.vicuna_tokenizer(root / "v0", legacy=False),
            "vicuna_legacy": testing.vicuna_tokenizer(root / "v1", legacy=True),
            "bpe": testing.bpe_tokenizer(root / "b")}


@pytest.mark.parametrize("tok_name", ["vicuna", "vicuna_legacy", "bpe"])
@pytest.mark.parametrize("template", ["v1", "llama_2", "mpt"])
def test_chat_template_keeps_several_images_where_they_stand(chat_toks, tmp_path, tok_name, template):
    """apply_chat_template + whole-string tokenization of a multi-image conversation gives the
    training ids up to each answer: LLaVA string content, and transformers' list parts."""
    from types import SimpleNamespace

    from transformers import AutoProcessor, CLIPVisionConfig, LlamaConfig, LlavaConfig

    from llava_hydra.data.conversation import render
    from llava_hydra.data.labels import IGNORE_INDEX, encode
    from llava_hydra.data.records import normalize_turns
    from llava_hydra.model import make_processor

    tok, n_img = chat_toks[tok_name], 4
    config = LlavaConfig(vision_config=CLIPVisionConfig(image_size=28, patch_size=14), text_config=LlamaConfig())
    make_processor(tok, testing.clip_processor(28), SimpleNamespace(config=config), template).save_pretrained(tmp_path)
    processor = AutoProcessor.from_pretrained(tmp_path)
    image_id = tok.convert_tokens_to_ids(I)
    e = encode(render(template, normalize_turns({"image": ["a", "b", "c"], "conversations": INTERLEAVED}),
                      tokenizer=tok), tok, image_id, n_img, 4096)
    starts = [k for k, lab in enumerate(e.labels)
              if lab != IGNORE_INDEX and (k == 0 or e.labels[k - 1] == IGNORE_INDEX)]
    for n_messages, answer in ((1, 0), (3, 1)):
        want = e.input_ids[:starts[answer]]
        messages = [{"role": "user" if t["from"] == "human" else "assistant", "content": t["value"]}
                    for t in INTERLEAVED[:n_messages]]
        text = processor.apply_chat_template(messages, add_generation_prompt=True)
        ids = []  # the template writes no bos: the tokenizer adds it, as for llava-hf's models (tests/test_served_bos.py)
        for t in tok(text)["input_ids"]:
            ids += [t] * (n_img if t == image_id else 1)
        assert ids == want, tok.convert_ids_to_tokens(want)
    red = Image.new("RGB", (28, 28), "red")
    parts = [{"type": "text", "text": "Compare "}, {"type": "image", "image": red}, {"type": "text", "text": " with "},
             {"type": "image", "image": red}, {"type": "text", "text": "."}]
    got = processor.apply_chat_template([{"role": "user", "content": parts}], add_generation_prompt=True,
                                        tokenize=True, return_dict=True)
    assert list(got["input_ids"][0]) == e.input_ids[:starts[0]] and len(got["pixel_values"]) == 2
