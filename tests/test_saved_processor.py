"""The image processor a saved model carries makes training's pixels: ``pad`` saves transformers'
``LlavaImageProcessor`` with ``do_pad`` (mean-colour square, the image centred as LLaVA's
expand2square centres it), ``square`` the tower's own; CLIP and SigLIP towers. Loaded back with
``AutoProcessor`` alone, its pixel values equal training's pixel path (data/pixels.py) within
README's tolerance — two 8-bit levels where training resizes with torch, none where it runs the
processor — on portrait, landscape, 1-pixel-wide and 1-pixel-tall images."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

import stand_ins as testing
from llava_hydra.data.pixels import Pipeline, process
from llava_hydra.model import make_processor

CLIP_STD_MIN, SIGLIP_STD = 0.26130258, 0.5
# README's tolerance: 2 levels of 8 bits, normalized by the smallest std (2 / (255 * std))
TOLERANCE = {"clip": 0.0300156, "siglip": 0.0156863}
SIZES = {"portrait": (17, 40), "landscape": (61, 23), "one_wide": (1, 50), "one_tall": (50, 1),
         "photo": (480, 640), "odd": (333, 199)}


def tower(kind: str, size: int):
    if kind == "clip":
        return testing.clip_processor(size)
    from transformers.models.siglip import SiglipImageProcessorPil

    return SiglipImageProcessorPil(size={"height": size, "width": size})


def saved(image_processor, aspect, path, tok):
    """make_processor + save_pretrained as stage 2 / merge do, then AutoProcessor alone."""
    from transformers import AutoProcessor, CLIPVisionConfig, LlamaConfig, LlavaConfig

    config = LlavaConfig(vision_config=CLIPVisionConfig(image_size=32, patch_size=8), text_config=LlamaConfig())
    make_processor(tok, image_processor, SimpleNamespace(config=config), "v1", aspect).save_pretrained(path)
    return AutoProcessor.from_pretrained(path)


def noise(w: int, h: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.RandomState(seed).randint(0, 256, (h, w, 3), dtype=np.uint8))


@pytest.mark.parametrize("kind,size", [("clip", 32), ("clip", 336), ("siglip", 32), ("siglip", 384)])
@pytest.mark.parametrize("aspect", ["pad", "square"])
def test_saved_processor_gives_trainings_pixels(bpe400, tmp_path, kind, size, aspect):
    proc = saved(tower(kind, size), aspect, tmp_path, bpe400)
    written = json.loads((tmp_path / "processor_config.json").read_text())["image_processor"]
    if aspect == "pad":
        assert type(proc.image_processor).__name__ == "LlavaImageProcessorPil"  # no torchvision here
        assert written["image_processor_type"] == "LlavaImageProcessor" and written["do_pad"] is True
        assert written["do_center_crop"] is (kind == "clip")  # SigLIP does not crop: neither does its pad
    else:
        assert type(proc.image_processor).__name__ == {"clip": "CLIPImageProcessorPil",
                                                        "siglip": "SiglipImageProcessorPil"}[kind]
        assert not written.get("do_pad")
    for seed, (name, (w, h)) in enumerate(SIZES.items()):
        img = noise(w, h, seed)
        client = proc.image_processor(img, return_tensors="pt")["pixel_values"][0]
        assert client.shape == (3, size, size), name
        # a fresh pipeline per image: each one is the torch path (verified on its first image)
        training = Pipeline(tower(kind, size))(img, aspect)
        assert float((client - training).abs().max()) <= TOLERANCE[kind] + 1e-5, name  # + float rounding
        # training's reference path (the tower's processor after expand2square) exactly
        torch.testing.assert_close(client, process(img, aspect, tower(kind, size)), atol=1e-6, rtol=0)


@pytest.mark.parametrize("kind,corner", [
    # int(255 * mean) per channel, normalized: CLIP (122/255 - 0.48145466) / 0.26862954, ...; SigLIP 127
    ("clip", [-0.0112545, -0.0111960, -0.0013329]), ("siglip", [-0.0039216] * 3)])
def test_pad_colour_and_placement_are_llavas(bpe400, tmp_path, kind, corner):
    proc = saved(tower(kind, 32), "pad", tmp_path, bpe400)
    tall = Image.new("RGB", (1, 64), (255, 0, 0))  # one red column: padded left and right
    px = proc.image_processor(tall, return_tensors="pt")["pixel_values"][0]
    torch.testing.assert_close(px[:, 0, 0], torch.tensor(corner), atol=1e-5, rtol=0)  # mean colour
    torch.testing.assert_close(px[:, :, -1], px[:, :, 0])  # centred: same colour both sides
    assert float(px[0, 16, 15:17].max()) > float(px[0, 16, 0]) + 0.3  # the red column in the middle
    # an image 4 px wide in an 8-px square (offset (8-4)//2=2) and 5 px wide (offset 1, floored)
    for w, left in ((4, 2), (5, 1)):
        img = Image.new("RGB", (w, 8), (0, 0, 255))
        padded = proc.image_processor(img, return_tensors="np", do_resize=False, do_center_crop=False,
                                      do_rescale=False, do_normalize=False)["pixel_values"][0]
        blue = np.flatnonzero(padded[2, 0] == 255)
        assert blue.tolist() == list(range(left, left + w))


def test_the_towers_crop_processor_is_what_a_pad_model_must_not_carry(bpe400, tmp_path):
    """Control: the tower's CLIP processor (what was saved before) crops a landscape image where
    training padded it: its pixels are far outside the tolerance."""
    img = noise(61, 23)
    crop = tower("clip", 32)(img, return_tensors="pt")["pixel_values"][0]
    assert float((crop - Pipeline(tower("clip", 32))(img, "pad")).abs().max()) > 1.0


def test_a_saved_pad_processor_neither_pads_twice_nor_pads_a_square_run(bpe400, tmp_path):
    """A run that starts from a saved pad model (model.pretrained_llava) or evaluates one hands the
    loaded LlavaImageProcessor to the pixel path, which pads by the run's aspect itself."""
    proc = saved(tower("clip", 32), "pad", tmp_path, bpe400).image_processor
    img = noise(61, 23)
    for aspect in ("pad", "square"):
        torch.testing.assert_close(Pipeline(proc)(img, aspect), Pipeline(tower("clip", 32))(img, aspect))
    assert Pipeline(proc).name.startswith("torch resize") and proc.do_pad is True  # the loaded one is untouched
    # and a square run that saves from it carries a processor without padding
    again = saved(proc, "square", tmp_path / "again", bpe400).image_processor
    torch.testing.assert_close(again(img, return_tensors="pt")["pixel_values"][0], process(img, "square", tower("clip", 32)))
