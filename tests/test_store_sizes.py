"""Image sizes kept in the record store (data/store_sizes.py): read from the headers once by the first
AnyRes pass (upright: EXIF rotation swaps), then the length pass, the samples' token runs and the
decoded-size check of later runs read them without opening a header; a LLaVA-1.5 run reads and
keeps none; an image replaced by one of another size is refused naming what happened; a missing
image is still named (or counted under skip); processes starting at once read each header once."""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

import stand_ins as testing
from stand_ins import turns
from llava_hydra.data import anyres, store, store_sizes
from llava_hydra.data.anyres import family_image_processor
from llava_hydra.data.dataset import LazySupervisedDataset
from llava_hydra.data.image_tokens import ImageTokens
from llava_hydra.data.records import BadSampleError
from llava_hydra.data.store_check import store_problem

PINPOINTS = [[32, 64], [64, 32], [64, 64], [96, 32], [32, 96]]  # model=tiny_next's: 32-px crops
RULE = ImageTokens(16, 32, 8, PINPOINTS, "anyres")
MAX1 = ImageTokens(16, 32, 8, PINPOINTS, "anyres_max_1")  # another rule (another length cache), same crops
ASK = turns("<image>\nWhat color is the shape?", "Red.")
TWO = turns("<image>\nWhat color is the shape?", "Red.", "<image>\nAnd this one?", "Blue.")


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return testing.sentencepiece_tokenizer(tmp_path_factory.mktemp("sp"))


def exif(orientation: int) -> bytes:
    e = Image.Exif()
    e[0x0112] = orientation
    return e.tobytes()


def folder_of_images(tmp_path):
    """Records over a landscape PNG, a portrait JPEG, a JPEG and a PNG stored sideways (EXIF 6 / 8)."""
    Image.new("RGB", (50, 30), (200, 30, 30)).save(tmp_path / "land.png")  # 50 wide, 30 high
    Image.new("RGB", (30, 70), (30, 200, 30)).save(tmp_path / "port.jpg")
    Image.new("RGB", (50, 30), (30, 30, 200)).save(tmp_path / "rot.jpg", exif=exif(6))  # stands 30 wide, 50 high
    Image.new("RGB", (40, 20), (90, 90, 90)).save(tmp_path / "rot.png", exif=exif(8))  # stands 20 wide, 40 high
    return [{"id": "land", "image": "land.png", "conversations": ASK},
            {"id": "text", "conversations": turns("Describe a cat.", "A cat is an animal.")},
            {"id": "two", "image": ["port.jpg", "rot.jpg"], "conversations": TWO},
            {"id": "png", "image": "rot.png", "conversations": ASK}]


def dataset(tmp_path, tok, records, rule=RULE, **kw):
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in records))
    proc = (testing.clip_processor() if isinstance(rule, int) else
            family_image_processor("llava_next", testing.clip_processor(), SimpleNamespace(image_size=32), PINPOINTS))
    return LazySupervisedDataset(tmp_path / "d.jsonl", tok, proc, "v1", image_folder=tmp_path, num_image_tokens=rule,
                                 cache_dir=tmp_path / "cache", **kw)


def sizes_file(ds):
    found = list((ds.records.folder / "sizes").glob("*.npz"))
    assert len(found) == 1
    return found[0]


@pytest.fixture
def no_headers(monkeypatch):
    def refuse(path):
        raise AssertionError(f"a header was read: {path}")
    monkeypatch.setattr(anyres, "header_size", refuse)


def test_sizes_are_read_once_and_later_runs_open_no_header(tmp_path, tok, monkeypatch):
    records = folder_of_images(tmp_path)
    first = dataset(tmp_path, tok, records)
    lengths = first.modality_lengths
    with np.load(sizes_file(first)) as z:  # rows: the store's image paths, records in order, tags in order
        assert z["sizes"].tolist() == [[30, 50], [70, 30], [50, 30], [40, 20]]  # (height, width), upright
        assert json.loads(str(z["problems"])) == {}
    assert store_sizes.of_dataset(first).offsets.tolist() == [0, 1, 1, 3, 4]

    def refuse(path):
        raise AssertionError(f"a header was read: {path}")
    monkeypatch.setattr(anyres, "header_size", refuse)  # from here on no header may be read
    again = dataset(tmp_path, tok, records, rule=MAX1)  # another rule: its length pass runs, from the stored sizes
    assert [again.image_runs(images, i) for i, images in [(0, ["land.png"]), (2, ["port.jpg", "rot.jpg"]),
                                                         (3, ["rot.png"])]] == [[31], [34, 32], [31]]
    assert [first.image_runs(images, i) for i, images in [(0, ["land.png"]), (2, ["port.jpg", "rot.jpg"]),
                                                          (3, ["rot.png"])]] == [[44], [66, 46], [56]]
    samples = [again[i] for i in range(4)]
    assert samples[2]["image_sizes"].tolist() == [[70, 30], [50, 30]] and samples[3]["image_sizes"].tolist() == [[40, 20]]
    assert again.modality_lengths == [len(samples[0]["input_ids"]), -len(samples[1]["input_ids"]),
                                      len(samples[2]["input_ids"]), len(samples[3]["input_ids"])]
    assert [a - b for a, b in zip(lengths, again.modality_lengths)] == [44 - 31, 0, 66 + 46 - 34 - 32, 56 - 31]
    assert [first[i]["image_sizes"].tolist() for i in (0, 3)] == [[[30, 50]], [[40, 20]]]  # the first run's samples too


def test_llava15_run_reads_and_keeps_no_sizes(tmp_path, tok, no_headers):
    records = folder_of_images(tmp_path)
    ds = dataset(tmp_path, tok, records, rule=16)
    assert ds.modality_lengths[0] > 16 and ds[0]["pixel_values"].shape == (3, 32, 32)
    assert not (ds.records.folder / "sizes").exists() and store_sizes.of_dataset(ds) is None


def test_a_replaced_image_of_another_size_is_refused(tmp_path, tok):
    records = folder_of_images(tmp_path)
    for policy in ("raise", "skip"):  # (each policy has its own store: bad lines kept or not)
        dataset(tmp_path, tok, records, on_bad_sample=policy).modality_lengths  # sizes stored: land.png is (30, 50)
    Image.new("RGB", (64, 64)).save(tmp_path / "land.png")
    with pytest.raises(BadSampleError, match=r"d.jsonl: sample 0 \(id='land'\): image land.png: decoded size "
                                             r"\(64, 64\) is not \(30, 50\), the size stored for it when its header "
                                             r"was read .* was replaced by an image of another size since"):
        dataset(tmp_path, tok, records)[0]
    skip = dataset(tmp_path, tok, records, on_bad_sample="skip")
    stand_in = skip[0]  # another record's sample
    assert "image_sizes" not in stand_in or stand_in["image_sizes"].tolist() != [[64, 64]]
    assert skip.report()["by_reason"] == {"unreadable_image": 1}
    # the sizes/ folder deleted: headers read again, and the length pass (keyed by the sizes) counted again
    before = dataset(tmp_path, tok, records).modality_lengths
    import shutil
    shutil.rmtree(dataset(tmp_path, tok, records).records.folder / "sizes")
    fresh = dataset(tmp_path, tok, records)
    assert fresh[0]["image_sizes"].tolist() == [[64, 64]]
    assert fresh.modality_lengths[0] - before[0] == 88 - 44 and fresh.modality_lengths[1:] == before[1:]


def test_missing_image_is_named_from_the_stored_sizes(tmp_path, tok, monkeypatch):
    records = folder_of_images(tmp_path) + [{"id": "gone", "image": "nope.png", "conversations": ASK}]
    with pytest.raises(BadSampleError, match=r"d.jsonl: sample 4 \(id='gone'\): image file not found: .*nope.png"):
        dataset(tmp_path, tok, records).modality_lengths
    with np.load(sizes_file(dataset(tmp_path, tok, records))) as z:
        assert list(json.loads(str(z["problems"]))) == ["4"] and z["sizes"][4].tolist() == [0, 0]
    dataset(tmp_path, tok, records, on_bad_sample="skip").modality_lengths  # (skip's store keeps its own sizes)
    monkeypatch.setattr(anyres, "header_size", lambda path: (_ for _ in ()).throw(AssertionError("header read")))
    with pytest.raises(BadSampleError, match=r"sample 4 \(id='gone'\): image file not found"):
        dataset(tmp_path, tok, records, rule=MAX1).modality_lengths  # another rule: named from the stored sizes
    skip = dataset(tmp_path, tok, records, rule=MAX1, on_bad_sample="skip")
    skip.modality_lengths
    assert skip.report()["by_reason"] == {"missing_image": 1}


def test_store_format_and_check_leave_sizes_apart(tmp_path, tok):
    assert store.FORMAT == 6  # 6: the sizes/ folder
    records = folder_of_images(tmp_path)
    ds = dataset(tmp_path, tok, records)
    ds.modality_lengths
    folder = ds.records.folder
    assert store_problem(folder) is None  # sizes/ is not a file the build made, and not refused as one
    assert store._key(ds.data_digest, False) == folder.name
    # a FORMAT 5 store of the same file lives elsewhere: a FORMAT 5 reader, which refuses sizes/, never opens this one
    old = store.FORMAT
    try:
        store.FORMAT = 5
        assert store._key(ds.data_digest, False) != folder.name
    finally:
        store.FORMAT = old
    (folder / "stray.bin").write_bytes(b"x")
    assert "stray.bin was not part of the store" in store_problem(folder)


def test_damaged_sizes_are_read_again(tmp_path, tok, caplog):
    records = folder_of_images(tmp_path)
    ds = dataset(tmp_path, tok, records)
    ds.modality_lengths
    path = sizes_file(ds)
    path.write_bytes(path.read_bytes()[:40])
    again = dataset(tmp_path, tok, records, rule=MAX1)
    assert store_sizes.of_dataset(again).sizes.tolist() == [[30, 50], [70, 30], [50, 30], [40, 20]]
    assert "are damaged or incomplete" in caplog.text


def _fill(folder, data, log):
    def counting(path, _real=anyres.header_size):
        with open(log, "a") as f:
            f.write(f"{path.name}\n")
        import time
        time.sleep(0.1)
        return _real(path)
    anyres.header_size = counting
    records, _ = store.open_records(data, folder / "cache")
    store_sizes.stored_sizes(records, anyres.ImageSource(folder))


def test_processes_starting_at_once_read_each_header_once(tmp_path):
    folder_of_images(tmp_path)
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in folder_of_images(tmp_path)))
    store.open_records(tmp_path / "d.jsonl", tmp_path / "cache")
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_fill, args=(tmp_path, tmp_path / "d.jsonl", tmp_path / "reads.log")) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    assert sorted((tmp_path / "reads.log").read_text().split()) == ["land.png", "port.jpg", "rot.jpg", "rot.png"]


def test_parallel_read_equals_one_process(tmp_path, monkeypatch):
    records = folder_of_images(tmp_path) * 3  # paths repeat: each distinct path read once
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in records))
    got, _ = store.open_records(tmp_path / "d.jsonl", tmp_path / "cache")
    source = anyres.ImageSource(tmp_path)
    one = store_sizes._read(got, source, got.image_offsets())
    monkeypatch.setattr(store_sizes, "PARALLEL_MIN", 1)
    monkeypatch.setattr(store_sizes.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    many = store_sizes._read(got, source, got.image_offsets())
    assert many.sizes.tolist() == one.sizes.tolist() == [[30, 50], [70, 30], [50, 30], [40, 20]] * 3


def test_shards_keep_sizes_and_an_anyres_packed_stream_counts_from_them(tmp_path, tok, monkeypatch):
    from contextlib import nullcontext

    from omegaconf import OmegaConf

    from llava_hydra.data.shards import convert
    from llava_hydra.data.stream import ShardImages
    from llava_hydra.sampling.packed_stream import packed_stream_dataset

    records = folder_of_images(tmp_path)
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in records))
    index = convert(tmp_path / "d.jsonl", tmp_path, tmp_path / "sh", samples_per_shard=2)
    assert [json.loads(line) for line in (tmp_path / "sh" / "image_sizes.jsonl").read_text().splitlines()] == [
        [[30, 50]], [], [[70, 30], [50, 30]], [[40, 20]]]  # from the bytes in the tars, upright
    assert index["image_sizes"]["name"] == "image_sizes.jsonl"
    # a PNG's header read from a shard's bytes (the unpacked stream's samples): its chunks walked in memory
    png = (tmp_path / "rot.png").read_bytes()
    assert anyres.image_size(ShardImages(blobs={"rot.png": png}, shard="s.tar"), "rot.png") == (40, 20)

    json_path = dataset(tmp_path, tok, records, model_max_length=2048).modality_lengths
    monkeypatch.setattr(anyres, "header_size", lambda path: (_ for _ in ()).throw(AssertionError("header read")))
    cfg = OmegaConf.create({
        "data": {"stream": {"shards": str(tmp_path / "sh"), "storage_options": {}, "shuffle_buffer": 4},
                 "template": "v1", "image_aspect_ratio": "anyres", "on_bad_sample": "raise", "max_image_pixels": None},
        "model": {"model_max_length": 2048}, "paths": {"cache_dir": str(tmp_path / "cache2")},
        "training": {"packing_fill": 1.0}})
    args = SimpleNamespace(main_process_first=lambda **kw: nullcontext(), data_seed=0, seed=0,
                           gradient_accumulation_steps=1, world_size=1, per_device_train_batch_size=1,
                           dataloader_num_workers=0, process_index=0, max_steps=1, num_train_epochs=1)
    proc = family_image_processor("llava_next", testing.clip_processor(), SimpleNamespace(image_size=32), PINPOINTS)
    stream, _ = packed_stream_dataset(cfg, tok, proc, RULE, tok.convert_tokens_to_ids("<image>"), args)
    # its lengths are the JSON path's, counted from the sizes kept at conversion: no image file opened, no
    # folder given (before, the headers were looked for under the working directory)
    assert stream.lengths_digest == hashlib.sha256(np.asarray(json_path, dtype=np.int64).tobytes()).hexdigest()
    # shards written before sizes were kept: an AnyRes packed stream asks for a new conversion
    from llava_hydra.data.shards import ShardError
    old = json.loads((tmp_path / "sh" / "index.json").read_text())
    del old["image_sizes"]
    (tmp_path / "sh" / "index.json").write_text(json.dumps(old))
    with pytest.raises(ShardError, match=r"index.json: no image_sizes.jsonl listed .* convert again"):
        packed_stream_dataset(cfg, tok, proc, RULE, tok.convert_tokens_to_ids("<image>"), args)


def test_a_sample_before_any_length_pass_reads_its_own_headers_only(tmp_path, tok):
    records = folder_of_images(tmp_path)
    ds = dataset(tmp_path, tok, records)  # no grouping, no packing: no length pass runs
    assert ds[2]["image_sizes"].tolist() == [[70, 30], [50, 30]]
    assert not (ds.records.folder / "sizes").exists()  # the file's other headers were not read for it
    ds.modality_lengths  # the length pass fills them; the next sample reads them
    assert (ds.records.folder / "sizes").is_dir() and ds[2]["image_sizes"].tolist() == [[70, 30], [50, 30]]
