"""One rank of a streamed epoch under torchrun, no training: reads shards at argv[1] (a path or
s3:// URL; STORAGE_OPTIONS a JSON of fsspec options) through the trainer's StreamLoader with
WORKERS DataLoader workers for EPOCHS epochs and writes {epoch: [[sample index, ...] per
micro-batch]} to argv[2]/rank<R>.json (PACK=<capacity>: packed rows, [[[index, ...] per row] per
micro-batch]). The tokenizer is the one saved at argv[3]."""

import json
import os
import sys
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).parent))
import stand_ins as testing  # noqa: E402

from llava_hydra.data.dataset import LazySupervisedDataset  # noqa: E402
from llava_hydra.data.stream import ShardStream  # noqa: E402
from llava_hydra.data.tokenizer import load_tokenizer  # noqa: E402
from llava_hydra.train.stream_loader import stream_loader  # noqa: E402


def indices(samples):
    return [s["index"] for s in samples]


url, out, tok = sys.argv[1], Path(sys.argv[2]), load_tokenizer(sys.argv[3], 2048)
rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
encoder = LazySupervisedDataset("shards", tok, testing.clip_processor(), "v1", image_aspect_ratio="pad",
                                num_image_tokens=4, records={})
options = json.loads(os.environ.get("STORAGE_OPTIONS", "{}"))
if os.environ.get("PACK"):  # PACK=<capacity>: packed rows (llava_hydra.sampling.packed_stream); a row's keys in order
    from llava_hydra.data.shards import read_index, read_records
    from llava_hydra.sampling.packed_stream import PackedShardStream

    records = read_records(url, options, read_index(url, options)[0])[1]
    lengths = LazySupervisedDataset("records", tok, testing.clip_processor(), "v1", image_aspect_ratio="pad",
                                    num_image_tokens=4, records=records).modality_lengths
    stream = PackedShardStream(url, encoder, lambda rows: [r["index"].tolist() for r in rows], lengths,
                               batch_size=int(os.environ.get("BATCH", 2)), rank=rank, world=world, seed=3,
                               shuffle_buffer=int(os.environ.get("BUFFER", 5)), group=int(os.environ.get("GROUP", 1)),
                               workers=int(os.environ.get("WORKERS", 2)), capacity=int(os.environ["PACK"]),
                               epochs=int(os.environ.get("EPOCHS", 2)), storage_options=options)
else:
    stream = ShardStream(url, encoder, indices, batch_size=int(os.environ.get("BATCH", 2)), rank=rank, world=world,
                         seed=3, shuffle_buffer=int(os.environ.get("BUFFER", 5)), storage_options=options)
args = SimpleNamespace(dataloader_num_workers=int(os.environ.get("WORKERS", 2)), dataloader_prefetch_factor=2,
                       dataloader_pin_memory=False, dataloader_multiprocessing_context=None)
loader = stream_loader(stream, args)
seen = {}
for epoch in range(int(os.environ.get("EPOCHS", 2))):
    loader.set_epoch(epoch)
    seen[epoch] = [batch for batch in loader]
    assert len(seen[epoch]) == len(loader), (len(seen[epoch]), len(loader))
out.mkdir(parents=True, exist_ok=True)
(out / f"rank{rank}.json").write_text(json.dumps(seen))
