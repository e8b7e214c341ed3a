"""Data benchmark: sample throughput and the time of the length pass over 665K records.

Everything is generated here with a fixed seed (no download): a byte-level BPE tokenizer of
--vocab tokens trained on the generated text, a CLIP image processor at 336 px (LLaVA-1.5's),
JPEG photos-sized images (400-640 px a side, not square, so ``pad`` has work to do) and
LLaVA-format records shaped like mix665k (~94% image samples with 1-6 question/answer rounds,
~6% longer text-only chats).

    .venv/bin/python bench/bench_data.py                     # writes bench/results/data.json
    .venv/bin/python bench/bench_data.py --records 50000     # a quicker length pass

Rows: samples/s of ``dataset[i]`` + collate in one process (tokenize + mask, image open +
EXIF + pad + CLIP processing, collate into batches of --batch-size), the same without images,
for the length pass: reading the JSON, the first (cold) pass that renders and tokenizes
every record in Rust batches, and a second run that reads the cache -- each for the old path
(list of dicts, one process) and the new one (memory-mapped record store, the pass in one
process per core); and the memory of reading every record once through a DataLoader with
--workers worker processes: each process's growth in anonymous (private) RSS and its total
RSS, old list-of-dicts path vs record store.
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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "helpers"))  # local stand-ins for hub tokenizers

import stand_ins as testing  # noqa: E402
from llava_hydra.data.dataset import DataCollator, LazySupervisedDataset  # noqa: E402

QUESTIONS = ("What is the man doing?", "What color is the bus?", "How many people are in the picture?",
             "Describe the image in detail.", "What is written on the sign?", "Is the dog on the left?")


def sentence(rng: random.Random, lo: int, hi: int) -> str:
    return " ".join(rng.choice(testing.WORDS) for _ in range(rng.randint(lo, hi))).capitalize() + "."


def make_records(n: int, n_images: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    records = []
    for k in range(n):
        if rng.random() < 0.06:  # ShareGPT-like text-only chat
            conv = []
            for _ in range(rng.randint(1, 4)):
                conv += [{"from": "human", "value": sentence(rng, 10, 60)},
                         {"from": "gpt", "value": " ".join(sentence(rng, 10, 30) for _ in range(rng.randint(2, 8)))}]
            records.append({"id": f"text-{k}", "conversations": conv})
            continue
        conv = []
        for r in range(rng.choice((1, 1, 2, 3, 4, 6))):
            q = rng.choice(QUESTIONS) + (" " + sentence(rng, 0, 8) if rng.random() < 0.3 else "")
            if r == 0:
                q = f"<image>\n{q}" if rng.random() < 0.5 else f"{q}\n<image>"
            a = sentence(rng, 1, 4) if rng.random() < 0.6 else " ".join(sentence(rng, 8, 20) for _ in range(3))
            conv += [{"from": "human", "value": q}, {"from": "gpt", "value": a}]
        records.append({"id": f"img-{k}", "image": f"{k % n_images:05d}.jpg", "conversations": conv})
    return records


def make_images(folder: Path, n: int, seed: int = 0) -> None:
    from PIL import Image, ImageDraw

    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(n):
        w, h = rng.randint(400, 640), rng.randint(400, 640)
        img = Image.new("RGB", (w, h), tuple(rng.randint(0, 255) for _ in range(3)))
        d = ImageDraw.Draw(img)
        for _ in range(20):
            x, y = rng.randint(0, w), rng.randint(0, h)
            d.ellipse([x, y, x + rng.randint(10, 200), y + rng.randint(10, 200)],
                      fill=tuple(rng.randint(0, 255) for _ in range(3)))
        img.save(folder / f"{k:05d}.jpg", quality=90)


def throughput(ds, n: int, batch_size: int, with_images: bool) -> float:
    collate = DataCollator(ds.tokenizer.pad_token_id)
    if not with_images:
        ds.image_folder = Path("/nonexistent")  # never opened: text-only records below
    order = list(range(n))
    started = time.perf_counter()
    for lo in range(0, n, batch_size):
        collate([ds[i] for i in order[lo:lo + batch_size]])
    return n / (time.perf_counter() - started)


def rss_kb() -> dict:
    """This process's resident memory from /proc (Linux), in kB: total RSS and the private pages
    (Private_Dirty: pages written by this process alone, e.g. fork's pages once copied; the
    store's memory-mapped file pages are clean and shared through the page cache)."""
    fields = {}
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("Rss", "Private_Clean", "Private_Dirty"):
            fields[key] = int(value.split()[0])
    return {"VmRSS": fields["Rss"], "RssAnon": fields["Private_Dirty"]}


class _Touch:
    """Map-style dataset over record indices: reads record i (the collate reports pid + RSS)."""

    def __init__(self, records):
        self.records = records

    def __len__(self):
        return len(self.records)

    def __getitem__(self, i):
        r = self.records[i]
        return len(r.get("conversations", ())) if isinstance(r, dict) else 0


def _report(batch):
    import os

    return os.getpid(), rss_kb(), sum(batch)


def epoch_memory(make_records, workers: int) -> dict:
    """Memory growth of main + workers when every record is read once through a DataLoader."""
    import gc
    import os

    import datasets  # noqa: F401  (imported before the baseline: not counted as records)
    import torch

    gc.collect()
    base = rss_kb()
    records = make_records()
    loaded = rss_kb()
    loader = torch.utils.data.DataLoader(_Touch(records), batch_size=1024, num_workers=workers,
                                         collate_fn=_report)
    last: dict[int, dict] = {}
    for pid, rss, _ in loader:
        last[pid] = rss
    per_worker = sorted(last.items())
    out = {"main_anon_mb": (loaded["RssAnon"] - base["RssAnon"]) / 1024,
           "main_rss_mb": (loaded["VmRSS"] - base["VmRSS"]) / 1024,
           # a worker forks from main after the records are open: its private pages at the end of the
           # epoch are what it copied (touched objects) or made; the store's file pages stay shared
           "workers_anon_mb": [r["RssAnon"] / 1024 for _, r in per_worker],
           "workers_rss_mb": [r["VmRSS"] / 1024 for _, r in per_worker], "main_pid": os.getpid()}
    del loader, records
    gc.collect()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=665_000, help="records in the length pass")
    parser.add_argument("--samples", type=int, default=256, help="samples timed for throughput")
    parser.add_argument("--images", type=int, default=64, help="distinct image files generated")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=4, help="DataLoader workers in the memory row")
    parser.add_argument("--vocab", type=int, default=8000)
    parser.add_argument("--template", default="v1")
    parser.add_argument("--big", type=Path, help="the --records file: generated here if missing, else reused")
    parser.add_argument("--only-images", action="store_true", help="only the throughput rows")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "data.json")
    parser.add_argument("--anyres", nargs=argparse.REMAINDER, help="the AnyRes rows instead: bench_anyres.py's "
                        "(crops samples/s vs the transformers processor, the header pass); its own options follow")
    args = parser.parse_args()
    if args.anyres is not None:
        import bench_anyres  # bench/ is on sys.path when this file runs as a script

        return bench_anyres.main(args.anyres)

    work = Path(tempfile.mkdtemp(prefix="bench_data_"))
    started = time.perf_counter()
    texts = [sentence(random.Random(s), 5, 30) for s in range(20000)] + testing.corpus()
    tok = testing.bpe_tokenizer(work / "tok", vocab_size=args.vocab, texts=texts)
    processor = testing.clip_processor(336)
    make_images(work / "images", args.images)
    print(f"setup (tokenizer, {args.images} images) {time.perf_counter() - started:.1f}s", file=sys.stderr)

    rows = []
    from llava_hydra.data import pixels

    small = make_records(args.samples * 2, args.images, seed=1)
    image_recs = [r for r in small if "image" in r][: args.samples]
    text_recs = [r for r in small if "image" not in r]
    text_recs = (text_recs * (args.samples // max(len(text_recs), 1) + 1))[: args.samples]
    for name, recs, with_images, path_name in (
            ("image samples, old path (PIL processor, full decode) (tokenize + load + pad + CLIP 336 + collate)",
             image_recs, True, "old"),
            ("image samples, new path (torch resize, JPEG draft) (tokenize + load + pad + CLIP 336 + collate)",
             image_recs, True, "new"),
            ("text-only samples (tokenize + mask + collate)", text_recs, False, "new")):
        path = work / f"{'img' if with_images else 'txt'}.json"
        path.write_text(json.dumps(recs))
        ds = LazySupervisedDataset(path, tok, processor, args.template, image_folder=work / "images",
                                   image_aspect_ratio="pad", num_image_tokens=576)
        pixels._CACHE.clear()
        real_plan, real_draft = pixels._plan, pixels.Pipeline.draft_size
        if path_name == "old":  # today's path before issue 14.4: the processor on the fully decoded image
            pixels._plan, pixels.Pipeline.draft_size = (lambda proc: None), (lambda self, aspect: None)
        try:
            throughput(ds, min(16, len(recs)), args.batch_size, with_images)  # warm-up
            value = throughput(ds, len(recs), args.batch_size, with_images)
            if with_images:
                print(f"{path_name}: {pixels.pipeline(processor).name}", file=sys.stderr)
        finally:
            pixels._plan, pixels.Pipeline.draft_size = real_plan, real_draft
            pixels._CACHE.clear()
        rows.append({"what": name, "value": round(value, 1), "unit": "samples/s"})
    old_img, new_img = rows[0]["value"], rows[1]["value"]
    rows.append({"what": "image samples: new / old", "value": round(new_img / old_img, 2), "unit": "x"})
    if args.only_images:
        return emit(rows, {"samples": args.samples, "batch_size": args.batch_size, "image_size": 336}, args.out)

    big = args.big or work / "big.json"
    if not big.exists():  # --big: generated once, reused by later runs (same seed, same records)
        big.write_text(json.dumps(make_records(args.records, args.images, seed=2)))
    size_mb = big.stat().st_size / 2**20
    from llava_hydra.data import lengths as lengths_mod
    from llava_hydra.data.records import load_records
    from llava_hydra.data.store import open_records

    n = args.records
    for name, path_name in (("old: list of dicts", None), ("new: record store", "store")):
        cache = work / "mem-cache"
        if path_name:
            open_records(big, cache)  # built once, as the first rank does
            # written back before measuring: smaps counts a mapped page of a file not yet written to
            # disk as Private_Dirty in every process that reads it (it is the page cache's, not theirs)
            os.sync()
        mem = epoch_memory((lambda: open_records(big, cache)[0]) if path_name else (lambda: load_records(big)[0]),
                           args.workers)
        rows.append({"what": f"{name}: {n} records, main process RSS growth (private / total)",
                     "value": f"{mem['main_anon_mb']:.0f} / {mem['main_rss_mb']:.0f}", "unit": "MB"})
        rows.append({"what": f"{name}: each of {args.workers} DataLoader workers after an epoch, private memory",
                     "value": " ".join(f"{v:.0f}" for v in mem["workers_anon_mb"]), "unit": "MB"})
        rows.append({"what": f"{name}: each of {args.workers} DataLoader workers after an epoch, total RSS",
                     "value": " ".join(f"{v:.0f}" for v in mem["workers_rss_mb"]), "unit": "MB"})

    lengths = None
    for name, store, procs in (("old (list, 1 process)", False, 1), ("new (store, 1 process per core)", True, None)):
        cache = work / f"cache-{int(store)}"
        real = lengths_mod.compute
        lengths_mod.compute = lambda *a, _p=procs, **k: real(*a, num_proc=_p, **k)
        try:
            t0 = time.perf_counter()
            ds = LazySupervisedDataset(big, tok, processor, args.template, image_folder=work / "images",
                                       num_image_tokens=576, cache_dir=cache if store else None)
            if not store:
                ds.cache_dir = cache  # the length cache as before: records as a list
            t1, c1 = time.perf_counter(), cpu_seconds()
            got = ds.modality_lengths
            t2, c2 = time.perf_counter(), cpu_seconds()
            ds2 = LazySupervisedDataset(big, tok, processor, args.template, image_folder=work / "images",
                                        num_image_tokens=576, cache_dir=cache if store else None)
            if not store:
                ds2.cache_dir = cache
            t3 = time.perf_counter()
            assert ds2.modality_lengths == got
            t4 = time.perf_counter()
        finally:
            lengths_mod.compute = real
        assert lengths is None or got == lengths
        lengths = got
        opened = "build record store + content hash" if store else "content hash + parse JSON"
        rows += [
            {"what": f"{name}: open {n} records ({size_mb:.0f} MB JSON): {opened}", "value": round(t1 - t0, 2),
             "unit": "s"},
            {"what": f"{name}: length pass over {n} records, cold", "value": round(t2 - t1, 2), "unit": "s"},
            {"what": f"{name}: length pass over {n} records, cold, CPU time (all processes and threads)",
             "value": round(c2 - c1, 2), "unit": "s"},
            {"what": f"{name}: second run: open records + length pass from the cache", "value": round(t4 - t2, 3),
             "unit": "s"},
        ]
    rows += tokenizer_floor(ds, tok)
    meta = {"records": n, "samples": args.samples, "batch_size": args.batch_size, "vocab": args.vocab,
            "template": args.template, "image_size": 336, "num_image_tokens": 576,
            "median_abs_length": sorted(abs(v) for v in lengths)[n // 2],
            "text_only": sum(v < 0 for v in lengths)}
    emit(rows, meta, args.out)


def cpu_seconds() -> float:
    """User + system CPU time of this process (all its threads) and of its waited-for children."""
    import resource

    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def tokenizer_floor(ds, tok) -> list[dict]:
    """The Rust tokenizer alone on the exact pieces the length pass tokenizes (rendered beforehand,
    not timed), in one thread: its CPU time is what no exact length pass can go below, and that
    divided by the cores is the least wall time (the passes' CPU rows compare with it)."""
    import os

    from llava_hydra.data.conversation import IMAGE_TOKEN
    from llava_hydra.data.labels import chunks

    pieces = []
    for i in range(len(ds)):
        text = ds.prepare(i)[0].text
        pieces += [p for _, p in chunks(text)] if IMAGE_TOKEN in text else [text]
    before = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one thread: CPU time without spinning helpers
    try:
        c = cpu_seconds()
        for lo in range(0, len(pieces), 4096):  # batches as the pass makes them (not 1M Encodings alive)
            tok.backend_tokenizer.encode_batch_fast(pieces[lo:lo + 4096], add_special_tokens=True)
        used = cpu_seconds() - c
    finally:
        os.environ.pop("TOKENIZERS_PARALLELISM") if before is None else os.environ.update(
            TOKENIZERS_PARALLELISM=before)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    what = f"floor: the Rust tokenizer alone on the {len(pieces)} pieces of {len(ds)} records (encode_batch_fast)"
    return [{"what": what + ", CPU time", "value": round(used, 2), "unit": "s"},
            {"what": f"floor: the same as wall time on {cores} cores (CPU time / cores)",
             "value": round(used / cores, 2), "unit": "s"}]


def emit(rows: list[dict], meta: dict, out: Path) -> None:
    width = max(len(r["what"]) for r in rows)
    print(f"{'':<{width}}  {'value':>10}  unit")
    for r in rows:
        print(f"{r['what']:<{width}}  {r['value']:>10}  {r['unit']}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"rows": rows, "meta": meta}, indent=1))
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
