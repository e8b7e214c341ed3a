"""Which sample stands in for a bad one under ``data.on_bad_sample=skip``: a good sample drawn
uniformly, so that no good sample is made more likely than another.

Bad sample ``i`` in epoch ``e`` is replaced by the first good index among the draws
``draw(i, e, 0), draw(i, e, 1), ...``: each a pseudo-random index in ``[0, n)``, uniform, a pure
function of (i, e, attempt) (blake2b of the three). A draw that lands on a bad sample (known, or
found bad when tried) is rejected and the next one taken, so the stand-in is uniform over the good
samples. Consequences a user relies on:

- Fair: in an epoch a good sample trains once for itself plus once per bad sample whose draw it
  is; each bad sample's draw is independent and uniform over the G good ones, so with B bad
  samples a good one's extra count is Binomial(B, 1/G) whatever their positions. 30 bad records in
  a row no longer train the next good one 31 times (the previous rule: ``i+1, i+2, ...``).
- Deterministic and process-independent: whichever rank or DataLoader worker is handed index
  ``i`` picks the same stand-in, so ranks need not agree on anything, a resumed run draws as the
  uninterrupted one did, and every step keeps its size (a bad index is replaced, never dropped).
- Redrawn every epoch (the dataset's ``set_epoch``, called by the trainer at each epoch's start,
  before its DataLoader workers start; persistent workers keep the epoch they started with, and
  their draws stay uniform, only not redrawn). The lengths the sampler and packing plan with give
  a bad index its epoch-0 stand-in's length, so in later epochs a stand-in's length can differ
  from the planned one (a packed row may run that much longer than planned).

After ``MAX_DRAWS`` rejected draws (almost every sample bad) the scan falls back to ``i+1, i+2,
...`` so that a dataset with no good sample is reported as such.
"""

from __future__ import annotations

import hashlib
from collections.abc import Container, Iterator

MAX_DRAWS = 256


def draw(i: int, epoch: int, attempt: int, n: int) -> int:
    """A pseudo-random index in ``[0, n)``, uniform (to 2**-64), a pure function of its arguments."""
    digest = hashlib.blake2b(f"{i}/{epoch}/{attempt}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") % n


def candidates(i: int, epoch: int, n: int, bad: Container[int]) -> Iterator[int]:
    """``i`` itself unless known bad, then its stand-ins in the order to try them. ``bad`` is read
    as the caller adds to it (a candidate found bad when tried is not offered again)."""
    if i not in bad:
        yield i
    for attempt in range(MAX_DRAWS):
        j = draw(i, epoch, attempt, n)
        if j not in bad:
            yield j
    for k in range(1, n + 1):
        j = (i + k) % n
        if j not in bad:
            yield j


def stand_in(i: int, epoch: int, n: int, bad: Container[int]) -> int | None:
    """The first stand-in of bad index ``i`` that is not in ``bad`` (None if every index is)."""
    return next((j for j in candidates(i, epoch, n, bad) if j != i), None)
