"""Mixtures of sources: each sampling strategy's selection (LLaVA-NeXT's spellings and arithmetic),
LLaVA-NeXT's own YAML selecting what its loader selects, the mixture dataset (samples tagged with
their source, each source its own store and lengths), the collator's per-token sources, the
per-source loss sums, and steps that are random draws of the mixture."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

import stand_ins as testing
from llava_next_reference import llava_next_records
from llava_hydra.data.mixture import MixtureError, Source, read_sources, select, selected_count, selections


def chats(prefix: str, n: int) -> list[dict]:
    return [{"id": f"{prefix}{i}", "conversations": [{"from": "human", "value": f"Say {prefix} {i}"},
                                                    {"from": "gpt", "value": f"{prefix} " * (1 + i % 3)}]}
            for i in range(n)]


def write(path: Path, records: list[dict]) -> str:
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
    else:
        path.write_text(json.dumps(records))
    return str(path)


# -- the strategies, written out ---------------------------------------------------------------

@pytest.mark.parametrize("strategy, expected", [
    ("all", [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]),
    ("first:3", [0, 1, 2]),
    ("first:25%", [0, 1, 2]),  # ceil(25 * 10 / 100) = ceil(2.5) = 3
    ("end:2", [8, 9]),
    ("end:15%", [8, 9]),  # ceil(1.5) = 2
    ("random:3", [7, 3, 2]),  # random.Random(42).shuffle(range(10))[:3]
    ("random:30%", [7, 3, 2]),  # ceil(3.0) = 3: the same draw
    ("first:20", [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]),  # beyond the file: the whole file (a slice)
    ("end:100%", [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]),
    (" first : 4 ", [0, 1, 2, 3]),
])
def test_each_strategy_selects_these_records_of_ten(strategy, expected):
    assert select(10, strategy, random.Random(42)) == expected


def test_percent_rounds_up_as_llava_next():
    assert [selected_count(7, "first:10%"), selected_count(7, "end:50%"), selected_count(1000, "random:1%"),
            selected_count(3, "first:34%")] == [1, 4, 10, 2]  # ceil(0.7), ceil(3.5), 10, ceil(1.02)


def test_one_generator_for_the_mixture_consumed_by_random_sources_in_order():
    sources = [Source("a", "a.json", sampling_strategy="first:25%"),
               Source("b", "b.json", sampling_strategy="random:50%"),
               Source("c", "c.json", sampling_strategy="end:1", repeat=2),
               Source("d", "d.json", sampling_strategy="random:2"),
               Source("e", "e.json")]
    totals = [10, 7, 5, 10, 3]
    assert selections(sources, totals, seed=42) == [[0, 1, 2], [1, 3, 4, 2], [4, 4], [7, 9], [0, 1, 2]]
    assert selections(sources, totals, seed=7) == [[0, 1, 2], [5, 6, 4, 0], [4, 4], [1, 2], [0, 1, 2]]
    assert selections(sources, totals, seed=42) == selections(sources, totals, seed=42)  # deterministic


def test_fractional_repeat_adds_a_seeded_part_of_the_selection():
    """end:7 of 10 at repeat 0.5: round(3.5) = 4 of its 7 records; first:4 at 1.5: all 4, then 2 of them.
    The strategies' own draws are untouched (no random strategy here consumes the mixture's generator)."""
    sources = [Source("a", "a.json", sampling_strategy="end:7", repeat=0.5),
               Source("b", "b.json", sampling_strategy="first:4", repeat=1.5)]
    assert selections(sources, [10, 10], seed=5) == [[8, 5, 6, 9], [0, 1, 2, 3, 1, 0]]
    mixed = [Source("r", "r.json", sampling_strategy="random:3", repeat=1.5),
             Source("s", "s.json", sampling_strategy="random:3")]
    plain = [Source("r", "r.json", sampling_strategy="random:3"), Source("s", "s.json", sampling_strategy="random:3")]
    assert selections(mixed, [10, 10], 42)[1] == selections(plain, [10, 10], 42)[1]  # the repeat draws on its own


@pytest.mark.parametrize("strategy, problem", [
    ("first", "needs a number"), ("sample:10", "unknown sampling_strategy"), ("First:10", "unknown"),
    ("end:0", "selects no record"), ("first:0%", "selects no record"), ("first:2.5%", "whole number"),
    ("random:-3", "whole number"), ("all:5", "takes no number"), (10, "must be a string"),
])
def test_strategies_llava_next_would_silently_misread_are_refused(strategy, problem):
    with pytest.raises(MixtureError, match=problem):
        select(10, strategy, random.Random(0), where="mix.yaml: source 0")


# -- LLaVA-NeXT's YAML ---------------------------------------------------------------------------

# what LLaVA-NeXT's loader selects from the mixture below after random.seed(1234) (first:50% of 23,
# random:40% of 11, end:3 of 9, random:5 of 17, all 9)
EXPECTED_IDS = ["c0", "c1", "c2", "c3", "c4", "c5", "c6", "c7", "c8", "c9", "c10", "c11", "o2", "o10", "o3", "o5", "o8",
                "t6", "t7", "t8", "g2", "g4", "g3", "g11", "g6", "t0", "t1", "t2", "t3", "t4", "t5", "t6", "t7", "t8"]


def test_llava_next_yaml_selects_what_its_loader_selects(tmp_path, monkeypatch):
    files = {"coco": write(tmp_path / "coco.json", chats("c", 23)),
             "ocr": write(tmp_path / "ocr.jsonl", chats("o", 11)),
             "text": write(tmp_path / "text.json", chats("t", 9)), "gqa": write(tmp_path / "gqa.json", chats("g", 17))}
    mix = tmp_path / "mix.yaml"
    mix.write_text("datasets:\n"
                   f"  - json_path: {files['coco']}\n    sampling_strategy: \"first:50%\"\n"
                   f"  - json_path: {files['ocr']}\n    sampling_strategy: random:40%\n"
                   f"  - json_path: {files['text']}\n    sampling_strategy: end:3\n"
                   f"  - json_path: {files['gqa']}\n    sampling_strategy: random:5\n"
                   f"  - json_path: {files['text']}\n")  # no strategy: all; the same file again: doubled
    monkeypatch.chdir(tmp_path)
    random.seed(1234)  # LLaVA-NeXT never seeds its generator; seeded, its draw is ours
    reference = [r["id"] for r in llava_next_records(str(mix))]
    assert reference == EXPECTED_IDS

    sources = read_sources({"data_path": str(mix), "image_folder": "imgs"})
    assert [s.name for s in sources] == ["coco", "ocr", "text", "gqa", "text_2"]
    assert [s.image_folder for s in sources] == ["imgs"] * 5  # LLaVA-NeXT's one data.image_folder
    records = [json.loads(Path(s.data_path).read_text()) if s.data_path.endswith(".json")
               else [json.loads(line) for line in Path(s.data_path).read_text().splitlines()] for s in sources]
    chosen = selections(sources, [len(r) for r in records], seed=1234)
    ours = [records[k][i]["id"] for k, sel in enumerate(chosen) for i in sel]
    assert ours == reference
    assert [len(c) for c in chosen] == [12, 5, 3, 5, 9]  # ceil(11.5), ceil(4.4), 3, 5, all
    assert ours == EXPECTED_IDS


def test_yaml_with_our_keys_and_relative_paths(tmp_path):
    (tmp_path / "data").mkdir()
    write(tmp_path / "data" / "a.json", chats("a", 4))
    mix = tmp_path / "data" / "mix.yml"
    mix.write_text("datasets:\n  - data_path: a.json\n    name: alpha\n    image_folder: imgs\n    repeat: 3\n"
                   "    video_folder: vids\n")
    (s,) = read_sources({"data_path": str(mix), "image_folder": None})
    assert (s.name, s.data_path, s.image_folder, s.video_folder, s.repeat, s.sampling_strategy) == (
        "alpha", str(tmp_path / "data" / "a.json"), "imgs", "vids", 3, "all")  # beside the file when it is there
    assert selections([s], [4], 0) == [[0, 1, 2, 3] * 3]


@pytest.mark.parametrize("entry, problem", [
    ("  - json_path: a.json\n    sampling_stratgy: all\n", r"unknown key\(s\) \['sampling_stratgy'\]"),
    ("  - json_path: a.json\n    repeat: 0\n", "repeat must be a number > 0"),
    ("  - json_path: a.json\n    repeat: two\n", "repeat must be a number > 0"),
    ("  - json_path: a.json\n    data_path: a.json\n", "two names of one key"),
    ("  - sampling_strategy: all\n", "no json_path"),
    ("  - json_path: a.parquet\n", "a .json or .jsonl file"),
    ("  - json_path: a.json\n    sampling_strategy: first\n", "source 0: sampling_strategy 'first' needs a number"),
])
def test_bad_mixture_file_names_file_source_and_problem(tmp_path, entry, problem):
    mix = tmp_path / "mix.yaml"
    mix.write_text("datasets:\n" + entry)
    with pytest.raises(MixtureError, match=problem) as e:
        read_sources({"data_path": str(mix)})
    assert str(mix) in str(e.value)


def test_sources_and_data_path_are_one_or_the_other(tmp_path):
    with pytest.raises(MixtureError, match="both set.*data.data_path=null"):
        read_sources({"data_path": "x.json", "sources": [{"data_path": "a.json"}]})
    with pytest.raises(FileNotFoundError, match="mixture file not found: .*absent.yaml"):
        read_sources({"data_path": str(tmp_path / "absent.yaml")})
    (tmp_path / "list.yaml").write_text("- json_path: a.json\n")
    with pytest.raises(MixtureError, match="list.yaml: expected LLaVA-NeXT's mixture format"):
        read_sources({"data_path": str(tmp_path / "list.yaml")})


# -- the dataset, the collator and the loss sums -----------------------------------------------

@pytest.fixture
def mixture(tmp_path, bpe400):
    from llava_hydra.data.dataset import LazySupervisedDataset
    from llava_hydra.data.mixture_dataset import MixtureDataset

    sources = [Source("big", write(tmp_path / "big.json", chats("b", 12)), sampling_strategy="end:25%"),
               Source("small", write(tmp_path / "small.json", chats("s", 5)), sampling_strategy="random:2", repeat=2)]
    datasets = [LazySupervisedDataset(s.data_path, bpe400, testing.clip_processor(), "v1", cache_dir=tmp_path / "c")
                for s in sources]
    return MixtureDataset(sources, datasets, seed=3)


def test_mixture_samples_are_their_sources_records_tagged_with_the_source(mixture):
    assert [sel.tolist() for sel in mixture.selected] == [[9, 10, 11], [0, 2, 0, 2]]  # random.Random(3): 0, 2 first
    assert len(mixture) == 7
    assert [mixture.locate(g) for g in range(7)] == [(0, 9), (0, 10), (0, 11), (1, 0), (1, 2), (1, 0), (1, 2)]
    assert [mixture.records[g]["id"] for g in range(7)] == ["b9", "b10", "b11", "s0", "s2", "s0", "s2"]
    for g in range(7):
        k, i = mixture.locate(g)
        sample = mixture[g]
        assert sample["source"] == k
        assert torch.equal(sample["input_ids"], mixture.datasets[k][i]["input_ids"])
    lengths = [np.asarray(ds.modality_lengths) for ds in mixture.datasets]
    assert mixture.modality_lengths == lengths[0][[9, 10, 11]].tolist() + lengths[1][[0, 2, 0, 2]].tolist()
    assert mixture.records.has_image.tolist() == [False] * 7
    record = mixture.selection_record()
    assert {k: (v["records"], v["selected"], v["samples"]) for k, v in record.items()} == {
        "big": (12, 3, 3), "small": (5, 2, 4)}
    assert record["big"]["sha256"] == mixture.datasets[0].data_digest
    # each source keeps its own record store and length cache, keyed by its own file
    cache = Path(mixture.datasets[0].cache_dir)
    assert len(list((cache / "records").glob("*/state.json"))) == 2
    assert len(list((cache / "lengths").glob("*.npz"))) == 2


def test_collator_gives_every_token_its_source_padded_and_packed(mixture):
    from llava_hydra.data.dataset import DataCollator
    from llava_hydra.data.mixture_dataset import SourceCollator
    from llava_hydra.sampling.packing import PackedCollator, pack_samples

    items = [mixture[2], mixture[3]]  # big, small
    n0, n1 = len(items[0]["input_ids"]), len(items[1]["input_ids"])
    batch = SourceCollator(DataCollator(0))(items)
    width = max(n0, n1)
    assert batch["source_ids"].tolist() == [[0] * n0 + [-1] * (width - n0), [1] * n1 + [-1] * (width - n1)]
    row = pack_samples(items)
    assert row["sources"].tolist() == [0, 1]
    packed = SourceCollator(PackedCollator(0))([row])
    assert packed["source_ids"].tolist() == [[0] * n0 + [1] * n1]
    flat = SourceCollator(PackedCollator(0, "flash_attention_2"))([row, pack_samples([mixture[0]])])
    assert flat["source_ids"].shape == flat["input_ids"].shape and flat["source_ids"][0, -1].item() == 0


def test_per_source_sums_weighted_by_tokens_give_the_models_loss():
    from transformers.loss.loss_utils import ForCausalLMLoss

    from llava_hydra.train.source_loss import token_losses

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 6, 11, generator=g)
    labels = torch.tensor([[-100, -100, 4, 5, 6, -100], [-100, 1, 2, -100, -100, -100], [-100, -100, -100, 7, 8, 9]])
    sources = torch.tensor([[0, 0, 0, 0, 0, -1], [1, 1, 1, -1, -1, -1], [0, 0, 0, 2, 2, 2]])  # row 2: a packed row
    sums = token_losses(logits, labels, sources, 3)
    # logits at t predict the label at t+1, counted for the source of t+1
    assert sums[:, 1].tolist() == [3.0, 2.0, 3.0]
    ce = lambda r, t, y: torch.nn.functional.cross_entropy(logits[r, t], torch.tensor(y)).item()  # noqa: E731
    expected = [ce(0, 1, 4) + ce(0, 2, 5) + ce(0, 3, 6), ce(1, 0, 1) + ce(1, 1, 2),
                ce(2, 2, 7) + ce(2, 3, 8) + ce(2, 4, 9)]
    assert sums[:, 0].tolist() == pytest.approx(expected, rel=1e-6)
    model_loss = ForCausalLMLoss(logits, labels, 11).item()
    assert (sums[:, 0].sum() / sums[:, 1].sum()).item() == pytest.approx(model_loss, rel=1e-6)


# -- fairness: steps are random draws of the mixture -------------------------------------------

class _Lengths:
    """A stand-in source: only what the sampler reads (its records' lengths)."""

    def __init__(self, lengths):
        self.modality_lengths, self.model_max_length = list(lengths), 4096

    def __len__(self):
        return len(self.modality_lengths)


@pytest.mark.parametrize("mode", ["random_steps", "llava"])
def test_steps_are_random_draws_of_a_lopsided_mixture(mode):
    """900 short samples of one source, 100 long ones of another; steps of 8 (batch 4 x 2 ranks).
    A step drawn at random is all-big with probability C(900,8)/C(1000,8) = 0.4291 and all-small
    with 7.7e-9: over 20 epochs (2500 steps) 1072.8 all-big steps expected, sd 24.7 (binomial);
    the bound is 5 sd either side, [949, 1197], and no all-small step. A sampler that made steps of
    one source (or of one length: the sources' lengths do not overlap) would give about 2250 and 240."""
    from llava_hydra.data.mixture_dataset import MixtureDataset
    from llava_hydra.sampling.sampler import LengthGroupedSampler

    g = np.random.default_rng(0)
    big, small = _Lengths(g.integers(100, 300, 900)), _Lengths(g.integers(1500, 2000, 100))
    mixture = MixtureDataset([Source("big", "big.json"), Source("small", "small.json")], [big, small], seed=0)
    source = mixture.source_of()
    sampler = LengthGroupedSampler(4, world_size=2, lengths=mixture.modality_lengths, group_by_modality=True,
                                   mode=mode, seed=42)
    all_big = all_small = 0
    for epoch in range(20):
        sampler.set_epoch(epoch)
        order = list(sampler)
        assert sorted(order) == list(range(1000))  # every sample once per epoch
        steps = source[np.asarray(order)].reshape(125, 8)
        all_big += int((steps == 0).all(axis=1).sum())
        all_small += int((steps == 1).all(axis=1).sum())
    assert 949 <= all_big <= 1197
    assert all_small == 0


def test_the_fairness_bound_fails_a_sampler_of_one_length_steps():
    """The bound above can fail: sorted_steps (steps of one length, here of one source) breaks it."""
    from llava_hydra.data.mixture_dataset import MixtureDataset
    from llava_hydra.sampling.sampler import LengthGroupedSampler

    g = np.random.default_rng(0)
    mixture = MixtureDataset([Source("big", "big.json"), Source("small", "small.json")],
                             [_Lengths(g.integers(100, 300, 900)), _Lengths(g.integers(1500, 2000, 100))], seed=0)
    sampler = LengthGroupedSampler(4, world_size=2, lengths=mixture.modality_lengths, group_by_modality=True,
                                   mode="sorted_steps", seed=42)
    steps = mixture.source_of()[np.asarray(list(sampler))].reshape(125, 8)
    assert int((steps == 0).all(axis=1).sum()) == 112 and int((steps == 1).all(axis=1).sum()) == 12


def test_sources_from_the_command_line_and_the_data_group(compose_spec):
    from llava_hydra.config.validate import validate

    cfg = compose_spec("stage=finetune", "data.data_path=null",
                       "data.sources=[{data_path: /d/a.json, sampling_strategy: 'first:10%'}, "
                       "{data_path: /d/b.jsonl, name: bee, image_folder: /img/b, repeat: 3}]")
    validate(cfg, local_paths=False)
    assert read_sources(cfg.data) == [
        Source("a", "/d/a.json", cfg.data.image_folder, None, "first:10%", 1),
        Source("bee", "/d/b.jsonl", "/img/b", None, "all", 3)]
    cfg = compose_spec("stage=finetune", "data=synthetic_mixture", "paths.cache_dir=/c")
    assert [(s.name, s.data_path, s.image_folder, s.sampling_strategy, s.repeat) for s in read_sources(cfg.data)] == [
        ("qa", "/c/synthetic/qa.json", "/c/synthetic/images", "first:50%", 1),
        ("captions", "/c/synthetic/captions.json", "/c/synthetic/images", "random:25%", 2)]
    with pytest.raises(MixtureError, match="both set"):
        read_sources(compose_spec("data.sources=[{data_path: a.json}]").data)


def test_no_data_at_all_is_named_before_anything_loads(compose_spec):
    from llava_hydra.data.mixture import data_files

    with pytest.raises(MixtureError, match="no training data: set data.data_path .* or data.sources"):
        data_files(compose_spec("data.data_path=null"))
