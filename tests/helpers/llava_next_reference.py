"""LLaVA-NeXT's mixture loader, for comparison in tests.

Written from reading LLaVA-VL/LLaVA-NeXT (llava/train/train.py, ``LazySupervisedDataset.__init__``,
the ``data_path.endswith(".yaml")`` branch): each ``json_path`` is read whole, its
``sampling_strategy`` split at ":", ``N%`` turned into ``math.ceil(int(N) * len / 100)`` records,
then ``first`` slices the head, ``end`` the tail and ``random`` shuffles the list in place with
the module-level ``random.shuffle`` and slices the head; the sources' records are concatenated in
order. Not used by the package: the point is an independent second implementation.
"""

from __future__ import annotations

import json
import math
import random

import yaml


def llava_next_records(data_path: str) -> list[dict]:
    with open(data_path) as file:
        datasets = yaml.safe_load(file).get("datasets")
    out = []
    for dataset in datasets:
        json_path = dataset.get("json_path")
        sampling_strategy = dataset.get("sampling_strategy", "all")
        sampling_number = None
        if json_path.endswith(".jsonl"):
            with open(json_path) as f:
                records = [json.loads(line.strip()) for line in f]
        else:
            with open(json_path) as f:
                records = json.load(f)
        if ":" in sampling_strategy:
            sampling_strategy, sampling_number = sampling_strategy.split(":")
            if "%" in sampling_number:
                sampling_number = math.ceil(int(sampling_number.split("%")[0]) * len(records) / 100)
            else:
                sampling_number = int(sampling_number)
        if sampling_strategy == "first" and sampling_number is not None:
            records = records[:sampling_number]
        elif sampling_strategy == "end" and sampling_number is not None:
            records = records[-sampling_number:]
        elif sampling_strategy == "random" and sampling_number is not None:
            random.shuffle(records)
            records = records[:sampling_number]
        out.extend(records)
    return out
