"""LengthGroupedSampler and LLaVA's index functions: permutation, modality purity, rank
balance, determinism per seed and epoch, and LLaVA's exact order (by hand and against a
straightforward re-implementation of LLaVA's published algorithm)."""

from __future__ import annotations

import random

import pytest
import torch

from llava_hydra.sampling.sampler import (
    LengthGroupedSampler,
    get_length_grouped_indices,
    get_modality_length_grouped_indices,
    split_to_even_chunks,
)

MODES = ("random_steps", "llava", "sorted_steps")


# -- a straightforward re-implementation of LLaVA's llava_trainer.py, list by list ---------------

def ref_split(indices, lengths, num_chunks):
    if len(indices) % num_chunks != 0:
        return [indices[i::num_chunks] for i in range(num_chunks)]
    per_chunk = len(indices) // num_chunks
    chunks = [[] for _ in range(num_chunks)]
    totals = [0] * num_chunks
    for index in indices:
        lightest = totals.index(min(totals))
        chunks[lightest].append(index)
        totals[lightest] += lengths[index]
        if len(chunks[lightest]) == per_chunk:
            totals[lightest] = float("inf")
    return chunks


def ref_length_grouped(lengths, batch_size, world_size, generator=None):
    perm = torch.randperm(len(lengths), generator=generator).tolist()
    size = batch_size * world_size
    out = []
    for start in range(0, len(lengths), size):
        mb = sorted(perm[start:start + size], key=lambda i: lengths[i], reverse=True)
        for chunk in ref_split(mb, lengths, world_size):
            out += chunk
    return out


def ref_modality_grouped(lengths, batch_size, world_size, generator=None):
    if all(n > 0 for n in lengths) or all(n < 0 for n in lengths):
        return ref_length_grouped(lengths, batch_size, world_size, generator)
    mm = [i for i, n in enumerate(lengths) if n > 0]
    lang = [i for i, n in enumerate(lengths) if n < 0]
    mm_order = [mm[i] for i in ref_length_grouped([lengths[i] for i in mm], batch_size, world_size)]
    lang_order = [lang[i] for i in ref_length_grouped([-lengths[i] for i in lang], batch_size, world_size)]
    size = batch_size * world_size
    mm_mbs = [mm_order[i:i + size] for i in range(0, len(mm_order), size)]
    lang_mbs = [lang_order[i:i + size] for i in range(0, len(lang_order), size)]
    megabatches = mm_mbs[:-1] + lang_mbs[:-1]
    megabatches = [megabatches[i] for i in torch.randperm(len(megabatches), generator=generator).tolist()]
    megabatches.append(sorted(mm_mbs[-1] + lang_mbs[-1]))
    return [i for mb in megabatches for i in mb]


# -- helpers --------------------------------------------------------------------------------------

def mix(n, seed=0, text_fraction=0.1):
    """Signed lengths like LLaVA's modality_lengths: images 576 + lognormal text, text-only < 0."""
    rng = random.Random(seed)
    return [-rng.randint(20, 2048) if rng.random() < text_fraction else 576 + int(rng.lognormvariate(5, 0.6))
            for _ in range(n)]


def batches(order, batch_size):
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def is_mixed(batch, lengths):
    return len({lengths[i] > 0 for i in batch}) > 1


def step_ratios(order, lengths, batch_size, world_size):
    """Per full step (world_size per-device batches): max / min of the batches' total length."""
    size = batch_size * world_size
    ratios = []
    for start in range(0, len(order) - size + 1, size):
        totals = [sum(abs(lengths[i]) for i in b) for b in batches(order[start:start + size], batch_size)]
        ratios.append(max(totals) / min(totals))
    return ratios


# -- LLaVA mode ------------------------------------------------------------------------------------

def test_split_to_even_chunks_by_hand():
    lengths = [10, 9, 8, 3, 2, 1]
    # 3 per chunk; totals start [0, 0]: 0 -> c0 (first minimum) [10, 0]; 1 -> c1 [10, 9];
    # 2 -> c1 [10, 17]; 3 -> c0 [13, 17]; 4 -> c0 [15, 17], c0 full; 5 -> c1.
    assert split_to_even_chunks([0, 1, 2, 3, 4, 5], lengths, 2) == [[0, 3, 4], [1, 2, 5]]
    # a count that does not divide falls back to a strided split
    assert split_to_even_chunks([0, 1, 2, 3, 4], lengths, 2) == [[0, 2, 4], [1, 3]]


def test_llava_worked_example_by_hand():
    lengths = [5, -3, 8, 2, -7, 6, 1, -4, 9, -2, 3, -6]  # 7 image samples, 5 text-only; batch 2, world 2
    torch.manual_seed(0)
    draws = [torch.randperm(7).tolist(), torch.randperm(5).tolist(), torch.randperm(2).tolist()]
    assert draws == [[4, 0, 5, 3, 2, 6, 1], [2, 4, 3, 1, 0], [1, 0]]  # torch's CPU generator, seed 0
    # image samples: indices (0,2,3,5,6,8,10), lengths (5,8,2,6,1,9,3); local perm [4,0,5,3,2,6,1]
    #   megabatch [4,0,5,3] lengths 1,5,9,6 -> sorted 5(9),3(6),0(5),4(1)
    #     greedy: 5->c0 [9,0]; 3->c1 [9,6]; 0->c1 [9,11] full; 4->c0  => [5,4],[3,0]
    #   megabatch [2,6,1] lengths 8,3,8 -> sorted (stable) 2,1,6; 3 % 2 != 0 -> strided [2,6],[1]
    #   local [5,4,3,0,2,6,1] -> global [8,6,5,0,3,10,2]; megabatches [8,6,5,0] | last [3,10,2]
    # text-only: indices (1,4,7,9,11), lengths (3,7,4,2,6); local perm [2,4,3,1,0]
    #   megabatch [2,4,3,1] lengths 4,6,2,7 -> sorted 1(7),4(6),2(4),3(2)
    #     greedy: 1->c0 [7,0]; 4->c1 [7,6]; 2->c1 [7,10] full; 3->c0  => [1,3],[4,2]
    #   megabatch [0] -> strided [0],[]
    #   local [1,3,4,2,0] -> global [4,9,11,7,1]; megabatches [4,9,11,7] | last [1]
    # full megabatches [[8,6,5,0],[4,9,11,7]] shuffled by [1,0]; then sorted([3,10,2]+[1])
    expected = [4, 9, 11, 7, 8, 6, 5, 0, 1, 2, 3, 10]
    torch.manual_seed(0)
    assert get_modality_length_grouped_indices(lengths, 2, 2) == expected
    # the sampler's llava mode draws the same three permutations from its seed + epoch generator
    assert list(LengthGroupedSampler(2, 2, lengths, group_by_modality=True, mode="llava", seed=0)) == expected


@pytest.mark.parametrize("trial", range(40))
def test_llava_functions_equal_reference(trial):
    rng = random.Random(trial)
    n, batch_size, world_size = rng.randint(1, 200), rng.randint(1, 4), rng.randint(1, 4)
    lengths = [rng.choice((-1, 1)) * rng.randint(1, 12) for _ in range(n)]  # many ties
    if trial % 5 == 0:
        lengths = [abs(x) for x in lengths]  # one modality: LLaVA's shortcut
    if trial % 5 == 1:
        lengths = [-abs(x) for x in lengths]  # text-only: the shortcut sorts the negative lengths
    if trial % 7 == 0:
        lengths = [x + 0.5 * rng.random() for x in lengths]  # float lengths
    perm = random.Random(-trial).sample(range(n), n)
    assert split_to_even_chunks(perm, lengths, world_size) == ref_split(perm, lengths, world_size)
    generator = torch.Generator().manual_seed(trial) if trial % 3 == 0 else None
    for ours, ref in ((get_modality_length_grouped_indices, ref_modality_grouped),
                      (get_length_grouped_indices, ref_length_grouped)):
        g1 = None if generator is None else torch.Generator().manual_seed(trial)
        g2 = None if generator is None else torch.Generator().manual_seed(trial)
        torch.manual_seed(1000 + trial)
        expected = ref(lengths, batch_size, world_size, g1)
        torch.manual_seed(1000 + trial)
        assert ours(lengths, batch_size, world_size, g2) == expected


def test_llava_functions_equal_reference_at_scale():
    lengths, batch_size, world_size = mix(5000, seed=3), 16, 8
    torch.manual_seed(7)
    expected = ref_modality_grouped(lengths, batch_size, world_size)
    torch.manual_seed(7)
    assert get_modality_length_grouped_indices(lengths, batch_size, world_size) == expected


def test_sampler_llava_mode_is_llava_after_manual_seed_of_seed_plus_epoch():
    lengths = mix(3000, seed=1)
    sampler = LengthGroupedSampler(4, 6, lengths, group_by_modality=True, mode="llava", seed=5)
    sampler.set_epoch(2)
    state = torch.get_rng_state()
    ours = list(sampler)
    assert torch.equal(torch.get_rng_state(), state)  # the global generator is left alone
    torch.manual_seed(7)
    assert ours == ref_modality_grouped(lengths, 4, 6)
    plain = LengthGroupedSampler(4, 6, [abs(x) for x in lengths], mode="llava", seed=7)
    torch.manual_seed(7)
    assert list(plain) == ref_length_grouped([abs(x) for x in lengths], 4, 6)


# -- both modes ------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("n", [1, 7, 64, 1000, 1003, 4099])
@pytest.mark.parametrize("group_by_modality", [True, False])
def test_every_index_once(mode, n, group_by_modality):
    lengths = mix(n, seed=n)
    if not group_by_modality:
        lengths = [abs(x) for x in lengths]
    for pool in (None, 2):
        sampler = LengthGroupedSampler(4, 8, lengths, group_by_modality=group_by_modality, mode=mode, pool=pool)
        order = list(sampler)
        assert len(sampler) == n and sorted(order) == list(range(n))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("extra_image, extra_text", [(13, 22), (0, 31), (31, 1), (4, 4), (0, 0)])
def test_per_device_batches_keep_one_modality(mode, extra_image, extra_text):
    batch_size, world_size = 4, 8  # megabatches of 32: the extras are each modality's leftovers
    rng = random.Random(extra_image)
    lengths = [1 + rng.randint(0, 99) for _ in range(32 * 40 + extra_image)]
    lengths += [-1 - rng.randint(0, 99) for _ in range(32 * 11 + extra_text)]
    rng.shuffle(lengths)
    order = list(LengthGroupedSampler(batch_size, world_size, lengths, group_by_modality=True, mode=mode))
    mixed = [k for k, b in enumerate(batches(order, batch_size)) if is_mixed(b, lengths)]
    n_batches = -(-len(order) // batch_size)
    if mode != "llava":
        assert len(mixed) <= 1 and all(k >= n_batches - 2 for k in mixed)
    else:  # LLaVA merges both modalities' last megabatches, in index order, at the very end
        assert all(k >= n_batches - 2 * world_size for k in mixed)
    # and the check can fail: a plain shuffle mixes most batches
    shuffled = torch.randperm(len(lengths), generator=torch.Generator().manual_seed(0)).tolist()
    assert sum(is_mixed(b, lengths) for b in batches(shuffled, batch_size)) > n_batches // 4


@pytest.mark.parametrize("mode", MODES)
def test_megabatch_order_is_random(mode):
    """Grouping by length must not turn the epoch into a curriculum: neither modality nor
    length may drift along the epoch."""
    lengths, batch_size, world_size = mix(20_000, seed=11, text_fraction=0.3), 4, 8
    order = list(LengthGroupedSampler(batch_size, world_size, lengths, group_by_modality=True, mode=mode))
    size = batch_size * world_size
    steps = [order[i:i + size] for i in range(0, len(order) - 2 * size, size)]  # leftovers excepted
    text = [k for k, step in enumerate(steps) if lengths[step[0]] < 0]
    assert 0.2 < len(text) / len(steps) < 0.4
    assert max(text) - min(text) > 0.8 * len(steps)  # text-only steps spread over the epoch
    means = torch.tensor([sum(abs(lengths[i]) for i in step) / size for step in steps], dtype=torch.float64)
    position = torch.arange(len(steps), dtype=torch.float64)
    rank_corr = torch.corrcoef(torch.stack([means.argsort().argsort().double(), position]))[0, 1]
    assert abs(rank_corr) < 0.1


def test_ranks_are_balanced():
    lengths, batch_size, world_size = mix(16_384, seed=4), 16, 8
    random_order = torch.randperm(len(lengths), generator=torch.Generator().manual_seed(0)).tolist()
    worst = {"random": max(step_ratios(random_order, lengths, batch_size, world_size))}
    for mode in MODES:
        order = list(LengthGroupedSampler(batch_size, world_size, lengths, group_by_modality=True, mode=mode))
        full_steps = step_ratios(order, lengths, batch_size, world_size)[:-2]  # leftovers excepted
        worst[mode] = max(full_steps)
    assert worst["sorted_steps"] < 1.02 < worst["random"]
    assert worst["sorted_steps"] < worst["llava"] < worst["random"]


def test_grouped_modes_waste_less_padding_than_llava():
    lengths, batch_size = mix(16_384, seed=5), 16

    def waste(order):
        padded = sum(max(abs(lengths[i]) for i in b) * len(b) for b in batches(order, batch_size))
        return 1 - sum(abs(x) for x in lengths) / padded

    orders = {mode: list(LengthGroupedSampler(batch_size, 8, lengths, group_by_modality=True, mode=mode))
              for mode in MODES}
    assert waste(orders["sorted_steps"]) < 0.2 * waste(orders["llava"])
    assert waste(orders["random_steps"]) < waste(orders["llava"]) / 3  # sorting inside random steps


def step_mean_spread(order, lengths, step):
    """Std over full steps of a step's mean |length|."""
    full = len(order) // step * step
    t = torch.tensor([abs(lengths[i]) for i in order[:full]], dtype=torch.float64).view(-1, step)
    return t.mean(dim=1).std().item()


def test_default_steps_are_random_draws():
    """The default's steps average what LLaVA's average: on a skewed single-modality length
    list, the spread of per-step mean length is that of random order (a random draw), as for
    llava mode; the opt-in whole-dataset sort makes steps of one length (many times the spread)."""
    g = torch.Generator().manual_seed(21)
    lengths = torch.exp(5 + 1.0 * torch.randn(32_768, generator=g)).round().clamp(1, 4096).long().tolist()
    batch_size, world_size = 8, 4
    step = batch_size * world_size
    rand = step_mean_spread(torch.randperm(len(lengths), generator=g).tolist(), lengths, step)
    spread = {mode: step_mean_spread(list(LengthGroupedSampler(batch_size, world_size, lengths, mode=mode, seed=2)),
                                     lengths, step) for mode in MODES}
    assert 0.9 * rand < spread["random_steps"] < 1.1 * rand
    assert 0.9 * rand < spread["llava"] < 1.1 * rand
    assert spread["sorted_steps"] > 5 * rand


def test_default_sorts_only_inside_a_step():
    """Each step holds the same samples as the step of a plain random draw (a permutation cut
    into steps, then the steps shuffled); inside, per-device batches are neighbouring lengths."""
    lengths = [3, 9, 1, 7, 5, 2, 8, 6, 4, 10, 12, 11]  # one modality, 3 steps of 2 ranks x 2
    sampler = LengthGroupedSampler(2, 2, lengths, seed=0)
    order = list(sampler)
    assert sorted(order) == list(range(12))
    for k in range(3):
        step = [lengths[i] for i in order[4 * k:4 * k + 4]]
        assert step == sorted(step, reverse=True)  # longest first: batch 0 the two longest
    g = torch.Generator().manual_seed(0)  # the draw: the same generator's permutation, cut into steps
    perm = torch.randperm(12, generator=g).view(3, 4).tolist()
    assert sorted(sorted(order[4 * k:4 * k + 4]) for k in range(3)) == sorted(sorted(s) for s in perm)


@pytest.mark.parametrize("mode", MODES)
def test_order_is_determined_by_seed_and_epoch(mode):
    lengths = mix(2000, seed=6)

    def order(seed, epoch):
        sampler = LengthGroupedSampler(4, 4, lengths, group_by_modality=True, mode=mode, seed=seed)
        sampler.set_epoch(epoch)
        return list(sampler)

    assert order(0, 0) == order(0, 0)
    assert order(0, 1) == order(0, 1)
    assert order(0, 0) != order(0, 1)
    assert order(0, 0) != order(1, 0)
    sampler = LengthGroupedSampler(4, 4, lengths, group_by_modality=True, mode=mode, seed=3)
    first = list(sampler)
    assert list(sampler) == first  # no set_epoch: the same epoch again
    sampler.set_epoch(1)
    assert list(sampler) != first
    sampler.set_epoch(0)
    assert list(sampler) == first  # a resumed epoch replays


def test_a_generator_passed_in_is_drawn_on_across_epochs():
    lengths = mix(500, seed=8)
    sampler = LengthGroupedSampler(2, 2, lengths, torch.Generator().manual_seed(0), group_by_modality=True)
    assert list(sampler) != list(sampler)
    assert not hasattr(sampler, "generator")  # accelerate would otherwise install one of its own


def test_accelerate_shards_the_global_order_without_loss():
    from accelerate.data_loader import BatchSamplerShard
    from torch.utils.data import BatchSampler

    lengths, batch_size, ranks = mix(1000, seed=9), 4, 4
    sampler = LengthGroupedSampler(batch_size, ranks, lengths, group_by_modality=True)
    seen = []
    for rank in range(ranks):
        shard = BatchSamplerShard(BatchSampler(sampler, batch_size, drop_last=False), num_processes=ranks,
                                  process_index=rank, even_batches=False)
        seen += [i for b in shard for i in b]
    assert sorted(seen) == list(range(len(lengths)))
    # rank r gets batch r of each step: the per-device batches the sampler balanced
    order = list(sampler)
    shard = BatchSamplerShard(BatchSampler(sampler, batch_size, drop_last=False), num_processes=ranks,
                              process_index=1, even_batches=False)
    assert next(iter(shard)) == order[batch_size:2 * batch_size]


def test_accelerate_dataloader_forwards_set_epoch():
    from accelerate.data_loader import DataLoaderShard

    sampler = LengthGroupedSampler(2, 2, mix(50, seed=10), group_by_modality=True)
    loader = DataLoaderShard(list(range(50)), batch_size=2, sampler=sampler)
    loader.set_epoch(3)
    assert sampler.epoch == 3


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="modality"):
        list(LengthGroupedSampler(2, 2, [3, 0, -2], group_by_modality=True))
    with pytest.raises(ValueError, match="modality"):
        get_modality_length_grouped_indices([3, 0, -2], 2, 2)
    with pytest.raises(ValueError, match="random_steps, llava, sorted_steps"):
        LengthGroupedSampler(2, 2, [1, 2], mode="sorted")
    with pytest.raises(ValueError, match="now called 'sorted_steps'"):
        LengthGroupedSampler(2, 2, [1, 2], mode="balanced")
    with pytest.raises(ValueError, match="lengths"):
        LengthGroupedSampler(2, 2)
