"""Images: square (the processor's resize + centre crop) and pad (LLaVA's expand2square with the
processor's mean colour), EXIF orientation, RGBA / grayscale / palette / 16-bit to RGB."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import stand_ins as testing
from llava_hydra.data.images import ImageError, ImageSource, load_image, open_rgb
from llava_hydra.data.pixels import expand2square, mean_colour


@pytest.fixture(scope="module")
def processor():
    return testing.clip_processor(32)


def test_square_is_the_processors_resize_and_centre_crop(processor, tmp_path):
    img = Image.new("RGB", (64, 32), (255, 0, 0))
    img.paste((0, 0, 255), (0, 0, 16, 32))  # a blue band on the left that the centre crop removes
    img.save(tmp_path / "a.png")
    square = load_image(tmp_path / "a.png", "square", processor)
    torch.testing.assert_close(square, processor(img, return_tensors="pt")["pixel_values"][0])
    red = processor(Image.new("RGB", (32, 32), (255, 0, 0)), return_tensors="pt")["pixel_values"][0]
    torch.testing.assert_close(square, red)


def test_pad_fills_with_the_mean_colour_as_llava(processor, tmp_path):
    assert mean_colour(processor) == (122, 116, 104)  # int(255 * CLIP mean), LLaVA's truncation
    img = Image.new("RGB", (40, 20), (255, 0, 0))
    padded = expand2square(img, mean_colour(processor))
    assert padded.size == (40, 40)
    a = np.asarray(padded)
    assert (a[:10] == (122, 116, 104)).all() and (a[30:] == (122, 116, 104)).all() and (a[10:30] == (255, 0, 0)).all()
    tall = np.asarray(expand2square(Image.new("RGB", (10, 30), (0, 255, 0)), (1, 2, 3)))
    assert (tall[:, :10] == (1, 2, 3)).all() and (tall[:, 10:20] == (0, 255, 0)).all()
    img.save(tmp_path / "a.png")
    pad = load_image(tmp_path / "a.png", "pad", processor)
    torch.testing.assert_close(pad, processor(padded, return_tensors="pt")["pixel_values"][0])
    assert not torch.allclose(pad, load_image(tmp_path / "a.png", "square", processor))
    with pytest.raises(ValueError, match="image_aspect_ratio must be one of"):
        load_image(tmp_path / "a.png", "stretch", processor)


def test_exif_orientation_is_honoured(tmp_path):
    img = Image.new("RGB", (30, 20), (0, 0, 0))
    img.paste((255, 255, 255), (0, 0, 10, 20))  # white on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    img.save(tmp_path / "r.jpg", exif=exif, quality=100)
    out = open_rgb(tmp_path / "r.jpg")
    assert out.size == (20, 30)
    a = np.asarray(out).astype(int)
    assert a[:8].mean() > 200 and a[-8:].mean() < 50  # the left band is now on top


def test_modes_become_rgb(tmp_path):
    rgba = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    rgba.putpixel((0, 0), (255, 0, 0, 255))
    rgba.save(tmp_path / "rgba.png")
    a = np.asarray(open_rgb(tmp_path / "rgba.png"))
    assert tuple(a[0, 0]) == (255, 0, 0) and tuple(a[3, 3]) == (255, 255, 255)  # transparent -> white

    Image.new("L", (4, 4), 77).save(tmp_path / "gray.png")
    assert (np.asarray(open_rgb(tmp_path / "gray.png")) == 77).all()

    pal = Image.new("P", (4, 4), 1)
    pal.putpalette([0, 0, 0, 10, 20, 30] + [0] * 762)
    pal.save(tmp_path / "pal.png")
    assert (np.asarray(open_rgb(tmp_path / "pal.png")) == (10, 20, 30)).all()
    pal.info["transparency"] = 1
    pal.save(tmp_path / "pal_t.png", transparency=1)
    assert (np.asarray(open_rgb(tmp_path / "pal_t.png")) == 255).all()

    sixteen = Image.fromarray(np.array([[0, 32896], [65535, 257]], dtype=np.uint16))
    sixteen.save(tmp_path / "g16.png")
    with Image.open(tmp_path / "g16.png") as check:
        assert check.mode.startswith("I")  # really stored and read as 16-bit
    out = np.asarray(open_rgb(tmp_path / "g16.png"))
    assert out.shape == (2, 2, 3) and out[..., 0].tolist() == [[0, 128], [255, 1]]

    Image.new("CMYK", (4, 4), (0, 0, 0, 0)).save(tmp_path / "c.jpg")
    assert open_rgb(tmp_path / "c.jpg").mode == "RGB"


def test_check_looks_up_the_file_or_decodes_it(tmp_path):
    probe = lambda path, decode=False: ImageSource(tmp_path).check(path.name, decode=decode)  # noqa: E731
    Image.new("RGB", (64, 64), (1, 2, 3)).save(tmp_path / "ok.png")
    data = (tmp_path / "ok.png").read_bytes()
    (tmp_path / "bad.png").write_bytes(data[:40] + b"\0" * (len(data) - 40))
    (tmp_path / "empty.png").write_bytes(b"")
    assert probe(tmp_path / "ok.png") is None and probe(tmp_path / "ok.png", decode=True) is None
    missing, empty = probe(tmp_path / "missing.png"), probe(tmp_path / "empty.png")
    assert missing.kind == "missing_image" and "not found" in str(missing)
    assert empty.kind == "unreadable_image" and "empty" in str(empty)
    assert probe(tmp_path / "bad.png", decode=True).kind == "unreadable_image"
    with pytest.raises(ImageError, match="cannot read image"):
        open_rgb(tmp_path / "bad.png")
