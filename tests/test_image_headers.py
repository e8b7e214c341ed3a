"""Image sizes from headers (data/anyres.py header_size, data/image_headers.py): upright as decoding
makes them (EXIF orientation 6 swaps), and a PNG's size is read without decoding its pixels unless
metadata follows its image data (where PIL's getexif would find an orientation only after decoding)."""

from __future__ import annotations

import io
import struct
import zlib

import pytest
from PIL import Image, PngImagePlugin

from llava_hydra.data.anyres import header_size
from llava_hydra.data.images import open_rgb


def exif_bytes(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()  # b"Exif\0\0" + the TIFF structure


def png_with_trailing_exif(path, w: int, h: int, orientation: int) -> None:
    """A PNG whose eXIf chunk comes after IDAT, just before IEND (allowed by the PNG spec)."""
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (10, 200, 30)).save(buf, "PNG")
    raw = buf.getvalue()
    data = exif_bytes(orientation)[6:]  # PNG's eXIf holds the TIFF structure alone
    chunk = struct.pack(">I", len(data)) + b"eXIf" + data + struct.pack(">I", zlib.crc32(b"eXIf" + data))
    path.write_bytes(raw[:-12] + chunk + raw[-12:])  # IEND is the last 12 bytes


@pytest.fixture
def no_png_decoding(monkeypatch):
    def refuse(self):
        raise AssertionError("the PNG was decoded")
    monkeypatch.setattr(PngImagePlugin.PngImageFile, "load", refuse)


def test_png_size_without_decoding(tmp_path, no_png_decoding):
    Image.new("RGB", (300, 120)).save(tmp_path / "plain.png")
    Image.new("RGB", (300, 120)).save(tmp_path / "rotated.png", exif=exif_bytes(6))  # eXIf before IDAT
    assert header_size(tmp_path / "plain.png") == (120, 300)
    assert header_size(tmp_path / "rotated.png") == (300, 120)  # 90 degrees: swapped


def test_png_exif_after_the_data_is_still_seen(tmp_path):
    png_with_trailing_exif(tmp_path / "late.png", 300, 120, 6)
    assert header_size(tmp_path / "late.png") == (300, 120)
    assert open_rgb(tmp_path / "late.png").size == (120, 300)  # decoded upright: 120 wide, 300 tall
    png_with_trailing_exif(tmp_path / "late1.png", 300, 120, 1)
    assert header_size(tmp_path / "late1.png") == (120, 300)


def test_jpeg_orientation(tmp_path):
    Image.new("RGB", (300, 120)).save(tmp_path / "r.jpg", exif=exif_bytes(8))
    Image.new("RGB", (300, 120)).save(tmp_path / "u.jpg", exif=exif_bytes(3))  # 180 degrees: not swapped
    assert header_size(tmp_path / "r.jpg") == (300, 120) and open_rgb(tmp_path / "r.jpg").size == (120, 300)
    assert header_size(tmp_path / "u.jpg") == (120, 300)
