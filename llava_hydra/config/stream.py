"""``data.stream``: training from webdataset shards read through fsspec instead of a JSON file and
an image folder (llava_hydra.data.shards writes them, llava_hydra.data.stream reads them)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Optional


@dataclass
class StreamConfig:
    # a shard folder (its index.json) as a local path or an fsspec URL (s3://bucket/prefix, gs://, https://);
    # set: the run streams these shards and data.data_path / data.image_folder are not read for training
    shards: Optional[str] = None
    shuffle_buffer: int = 1000  # samples each DataLoader worker holds to shuffle (1: the shards' order)
    # fsspec's options for the URL's filesystem, e.g. {client_kwargs: {endpoint_url: http://host:9000}}
    # for an S3-compatible server; {anon: true} for a public bucket
    storage_options: Dict[str, Any] = field(default_factory=dict)
    # sort each optimizer step's samples by modality and length among its gradient_accumulation_steps
    # micro-batches (the step stays a random draw of the buffer; LLaVA's grouping, inside a step)
    group_by_length: bool = False


RANGES = {"data.stream.shuffle_buffer": ">= 1"}
