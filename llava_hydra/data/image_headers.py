"""An opened (not decoded) image's EXIF orientation, read as decoding + ``getexif()`` would see it
(images.open_rgb), without decoding the pixels.

PIL's ``getexif()`` on a PNG whose header chunks hold no ``eXIf`` decodes the whole image first (an
``eXIf`` may follow the image data): 60 ms for a 2000x2000 PNG, against ~0.05 ms for the header
(bench/bench_anyres.py). Here the PNG's chunk list is walked instead (8-byte chunk headers, the
data skipped by seeking): with no metadata chunk (``eXIf``, ``tEXt``, ``zTXt``, ``iTXt``: where
PIL finds EXIF or XMP orientation) after the image data, what the header chunks say is all
decoding would add, and the image is not decoded; otherwise (rare) it is, as before.
"""

from __future__ import annotations

import io
import struct
from pathlib import Path

ORIENTATION = 0x0112
_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_METADATA = {b"eXIf", b"tEXt", b"zTXt", b"iTXt"}


def png_metadata_after_data(path: str | Path) -> bool:
    """True when a metadata chunk follows the PNG's image data (or the file cannot be walked). ``path``
    may be in-memory bytes (a BytesIO: a shard's image, stream.ShardImage), walked on a copy."""
    with (io.BytesIO(path.getbuffer()) if hasattr(path, "getbuffer") else open(path, "rb")) as f:
        if f.read(8) != _SIGNATURE:
            return True
        seen_data = False
        while True:
            head = f.read(8)
            if len(head) < 8:
                return True  # truncated: let PIL's decoding find out
            length, kind = struct.unpack(">I4s", head)
            if kind == b"IEND":
                return False
            if kind in (b"IDAT", b"fdAT"):
                seen_data = True
            elif seen_data and kind in _METADATA:
                return True
            f.seek(length + 4, 1)  # the data and its CRC


def orientation(img, path: str | Path) -> int:
    """The EXIF orientation (1..8) of the opened image ``img`` read from ``path``."""
    from PIL import Image

    if img.format == "PNG" and "exif" not in img.info and not png_metadata_after_data(path):
        return Image.Image.getexif(img).get(ORIENTATION, 1)  # the base method: PNG's decodes first
    return img.getexif().get(ORIENTATION, 1)
