"""Which good sample stands in for a bad one in a shard stream (``data.on_bad_sample=skip``).

The map-style rule (data.stand_in) draws the stand-in uniformly from the *whole* dataset; a stream
can only hand out what its worker has read, so here the draw is uniform over the good samples the
worker holds at that moment and would hand out later anyway, with the same pure function of
(index, epoch, attempt) (``stand_in.draw``), so every process and a resumed run draw alike:

- unpacked (data.stream): the samples in the shuffle buffer when the bad one leaves it
  (``window``: read by then, not yet emitted; up to ``data.stream.shuffle_buffer - 1`` of them);
- packed (sampling.packed_stream): the other samples of its group (its optimizer step's rows on
  this worker), which are read together.

A good sample thus trains once for itself plus once per bad sample near it in the stream that
drew it: uniform within the window, not over the whole data (bad samples clustered in one shard
raise the weight of that shard's neighbours, within a buffer's reach). Only where the window
holds no good sample (a buffer of 1, the worker's very last sample) does the worker's previous
good sample stand in; the skip's log line says which rule applied.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from llava_hydra.data.stand_in import draw

MAX_DRAWS = 64


def window(emit: np.ndarray, t: int, k: int) -> list[int]:
    """Positions (read order) held by a buffer of ``k`` when ``emit[t]`` leaves it, other than it:
    read by then (position < t + k) and emitted later. Sorted, so the draw is a pure function."""
    later = emit[t + 1:]
    return sorted(int(p) for p in later[later < t + k])


def drawn(key: int, epoch: int, items: list) -> Iterator:
    """``items`` in the order to try them as bad sample ``key``'s stand-in: uniform draws
    (``stand_in.draw`` of key, epoch, attempt), without repeats, then the rest in order."""
    n, tried = len(items), set()
    for attempt in range(MAX_DRAWS):
        if len(tried) == n:
            return
        j = draw(key, epoch, attempt, n) if n else 0
        if n and j not in tried:
            tried.add(j)
            yield items[j]
    for j in range(n):
        if j not in tried:
            yield items[j]
