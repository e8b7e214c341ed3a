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
and for the length pass: reading the JSON, the first (cold) pass that renders and tokenizes
every record in Rust batches, and a second run that reads the cache.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from llava_hydra.data import testing  # noqa: E402
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=665_000, help="records in the length pass")
    parser.add_argument("--samples", type=int, default=256, help="samples timed for throughput")
    parser.add_argument("--images", type=int, default=64, help="distinct image files generated")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--vocab", type=int, default=8000)
    parser.add_argument("--template", default="v1")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "data.json")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench_data_"))
    started = time.perf_counter()
    texts = [sentence(random.Random(s), 5, 30) for s in range(20000)] + testing.corpus()
    tok = testing.bpe_tokenizer(work / "tok", vocab_size=args.vocab, texts=texts)
    processor = testing.clip_processor(336)
    make_images(work / "images", args.images)
    print(f"setup (tokenizer, {args.images} images) {time.perf_counter() - started:.1f}s", file=sys.stderr)

    rows = []
    small = make_records(args.samples * 2, args.images, seed=1)
    image_recs = [r for r in small if "image" in r][: args.samples]
    text_recs = [r for r in small if "image" not in r]
    text_recs = (text_recs * (args.samples // max(len(text_recs), 1) + 1))[: args.samples]
    for name, recs, with_images in (("image samples (tokenize + load + pad + CLIP 336 + collate)", image_recs, True),
                                    ("text-only samples (tokenize + mask + collate)", text_recs, False)):
        path = work / f"{'img' if with_images else 'txt'}.json"
        path.write_text(json.dumps(recs))
        ds = LazySupervisedDataset(path, tok, processor, args.template, image_folder=work / "images",
                                   image_aspect_ratio="pad", num_image_tokens=576)
        throughput(ds, min(16, len(recs)), args.batch_size, with_images)  # warm-up
        rows.append({"what": name, "value": round(throughput(ds, len(recs), args.batch_size, with_images), 1),
                     "unit": "samples/s"})

    records = make_records(args.records, args.images, seed=2)
    big = work / "big.json"
    big.write_text(json.dumps(records))
    size_mb = big.stat().st_size / 2**20
    del records
    cache = work / "cache"
    t0 = time.perf_counter()
    ds = LazySupervisedDataset(big, tok, processor, args.template, image_folder=work / "images",
                               num_image_tokens=576, cache_dir=cache)
    t1 = time.perf_counter()
    lengths = ds.modality_lengths
    t2 = time.perf_counter()
    ds2 = LazySupervisedDataset(big, tok, processor, args.template, image_folder=work / "images",
                                num_image_tokens=576, cache_dir=cache)
    t3 = time.perf_counter()
    assert ds2.modality_lengths == lengths
    t4 = time.perf_counter()
    n = len(lengths)
    rows += [
        {"what": f"read {n} records ({size_mb:.0f} MB JSON) + content hash", "value": round(t1 - t0, 2), "unit": "s"},
        {"what": f"length pass over {n} records, cold (render + Rust batch tokenize)", "value": round(t2 - t1, 2),
         "unit": "s"},
        {"what": f"length pass over {n} records, second run (cache)", "value": round(t4 - t3, 3), "unit": "s"},
    ]
    width = max(len(r["what"]) for r in rows)
    print(f"{'':<{width}}  {'value':>10}  unit")
    for r in rows:
        print(f"{r['what']:<{width}}  {r['value']:>10}  {r['unit']}")
    meta = {"records": n, "samples": args.samples, "batch_size": args.batch_size, "vocab": args.vocab,
            "template": args.template, "image_size": 336, "num_image_tokens": 576,
            "median_abs_length": sorted(abs(v) for v in lengths)[n // 2],
            "text_only": sum(v < 0 for v in lengths)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"rows": rows, "meta": meta}, indent=1))
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
