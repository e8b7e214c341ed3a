"""Streaming benchmark: samples/s of an epoch read from webdataset shards (a local folder, and
moto's S3 server on localhost through s3fs) against the same records read from a JSON file and an
image folder, each through a DataLoader with --workers workers, and every worker's RSS over the
epoch (at its first and its last batch).

Everything is generated with a fixed seed (bench_data.py's mix665k-like records and 400-640 px
JPEGs, a byte-level BPE tokenizer, a CLIP processor at 336 px, ``pad``):

    .venv/bin/python bench/bench_stream.py                 # writes bench/results/stream.json
    .venv/bin/python bench/bench_stream.py --records 2000 --workers 4

The S3 row needs ``pip install -e ".[stream]"`` (s3fs, moto's server); without it, it is left out.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "helpers"))
sys.path.insert(0, str(ROOT / "bench"))

import stand_ins as testing  # noqa: E402
from bench_data import make_images, make_records, rss_kb  # noqa: E402
from llava_hydra.data.dataset import DataCollator, LazySupervisedDataset  # noqa: E402


class Reporting:
    """Collate, then hand back (pid, RSS in kB, samples) instead of the batch (what we measure is
    the work of making it in the worker; the tensors would only be copied back)."""

    def __init__(self, pad_id: int):
        self.collate = DataCollator(pad_id)

    def __call__(self, samples):
        self.collate(samples)
        return os.getpid(), rss_kb()["VmRSS"], len(samples)


def epoch(loader) -> dict:
    first, last, n = {}, {}, 0
    started = time.perf_counter()
    for item in loader:
        pid, rss, k = item
        first.setdefault(pid, rss)
        last[pid] = rss
        n += k
    seconds = time.perf_counter() - started
    return {"samples": n, "seconds": seconds, "samples_per_s": n / seconds,
            "worker_rss_mb": [[first[p] / 1024, last[p] / 1024] for p in sorted(first)]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--records", type=int, default=1200)
    p.add_argument("--images", type=int, default=600)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--samples-per-shard", type=int, default=200)
    p.add_argument("--buffer", type=int, default=1000)
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "stream.json"))
    a = p.parse_args()
    import torch

    from llava_hydra.data.shards import convert
    from llava_hydra.data.stream import ShardStream
    from llava_hydra.train.stream_loader import StreamLoader

    tmp = Path(tempfile.mkdtemp(prefix="bench_stream_"))
    make_images(tmp / "images", a.images)
    (tmp / "data.json").write_text(json.dumps(make_records(a.records, a.images)))
    tok = testing.bpe_tokenizer(tmp / "tok", vocab_size=600)
    proc = testing.clip_processor(336)
    started = time.perf_counter()
    index = convert(tmp / "data.json", tmp / "images", tmp / "shards", a.samples_per_shard)
    convert_s = time.perf_counter() - started

    def encoder(records=None):
        return LazySupervisedDataset(tmp / "data.json", tok, proc, "v1", image_folder=tmp / "images",
                                     image_aspect_ratio="pad", num_image_tokens=576, cache_dir=tmp / "cache",
                                     records=records)

    rows = []
    folder = encoder()
    loader = torch.utils.data.DataLoader(folder, batch_size=a.batch_size, shuffle=True, num_workers=a.workers,
                                         collate_fn=Reporting(tok.pad_token_id))
    rows.append({"what": "JSON + image folder (map-style, random order)", **epoch(loader)})

    def stream_row(what, url, options=None):
        ds = ShardStream(url, encoder(records={}), Reporting(tok.pad_token_id), a.batch_size,
                         shuffle_buffer=a.buffer, storage_options=options)
        loader = StreamLoader(ds, batch_size=None, num_workers=a.workers)
        rows.append({"what": what, **epoch(_flat_reports(loader))})

    stream_row("shards, local folder", str(tmp / "shards"))
    try:
        import boto3
        import moto.server  # noqa: F401
        import s3fs
    except ImportError:
        print("S3 row left out: pip install -e '.[stream]' (s3fs, moto[server])")
    else:
        from launching import free_port

        port = free_port()
        server = subprocess.Popen([sys.executable, "-m", "moto.server", "-p", str(port)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            time.sleep(3)
            url = f"http://127.0.0.1:{port}"
            boto3.client("s3", endpoint_url=url, aws_access_key_id="x", aws_secret_access_key="x",
                         region_name="us-east-1").create_bucket(Bucket="bench")
            options = {"key": "x", "secret": "x", "client_kwargs": {"endpoint_url": url, "region_name": "us-east-1"}}
            s3fs.S3FileSystem(**options).put(str(tmp / "shards") + "/", "bench/shards/", recursive=True)
            stream_row("shards, moto S3 server on localhost (s3fs)", "s3://bench/shards", options)
        finally:
            server.terminate()
            server.wait(timeout=30)
    size = sum(s["bytes"] for s in index["shards"])
    print(f"{a.records} records ({a.images} JPEGs 400-640 px), CLIP 336 pad, batch {a.batch_size}, {a.workers} workers, "
          f"buffer {a.buffer}; {len(index['shards'])} shards, {size / 1e6:.1f} MB, converted in {convert_s:.1f} s")
    for r in rows:
        rss = ", ".join(f"{f:.0f}->{l:.0f}" for f, l in r["worker_rss_mb"])
        print(f"{r['what']:<48} {r['samples_per_s']:8.1f} samples/s  ({r['samples']} in {r['seconds']:.1f} s)  "
              f"worker RSS MB first->last batch: {rss}")
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(a), "convert_s": convert_s, "shard_bytes": size, "rows": rows}, indent=1))
    print(f"wrote {out}")


def _flat_reports(loader):
    yield from loader  # StreamLoader flattens groups: one report per micro-batch


if __name__ == "__main__":
    main()
