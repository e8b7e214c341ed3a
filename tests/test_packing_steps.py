"""training.packing's steps: every optimizer step a random draw of samples packed into its rows
(fair, as an unpacked step), a fixed number of rows every epoch, rows balanced across ranks."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from llava_hydra.sampling.packing_rows import bin_lengths, pack_lengths, pack_rows, packed_epoch, step_counts


def skewed(n=30_000, seed=21):
    """One modality, lognormal (median ~150 tokens, a long tail up to the 2048 capacity)."""
    g = torch.Generator().manual_seed(seed)
    return torch.exp(5 + 1.0 * torch.randn(n, generator=g)).round().clamp(1, 2048).long().tolist()


def step_means(rows_in_order, lengths, per_step):
    """Mean |length| of the samples of each full step (all its rows: every rank's batches)."""
    full = len(rows_in_order) // per_step * per_step
    means, counts = [], []
    for s in range(0, full, per_step):
        members = [j for row in rows_in_order[s:s + per_step] for j in row]
        means.append(sum(abs(lengths[j]) for j in members) / len(members))
        counts.append(len(members))
    return torch.tensor(means, dtype=torch.float64), torch.tensor(counts)


def random_spread(lengths, counts, seeds=range(5)):
    """Std of the per-step mean of random steps holding ``counts[s]`` samples each."""
    pool = torch.tensor(lengths, dtype=torch.float64).abs()
    out = []
    for seed in seeds:
        drawn = pool[torch.randperm(len(pool), generator=torch.Generator().manual_seed(100 + seed))]
        out.append(torch.stack([c.mean() for c in drawn[:int(counts.sum())].split(counts.tolist())]).std().item())
    return sum(out) / len(out)


def test_packed_steps_spread_like_random_draws_unlike_random_steps_of_prepacked_rows():
    lengths = skewed()
    batch_size, world_size = 4, 4  # rows per device, ranks: 16 rows a step
    per_step = batch_size * world_size
    bins, order = packed_epoch(lengths, 2048, batch_size, world_size, seed=3)
    means, counts = step_means([bins[i] for i in order.tolist()], lengths, per_step)
    reference = random_spread(lengths, counts)
    assert 0.8 * reference < means.std().item() < 1.2 * reference
    # the old way, rows packed over the whole data then drawn at random, is not a random draw
    rows = pack_lengths(lengths, 2048, seed=3)
    rows = [rows[i] for i in torch.randperm(len(rows), generator=torch.Generator().manual_seed(3)).tolist()]
    old_means, old_counts = step_means(rows, lengths, per_step)
    assert old_means.std().item() > 1.4 * random_spread(lengths, old_counts)


def contiguous_steps(lengths, bins, order, per_step, seed):
    """How many full steps hold a contiguous run of the epoch's draw (one modality: the draw is
    ``randperm`` of the sample count from ``seed``, as documented), and how many full steps."""
    drawn = torch.randperm(len(lengths), generator=torch.Generator().manual_seed(seed))
    place = torch.empty_like(drawn)
    place[drawn] = torch.arange(len(drawn))
    rows = [bins[i] for i in order.tolist()]
    full = len(rows) // per_step
    contiguous = 0
    for s in range(full):
        spots = sorted(place[j].item() for row in rows[s * per_step:(s + 1) * per_step] for j in row)
        contiguous += spots == list(range(spots[0], spots[0] + len(spots)))
    return contiguous, full


def test_a_step_is_a_contiguous_run_of_the_epochs_draw():
    lengths = skewed(4000, seed=5)
    bins, order = packed_epoch(lengths, 2048, 2, 4, seed=9)
    contiguous, full = contiguous_steps(lengths, bins, order, 2 * 4, seed=9)
    assert contiguous >= full - 2  # all but the last runs, if they had to be packed together


def test_a_fill_above_what_a_step_packs_adds_rows_rather_than_piling_up_at_the_end():
    """Image-like samples (~600-1500 tokens) in steps of 2 ranks x 2 rows of 2048 cannot fill rows
    to 99%: the sampler's count adds rows (a trial epoch) and every step stays a run of the draw;
    with the plain fill count the runs fall behind and the steps are packed together at the end."""
    g = torch.Generator().manual_seed(4)
    lengths = (576 + torch.randint(8, 900, (3000,), generator=g)).tolist()
    _, counts = pack_rows(lengths, 2048, seed=0, fill=0.99)
    more = step_counts(lengths, 2048, 4, seed=0, counts=counts)
    assert more[0] > counts[0]
    bins, order = packed_epoch(lengths, 2048, 2, 2, seed=0, counts=more)
    assert len(bins) == more[0] and sorted(j for b in bins for j in b) == list(range(3000))
    contiguous, full = contiguous_steps(lengths, bins, order, 4, seed=0)
    assert contiguous >= full - 2
    bins, order = packed_epoch(lengths, 2048, 2, 2, seed=0, counts=counts)  # too few rows: a pile-up
    contiguous, full = contiguous_steps(lengths, bins, order, 4, seed=0)
    assert contiguous < full / 2


def test_every_epoch_the_same_number_of_rows_every_sample_once_one_modality_per_step():
    g = torch.Generator().manual_seed(0)
    lengths = (576 + torch.randint(8, 900, (3000,), generator=g)).tolist() + \
        (-torch.randint(20, 2048, (300,), generator=g)).tolist()
    _, counts = pack_rows(lengths, 2048)
    per_step = 3 * 2
    seen = []
    for seed in (0, 1, 2):
        bins, order = packed_epoch(lengths, 2048, 3, 2, seed=seed, counts=counts)
        assert len(bins) == sum(counts) and sorted(order.tolist()) == list(range(len(bins)))
        assert sorted(j for b in bins for j in b) == list(range(len(lengths)))
        signed = bin_lengths(lengths, bins, 2048)
        assert all(0 < abs(x) <= 2048 for x in signed)
        assert all(len({lengths[j] > 0 for j in b}) == 1 for b in bins)
        steps = torch.tensor(signed)[order][:len(order) // per_step * per_step].view(-1, per_step)
        assert ((steps > 0).all(dim=1) | (steps < 0).all(dim=1)).all()  # a full step holds one modality
        seen.append({frozenset(b) for b in bins})
    assert seen[0] != seen[1] != seen[2]


def test_packed_epoch_of_a_665k_like_mix_is_fast_per_step_and_fair():
    """A tenth of the benchmark's mix, 8 ranks x 6 rows of 2048: step efficiency (real tokens /
    (ranks x the slowest rank's padded tokens)) >= 0.85, ranks within 5% of each other on
    average, per-step spread of mean length within 1.2x a random draw's, per modality."""
    sys.path.insert(0, str(Path(__file__).parents[1] / "bench"))
    from bench_sampler import measure, mix665k_like

    lengths = mix665k_like(n_image=62_500, n_text=4_000, seed=0)
    bins, order = packed_epoch(lengths.tolist(), 2048, 6, 8, seed=0)
    stats = measure(order, torch.tensor(bin_lengths(lengths.tolist(), bins, 2048)), 6, 8, lengths, bins)
    assert stats["step_efficiency"] >= 0.85, stats
    assert stats["rank_imbalance_mean"] < 1.05, stats
    assert stats["fairness_image"] < 1.2 and stats["fairness_text"] < 1.2, stats


def test_a_fill_outside_0_1_is_refused_by_name():
    for fill in (0, 1.5):
        with pytest.raises(ValueError, match=r"training.packing_fill.*\(0, 1\]"):
            pack_rows([10, 20, -5], 64, fill=fill)
