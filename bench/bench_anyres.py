"""AnyRes data benchmark (issue 26): sample throughput of AnyRes samples and the header pass.

    .venv/bin/python bench/bench_anyres.py                 # writes bench/results/anyres.json
    .venv/bin/python bench/bench_data.py --anyres          # the same
    .venv/bin/python bench/bench_anyres.py --records 50000 --header-images 500   # quicker
    .venv/bin/python bench/bench_anyres.py --only-headers                        # the header pass rows alone

Rows, all in one run:

- Throughput, for three settings: tiny_next (CLIP 32 px, tiny_next's 5 pinpoints), LLaVA-NeXT
  (CLIP-336, the 5 pinpoints 336x672 ... 1008x336, ``anyres``) and OneVision-like (SigLIP-384
  mean/std and bicubic, pinpoints 1x1..6x6 of 384, ``anyres_max_9``). No weights: pixels need
  the processors only. Images are bench_data.py's 400-640 px JPEGs (COCO-sized). Per setting:
  samples/s of ``dataset[i]`` + collate in one process (tokenize + decode + base view and crops +
  collate), our fast path (data/anyres_pixels.py) and our path with the transformers processor;
  then images/s on the same already-decoded images of transformers' image processor called
  directly (``processor(images=[img])``) and of the fast path alone.
- The header pass over --records records (default 665,000) shaped like mix665k, each image record
  naming its own path (``v<k>/../<file>``: the store reads each distinct path once, and real data
  name ~one file per record), the paths leading to --header-images distinct real files (JPEG and 1 in 10 PNG, 64-2000 px a side, some
  portrait; LLaVA-665K names ~624K distinct images, see BENCHMARKS.md for how this extrapolates):
  (a) reading every record's image size from its file header, one process, as the length pass
  does per record (no decoding), (b) the same records' LLaVA-1.5 length pass cold (a fixed run per
  image: no headers read; it runs first and builds the record store), (c) the AnyRes length pass
  cold (no length cache: the image sizes read from the headers into the record store, then render +
  tokenize, one process per core; the reads timed apart), (d) the AnyRes second run (a new dataset
  object: open the record store, its sizes + the length pass from its cache), (d') the AnyRes pass
  again with its length cache deleted (sizes from the store: no header read), and (e) the header reads of the distinct files
  with each file first dropped from the page cache (posix_fadvise DONTNEED after a sync): the
  per-file cost of a header read from disk.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests" / "helpers"))

import bench_data  # noqa: E402
import stand_ins as testing  # noqa: E402
from llava_hydra.config.families import pinpoints_for  # noqa: E402
from llava_hydra.data import anyres_pixels  # noqa: E402
from llava_hydra.data.anyres import anyres_pixels as pixels_of, family_image_processor  # noqa: E402
from llava_hydra.data.dataset import LazySupervisedDataset  # noqa: E402
from llava_hydra.data.image_tokens import ImageTokens  # noqa: E402

TINY_PINPOINTS = [[32, 64], [64, 32], [64, 64], [96, 32], [32, 96]]  # model=tiny_next's


def settings():
    """(name, image processor, token rule, model_max_length) for each row group."""
    import transformers

    siglip = transformers.SiglipImageProcessorPil()  # SigLIP's mean/std (0.5) and bicubic, as so400m-384's
    out = []
    for name, family, tower, crop, patch, base, aspect, pins, max_len in (
            ("tiny_next (CLIP 32 px, 5 pinpoints)", "llava_next", testing.clip_processor(32), 32, 8, 16, "anyres",
             TINY_PINPOINTS, 2048),
            ("LLaVA-NeXT (CLIP-336, 5 pinpoints, anyres)", "llava_next", testing.clip_processor(336), 336, 14, 576,
             "anyres", None, 4096),
            ("OneVision-like (SigLIP-384, 1x1..6x6, anyres_max_9)", "llava_onevision", siglip, 384, 14, 729,
             "anyres_max_9", None, 16384)):
        pinpoints = pinpoints_for(family, pins, crop)
        proc = family_image_processor(family, tower, SimpleNamespace(image_size=crop), pinpoints)
        out.append((name, proc, ImageTokens(base, crop, patch, pinpoints, aspect), max_len))
    return out


def processor_path(on: bool):
    """Force (or stop forcing) the transformers processor in our path."""
    anyres_pixels._CACHE.clear()
    if on:
        anyres_pixels.plan, anyres_pixels._real_plan = (lambda proc: None), anyres_pixels.plan
    elif hasattr(anyres_pixels, "_real_plan"):
        anyres_pixels.plan = anyres_pixels.__dict__.pop("_real_plan")


def throughput_rows(work: Path, tok, n_samples: int, batch_size: int, n_images: int) -> list[dict]:
    from PIL import Image

    recs = [r for r in bench_data.make_records(n_samples * 2, n_images, seed=1) if "image" in r][:n_samples]
    path = work / "anyres.json"
    path.write_text(json.dumps(recs))
    decoded = [Image.open(work / "images" / f"{k:05d}.jpg").convert("RGB") for k in range(n_images)]
    rows = []
    for name, proc, rule, max_len in settings():
        ds = LazySupervisedDataset(path, tok, proc, "v1", image_folder=work / "images", num_image_tokens=rule,
                                   model_max_length=max_len)
        got = {}
        for label, forced in (("our path, fast (torch crops)", False), ("our path, transformers processor", True)):
            processor_path(forced)
            try:
                bench_data.throughput(ds, min(16, len(recs)), batch_size, True)  # warm-up (and the first-image check)
                got[label] = bench_data.throughput(ds, len(recs), batch_size, True)
                print(f"{name}: {anyres_pixels.anyres_pipeline(proc).name}", file=sys.stderr)
            finally:
                processor_path(False)
        views = sum(pixels_of(img, proc)[0].shape[0] for img in decoded) / len(decoded)
        for label, fn in (("transformers image processor called directly", lambda im: proc(images=[im],
                                                                                        return_tensors="pt")),
                          ("fast path alone (anyres_pixels)", anyres_pixels.anyres_pipeline(proc))):
            fn(decoded[0])
            t = time.perf_counter()
            for img in decoded:
                fn(img)
            got[label] = len(decoded) / (time.perf_counter() - t)
        fast, slow = got["our path, fast (torch crops)"], got["our path, transformers processor"]
        rows += [{"what": f"{name}: samples, {label} (tokenize + decode + crops + collate)", "value": round(v, 1),
                  "unit": "samples/s"} for label, v in list(got.items())[:2]]
        rows += [{"what": f"{name}: decoded images ({views:.1f} views each), {label}", "value": round(v, 1),
                  "unit": "images/s"} for label, v in list(got.items())[2:]]
        rows += [{"what": f"{name}: samples, fast / processor path", "value": round(fast / slow, 2), "unit": "x"},
                 {"what": f"{name}: images, fast path / processor called directly",
                  "value": round(got["fast path alone (anyres_pixels)"] /
                                 got["transformers image processor called directly"], 2), "unit": "x"}]
    return rows


def header_images(folder: Path, n: int, seed: int = 3) -> list[str]:
    """n real image files of varied sizes: JPEG, 1 in 10 PNG; returns their names."""
    from PIL import Image, ImageDraw

    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for k in range(n):
        w, h = rng.randint(64, 2000), rng.randint(64, 2000)
        img = Image.new("RGB", (w, h), tuple(rng.randint(0, 255) for _ in range(3)))
        ImageDraw.Draw(img).rectangle([w // 4, h // 4, w // 2, h // 2], fill=(rng.randint(0, 255), 0, 0))
        name = f"{k:06d}.png" if k % 10 == 9 else f"{k:06d}.jpg"
        img.save(folder / name, **({} if name.endswith(".png") else {"quality": 85}))
        names.append(name)
    return names


def drop_from_page_cache(paths) -> None:
    os.sync()
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def header_rows(work: Path, tok, n: int, n_files: int, template: str) -> list[dict]:
    from llava_hydra.data.anyres import header_size, image_size
    from llava_hydra.data.images import ImageSource

    folder = work / "hdr"
    t = time.perf_counter()
    names = header_images(folder, n_files)
    print(f"{n_files} header images written in {time.perf_counter() - t:.1f}s", file=sys.stderr)
    records = bench_data.make_records(n, n_files, seed=2)
    seen: dict[str, int] = {}
    for r in records:  # every record names its own path, as in real data (LLaVA-665K: ~624K distinct files), while
        if "image" in r:  # the reads stay on the same n_files files: the k-th record of a file says "v<k>/../<file>"
            name = names[int(r["image"].split(".")[0])]
            seen[name] = seen.get(name, -1) + 1
            r["image"] = f"v{seen[name]}/../{name}"
    for k in range(max(seen.values(), default=-1) + 1):
        (folder / f"v{k}").mkdir(exist_ok=True)
    big = work / "hdr.json"
    big.write_text(json.dumps(records))
    image_names = [r["image"] for r in records if "image" in r]
    del records
    _, _, rule, max_len = settings()[1]  # LLaVA-NeXT at CLIP-336
    source = ImageSource(folder=folder)
    rows = []

    drop_from_page_cache([folder / nm for nm in names])
    t = time.perf_counter()
    for nm in names:
        header_size(folder / nm)
    cold_files = time.perf_counter() - t
    t = time.perf_counter()
    for nm in image_names:
        image_size(source, nm)
    reads = time.perf_counter() - t
    rows += [{"what": f"header reads of {n_files} distinct files, each first dropped from the page cache, 1 process",
              "value": round(cold_files / n_files * 1e6, 1), "unit": "us/file"},
             {"what": f"header reads for the {len(image_names)} image records of {n} (files in the page cache), "
                      "1 process", "value": round(reads, 2), "unit": "s"},
             {"what": "  the same per image record", "value": round(reads / len(image_names) * 1e6, 1),
              "unit": "us/record"}]

    def length_pass(rule_or_run, cache: Path, label: str) -> tuple[float, float, list]:
        t0 = time.perf_counter()
        ds = LazySupervisedDataset(big, tok, None, template, image_folder=folder, num_image_tokens=rule_or_run,
                                   model_max_length=max_len, cache_dir=cache)
        t1, c1 = time.perf_counter(), bench_data.cpu_seconds()
        got = ds.modality_lengths
        cpu[label] = bench_data.cpu_seconds() - c1  # all processes: robust to other load on the machine
        return t1 - t0, time.perf_counter() - t1, got

    def sizes_fill(label: str):
        """Time the header reads of the next pass into ``fills[label]`` (store_sizes._read, wrapped);
        returns the real function to put back (None for a version without stored sizes)."""
        if store_sizes is None:
            return None
        real = store_sizes._read

        def timed(*a, **k):
            t, c = time.perf_counter(), bench_data.cpu_seconds()
            out = real(*a, **k)
            fills[label] = (time.perf_counter() - t, bench_data.cpu_seconds() - c)
            return out
        store_sizes._read = timed
        return real

    try:
        from llava_hydra.data import store_sizes
    except ImportError:  # a version before stored sizes (for its baseline): every pass reads the headers
        store_sizes = None

    cpu: dict[str, float] = {}
    fills: dict[str, tuple[float, float]] = {}
    cache = work / "cache"  # one cache: one record store, as a LLaVA-1.5 and a NeXT run over the same file share
    opened, fixed_cold, fixed_lengths = length_pass(576, cache, "fixed")  # builds the store: not timed twice
    fixed_cpu = cpu["fixed"]
    drop_from_page_cache([folder / nm for nm in names])  # the pass's first read of each file is from disk
    real = sizes_fill("anyres")
    try:
        _, cold, anyres_lengths = length_pass(rule, cache, "anyres")
    finally:
        if real is not None:
            store_sizes._read = real
    anyres_cpu = cpu["anyres"]
    fill_wall, fill_cpu = fills.get("anyres", (float("nan"), float("nan")))
    t = time.perf_counter()
    _, warm_pass, again = length_pass(rule, cache, "warm")
    warm = time.perf_counter() - t
    assert again == anyres_lengths
    for f in (cache / "lengths").glob("*.npz"):  # the same AnyRes pass again, its length cache gone (as for another
        f.unlink()  # rule, tokenizer or max length): the sizes come from the store, no header is read
    _, other_cold, other_lengths = length_pass(rule, cache, "other")
    assert other_lengths == anyres_lengths
    longer = sum(abs(a) > abs(b) for a, b in zip(anyres_lengths, fixed_lengths))
    rows += [
        {"what": f"open {n} records (build the record store)", "value": round(opened, 2), "unit": "s"},
        {"what": f"AnyRes (NeXT-336) length pass over {n} records, cold: sizes from headers + render + tokenize",
         "value": round(cold, 2), "unit": "s"},
        {"what": "  of which reading the image sizes from headers into the store (first AnyRes pass only), "
                 "wall / CPU", "value": f"{fill_wall:.2f} / {fill_cpu:.1f}", "unit": "s"},
        {"what": "  CPU of that read per image record", "value": round(fill_cpu / len(image_names) * 1e6, 1),
         "unit": "us/record"},
        {"what": f"the AnyRes length pass again, its length cache deleted (as for another rule): sizes from the "
                 f"store", "value": f"{other_cold:.2f} / {cpu['other']:.1f}", "unit": "s wall / CPU"},
        {"what": f"LLaVA-1.5 (576 per image) length pass over the same {n} records, cold: no headers",
         "value": round(fixed_cold, 2), "unit": "s"},
        {"what": "AnyRes cold / LLaVA-1.5 cold", "value": round(cold / fixed_cold, 2), "unit": "x"},
        {"what": "  CPU time of the cold passes (all processes), LLaVA-1.5 / AnyRes",
         "value": f"{fixed_cpu:.1f} / {anyres_cpu:.1f}", "unit": "s"},
        {"what": "  AnyRes with stored sizes / LLaVA-1.5 CPU time", "value": round(cpu["other"] / fixed_cpu, 2),
         "unit": "x"},
        {"what": "  AnyRes / LLaVA-1.5 CPU time", "value": round(anyres_cpu / fixed_cpu, 2), "unit": "x"},
        {"what": "AnyRes second run: open the store + length pass from its cache (warm)", "value": round(warm, 3),
         "unit": "s"},
        {"what": "  of which the length pass from the cache", "value": round(warm_pass, 3), "unit": "s"},
        {"what": "records whose AnyRes length exceeds their LLaVA-1.5 length", "value": longer, "unit": "records"},
    ]
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=665_000, help="records in the header pass")
    parser.add_argument("--header-images", type=int, default=2000, help="distinct image files the records name")
    parser.add_argument("--samples", type=int, default=128, help="samples timed for throughput, per row")
    parser.add_argument("--images", type=int, default=64, help="distinct 400-640 px JPEGs for throughput")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--vocab", type=int, default=8000)
    parser.add_argument("--template", default="v1")
    parser.add_argument("--only-throughput", action="store_true")
    parser.add_argument("--only-headers", action="store_true", help="the header pass rows alone")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "anyres.json")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="bench_anyres_"))
    started = time.perf_counter()
    texts = [bench_data.sentence(random.Random(s), 5, 30) for s in range(20000)] + testing.corpus()
    tok = testing.bpe_tokenizer(work / "tok", vocab_size=args.vocab, texts=texts)
    bench_data.make_images(work / "images", args.images)
    print(f"setup (tokenizer, {args.images} images) {time.perf_counter() - started:.1f}s", file=sys.stderr)
    rows = [] if args.only_headers else throughput_rows(work, tok, args.samples, args.batch_size, args.images)
    if not args.only_throughput:
        rows += header_rows(work, tok, args.records, args.header_images, args.template)
    meta = {"records": args.records, "header_images": args.header_images, "samples": args.samples,
            "batch_size": args.batch_size, "images": args.images, "vocab": args.vocab, "template": args.template}
    bench_data.emit(rows, meta, args.out)


if __name__ == "__main__":
    main()
