"""Shards: LLaVA-format JSON + an image folder -> webdataset tar shards, and reading them back.

The format is webdataset's (OpenCLIP, img2dataset, DataComp, LAION read and write it; the
``datasets`` library loads it as ``load_dataset("webdataset", ...)``): plain POSIX tars, each
sample a run of members sharing a key, ``<key>.json`` the LLaVA record exactly as the JSON file
had it (image paths included) and ``<key>.img<j>.<ext>`` the bytes of its j-th image, copied
from the folder unchanged (no re-encoding: the pixels a run sees are the folder's). The key is the
record's index in the source file (9 digits), so an error names the sample as the JSON path would.
``index.json`` beside the shards lists them with their sample counts and sha256: a run splits an
epoch across ranks and workers from it without opening a shard, and its digest is the data digest
a checkpoint records (llava_hydra.train.data_tie). ``records.jsonl`` (listed in the index with its
sha256) holds the records alone in the shards' order, so that packing (sampling.packed_stream)
knows every sample's length, through the JSON path's length pass, before it reads a tar.
``image_sizes.jsonl`` (listed likewise) holds, line for line, each record's images' upright
(height, width), read from the headers of the bytes written into the tars (null where a header
cannot be read): an AnyRes packed stream counts its image runs from them (store_sizes.py), where
the JSON path counts from its record store's sizes; shards converted before it was written are
refused by an AnyRes packed stream with a request to convert them again.

Reading goes through fsspec (a local path, ``s3://``, ``gs://``, ``http(s)://`` ...), one shard
at a time, front to back (tarfile's stream mode: no seek, so any store that can serve a byte
stream works).

    python -m llava_hydra.data.shards data.json --image-folder images/ --out shards/ [--samples-per-shard 1000]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import tarfile
from pathlib import Path

from llava_hydra.data.images import ImageError, ImageSource
from llava_hydra.data.records import RecordError, images_of, load_records, normalize_turns

FORMAT = "llava_hydra-webdataset/1"
INDEX = "index.json"
RECORDS = "records.jsonl"
SIZES = "image_sizes.jsonl"
KEY_DIGITS = 9


class ShardError(ValueError):
    """A shard folder or shard that cannot be read as this format (names the shard and sample)."""


def shard_name(i: int) -> str:
    return f"shard-{i:06d}.tar"


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644  # mtime 0: the same input gives the same bytes
    tar.addfile(info, io.BytesIO(data))


def _suffix(name: str) -> str:
    ext = Path(name).suffix.lower().lstrip(".")
    return ext if ext.isalnum() else "bin"


def convert(data_path, image_folder, out, samples_per_shard: int = 1000, on_bad_sample: str = "raise",
            allow_images_outside_folder: bool = False) -> dict:
    """Write ``data_path``'s records with their images into shards under ``out``; returns the index.
    A record that fails the record checks or names a missing image stops the conversion with
    its file, index and problem (``on_bad_sample="skip"``: left out, and listed in the index)."""
    if samples_per_shard < 1:
        raise ValueError(f"samples_per_shard must be >= 1, got {samples_per_shard}")
    records, digest = load_records(data_path, skip_bad_lines=on_bad_sample == "skip")
    source = ImageSource(Path(image_folder or "."), allow_images_outside_folder, None)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    shards, skipped, written, sizes, tar, current, count = [], [], [], [], None, None, 0

    def close():
        if tar is not None:
            tar.close()
            raw = (out / current).read_bytes()
            shards.append({"name": current, "samples": count, "bytes": len(raw),
                           "sha256": hashlib.sha256(raw).hexdigest()})

    for i, record in enumerate(records):
        try:
            normalize_turns(record)
            if isinstance(record, dict) and record.get("video"):  # shards carry images: a video would train as text
                raise RecordError(f"a video record ({record['video']!r}): shards carry images, not videos; "
                                  f"train video records from the JSON file and data.video_folder")
            blobs = []
            for name in images_of(record):
                path = source.path(name)
                if not path.is_file():
                    raise ImageError(f"image file not found: {path}", "missing_image")
                blobs.append((name, path.read_bytes()))
        except (RecordError, ImageError) as e:
            if on_bad_sample != "skip":
                raise ShardError(f"{data_path}: sample {i}: {e}") from None
            skipped.append({"index": i, "problem": str(e)})
            continue
        if tar is None or count == samples_per_shard:
            close()
            current, count = shard_name(len(shards)), 0
            tar = tarfile.open(out / current, "w", format=tarfile.USTAR_FORMAT)
        key = f"{i:0{KEY_DIGITS}d}"
        _add(tar, f"{key}.json", json.dumps(record, ensure_ascii=False).encode())
        for j, (name, data) in enumerate(blobs):
            _add(tar, f"{key}.img{j}.{_suffix(name)}", data)
        count += 1
        written.append(record)
        sizes.append([_header_size(data) for _, data in blobs])
    close()
    if not shards:
        raise ShardError(f"{data_path}: no record to write ({len(skipped)} skipped)")
    # the records alone, one a line in the shards' order: what packing plans rows from (lengths) before reading a tar
    raw = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in written).encode()
    (out / RECORDS).write_bytes(raw)
    raw_sizes = "".join(json.dumps(s) + "\n" for s in sizes).encode()  # line i: record i's images' [h, w]
    (out / SIZES).write_bytes(raw_sizes)
    index = {"format": FORMAT, "source": {"data_path": str(Path(data_path).resolve()), "sha256": digest},
             "samples": sum(s["samples"] for s in shards), "shards": shards, "skipped": skipped,
             "records": {"name": RECORDS, "bytes": len(raw), "sha256": hashlib.sha256(raw).hexdigest()},
             "image_sizes": {"name": SIZES, "bytes": len(raw_sizes), "sha256": hashlib.sha256(raw_sizes).hexdigest()}}
    (out / INDEX).write_text(json.dumps(index, indent=1))
    return index


def _header_size(data: bytes) -> list[int] | None:
    """[height, width] upright of an image's bytes from its header, None if it cannot be read."""
    from llava_hydra.data.anyres import header_size

    try:
        return list(header_size(io.BytesIO(data)))
    except Exception:  # noqa: BLE001 -- PIL raises many kinds for a bad header; the stream names the sample
        return None


# -- reading ------------------------------------------------------------------------------------

def join(url: str, name: str) -> str:
    return url.rstrip("/") + "/" + name


def read_index(url: str, storage_options: dict | None = None) -> tuple[dict, str]:
    """(index, its sha256) of the shard folder at ``url`` (a path or an fsspec URL)."""
    import fsspec

    where = join(str(url), INDEX)
    try:
        with fsspec.open(where, "rb", **(storage_options or {})) as f:
            raw = f.read()
    except FileNotFoundError:
        raise ShardError(f"{where}: no shard index (convert with python -m llava_hydra.data.shards)") from None
    index = json.loads(raw)
    if index.get("format") != FORMAT:
        raise ShardError(f"{where}: format {index.get('format')!r}, expected {FORMAT!r}")
    return index, hashlib.sha256(raw).hexdigest()


def read_records(url: str, storage_options: dict | None, index: dict) -> tuple[str, list[dict]]:
    """(file name, records) of the shard folder's ``records.jsonl``: every sample's LLaVA record in
    the shards' order (sample id order), checked against the index's sha256."""
    records = _listed_lines(url, storage_options, index, "records", RECORDS, "shards written before packing could "
                            "read them): convert again with python -m llava_hydra.data.shards to pack a stream")
    return index["records"]["name"], records


def read_image_sizes(url: str, storage_options: dict | None, index: dict) -> list[list]:
    """Each record's images' [height, width] (None: unreadable header) from the shard folder's
    ``image_sizes.jsonl``, in records.jsonl's order, checked against the index's sha256."""
    return _listed_lines(url, storage_options, index, "image_sizes", SIZES, "shards written before AnyRes "
                         "streams kept image sizes): convert again with python -m llava_hydra.data.shards")


def _listed_lines(url: str, storage_options: dict | None, index: dict, key: str, file: str, missing: str) -> list:
    """The JSON lines of a file ``index[key]`` lists beside the shards, one per sample, checked against
    its sha256; ``missing`` ends the error for an index that lists none."""
    import fsspec

    meta = index.get(key)
    if not meta:
        raise ShardError(f"{join(str(url), INDEX)}: no {file} listed ({missing}")
    where = join(str(url), meta["name"])
    with fsspec.open(where, "rb", **(storage_options or {})) as f:
        raw = f.read()
    if hashlib.sha256(raw).hexdigest() != meta["sha256"]:
        raise ShardError(f"{where}: its sha256 is not the one {INDEX} lists (changed after conversion)")
    lines = [json.loads(line) for line in raw.decode().splitlines() if line.strip()]
    if len(lines) != index["samples"]:
        raise ShardError(f"{where}: {len(lines)} lines for the index's {index['samples']} samples")
    return lines


def read_shard(url: str, storage_options: dict | None = None, wanted=None):
    """Yield ``(offset, key, record, {image name: bytes})`` for the samples of one shard in order
    (only offsets in ``wanted`` when given: the others' bytes are read past, not decoded)."""
    import fsspec

    with fsspec.open(url, "rb", **(storage_options or {})) as f, tarfile.open(fileobj=f, mode="r|") as tar:
        offset, key, members = -1, None, {}

        def sample():
            if "json" not in members:
                raise ShardError(f"{url}: sample {key} has no {key}.json")
            record = json.loads(members.pop("json"))
            names = images_of(record)
            blobs = {}
            for j, name in enumerate(names):
                found = [v for k, v in members.items() if k.startswith(f"img{j}.")]
                if not found:
                    raise ShardError(f"{url}: sample {int(key)}: image {j} ({name!r}) is not in the shard")
                blobs[name] = found[0]
            return offset, int(key), record, blobs

        for member in tar:
            base = member.name.rsplit("/", 1)[-1]
            k, _, ext = base.partition(".")
            if k != key:
                if key is not None and (wanted is None or offset in wanted):
                    yield sample()
                offset, key, members = offset + 1, k, {}
            if wanted is None or offset in wanted:
                members[ext] = tar.extractfile(member).read()
        if key is not None and (wanted is None or offset in wanted):
            yield sample()


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m llava_hydra.data.shards",
                                description="LLaVA-format JSON + image folder -> webdataset tar shards")
    p.add_argument("data_path")
    p.add_argument("--image-folder", default=None)
    p.add_argument("--out", required=True)
    p.add_argument("--samples-per-shard", type=int, default=1000)
    p.add_argument("--on-bad-sample", choices=("raise", "skip"), default="raise")
    p.add_argument("--allow-images-outside-folder", action="store_true")
    a = p.parse_args(argv)
    index = convert(a.data_path, a.image_folder, a.out, a.samples_per_shard, a.on_bad_sample,
                    a.allow_images_outside_folder)
    size = sum(s["bytes"] for s in index["shards"])
    print(f"{index['samples']} samples in {len(index['shards'])} shards ({size / 1e6:.1f} MB) under {a.out}"
          + (f"; {len(index['skipped'])} bad records left out (listed in {INDEX})" if index["skipped"] else ""))


if __name__ == "__main__":
    main()
