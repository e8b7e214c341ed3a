"""training.packing: several samples per row, each attending only to itself; the same loss
and gradients as unpacked training; under 2% padding."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from llava_hydra.data.dataset import DataCollator, LazySupervisedDataset
from llava_hydra.sampling.packing import (IGNORE_INDEX, PackedCollator, PackedDataset, PackedSampler, block_causal_mask,
                                 pack_lengths, pack_samples, padding_stats)
from llava_hydra.sampling.sampler import LengthGroupedSampler

# -- bins (no model) ------------------------------------------------------------------------------


def random_lengths(n=3000, seed=0):
    g = torch.Generator().manual_seed(seed)
    image = 576 + torch.randint(8, 900, (n,), generator=g)
    text = torch.randint(20, 2048, (n // 10,), generator=g)
    lengths = torch.cat([image, -text])
    return lengths[torch.randperm(len(lengths), generator=g)].tolist()


def test_bins_hold_every_sample_once_within_capacity_and_one_modality():
    lengths = random_lengths()
    bins = pack_lengths(lengths, 2048, seed=3)
    flat = sorted(i for b in bins for i in b)
    assert flat == list(range(len(lengths)))
    for b in bins:
        assert sum(abs(lengths[i]) for i in b) <= 2048
        assert len({lengths[i] > 0 for i in b}) == 1, "a bin mixes image and text-only samples"


def test_bins_are_deterministic_and_reshuffle_per_seed_with_the_same_sizes():
    lengths = random_lengths()
    a, b, c = (pack_lengths(lengths, 2048, seed=s) for s in (1, 1, 2))
    assert a == b
    assert a != c  # different samples share a bin ...
    sizes = [sorted(sum(abs(lengths[i]) for i in bin_) for bin_ in bins) for bins in (a, c)]
    assert sizes[0] == sizes[1]  # ... but the bins' lengths are the same


def test_overlong_sample_takes_a_bin_of_its_own():
    assert pack_lengths([3000, 10, -5], 100) == [[0], [1], [2]]


def test_packed_epoch_of_a_665k_like_mix_wastes_under_2_percent():
    import sys

    sys.path.insert(0, str(Path(__file__).parents[1] / "bench"))
    from bench_sampler import mix665k_like

    lengths = mix665k_like(n_image=62_500, n_text=4_000, seed=0)  # a tenth, same shape
    bins = pack_lengths(lengths.tolist(), 2048, seed=0)
    bin_lengths = [(1 if lengths[b[0]] > 0 else -1) * int(lengths[b].abs().sum()) for b in bins]
    order = LengthGroupedSampler(4, 8, bin_lengths, group_by_modality=True, seed=0).order()
    stats = padding_stats(torch.tensor(bin_lengths)[order], batch_size=4)
    assert stats["pad_waste"] < 0.02, stats
    assert padding_stats(bin_lengths, batch_size=1)["pad_waste"] == 0


def test_block_causal_mask():
    m = block_causal_mask([[2, 1]], 4)[0, 0] == 0
    expected = torch.tensor([[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], dtype=torch.bool)
    assert torch.equal(m, expected)


def test_collator_pads_with_a_block_of_its_own_and_ignores_each_first_label():
    s = [{"input_ids": torch.tensor([1, 5, 6]), "labels": torch.tensor([9, 5, 6])},
         {"input_ids": torch.tensor([1, 7]), "labels": torch.tensor([1, 7])}]
    row_a, row_b = pack_samples(s), pack_samples(s[:1])
    assert row_a["labels"].tolist() == [IGNORE_INDEX, 5, 6, IGNORE_INDEX, 7]
    batch = PackedCollator(pad_token_id=0)([row_a, row_b])
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1], [0, 1, 2, 0, 1]]
    assert batch["input_ids"][1].tolist() == [1, 5, 6, 0, 0]
    assert batch["labels"][1].tolist() == [IGNORE_INDEX, 5, 6, IGNORE_INDEX, IGNORE_INDEX]
    assert "attention_mask" not in batch and batch["use_cache"] is False  # a cache object disables the block mask
    flat = PackedCollator(pad_token_id=0, attn_implementation="flash_attention_2")([row_a, row_b])
    assert flat["input_ids"].tolist() == [[1, 5, 6, 1, 7, 1, 5, 6]]  # one row for varlen, no padding
    assert flat["position_ids"].tolist() == [[0, 1, 2, 0, 1, 0, 1, 2]]


# -- the tiny model -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The embedded default's finetune model (no stage-1 projector) and its synthetic QA data."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    from llava_hydra.config.schema import register_configs
    from llava_hydra.data.synthetic import prepare
    from llava_hydra.model import build_model

    cache = tmp_path_factory.mktemp("cache")
    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_module("llava_hydra.conf", version_base="1.3"):
        cfg = compose("config", overrides=["stage=finetune", "stage.pretrain_mm_mlp_adapter=null",
                                           f"paths.cache_dir={cache}", "paths.output_root=" + str(cache / "out"),
                                           "data.synthetic.num_images=24", "data.synthetic.num_text_only=8",
                                           "data.synthetic.num_eval=2", "model.attn_implementation=sdpa"])
    GlobalHydra.instance().clear()
    prepare(cfg)  # the synthetic data under paths.cache_dir, as a run generates it
    torch.manual_seed(0)
    model, tokenizer, image_processor = build_model(cfg)
    model.train()
    dataset = LazySupervisedDataset(
        cfg.data.data_path, tokenizer, image_processor, template=cfg.data.template,
        image_folder=cfg.data.image_folder, image_aspect_ratio=cfg.data.image_aspect_ratio,
        model_max_length=cfg.model.model_max_length, image_token_id=model.config.image_token_index,
        num_image_tokens=model.config.image_seq_length)
    return cfg, model, tokenizer, dataset


def per_token_loss(model, batch):
    """Summed next-token loss and the number of labelled targets."""
    out = model(**batch)
    logits = out.logits[:, :-1].float()
    target = batch["labels"][:, 1:]
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1),
                                             ignore_index=IGNORE_INDEX, reduction="sum")
    return loss, int((target != IGNORE_INDEX).sum())


def test_dataset_lengths_are_the_packed_lengths(tiny):
    _, _, _, dataset = tiny
    packed = PackedDataset(dataset, capacity=256)
    assert sorted(i for b in packed.bins for i in b) == list(range(len(dataset)))
    for i in range(len(packed)):
        row = packed[i]
        assert len(row["input_ids"]) == abs(packed.modality_lengths[i]) <= 256
        assert ("pixel_values" in row) == (packed.modality_lengths[i] > 0)


@pytest.mark.parametrize("explicit_mask", [False, True], ids=["position_ids", "4d_mask"])
def test_packed_and_unpacked_give_the_same_loss(tiny, explicit_mask):
    _, model, tokenizer, dataset = tiny
    packed = PackedDataset(dataset, capacity=256)
    collate = PackedCollator(tokenizer.pad_token_id, explicit_mask=explicit_mask)
    rows = [packed[i] for i in range(4)]
    assert max(len(r["sample_lengths"]) for r in rows) > 1, "no row holds several samples"
    with torch.no_grad():
        loss_packed, n_packed = per_token_loss(model, collate(rows))
        batch = collate(rows)
        hf_loss = model(**batch, num_items_in_batch=n_packed).loss  # the model's own loss, as the Trainer calls it
        samples = [dataset[j] for i in range(4) for j in packed.bins[i]]
        loss_plain, n_plain = per_token_loss(model, DataCollator(tokenizer.pad_token_id)(samples))
    assert n_packed == n_plain
    torch.testing.assert_close(loss_packed / n_packed, loss_plain / n_plain, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(hf_loss, loss_plain / n_plain, rtol=1e-5, atol=1e-5)


def test_packed_samples_do_not_see_each_other(tiny):
    """Changing one sample of a row (its tokens and its image) leaves the other's logits alone."""
    _, model, tokenizer, dataset = tiny
    image_ids = [i for i, n in enumerate(dataset.modality_lengths) if n > 0][:3]
    a, b, c = (dataset[i] for i in image_ids)
    other = dict(b, input_ids=b["input_ids"].clone(), pixel_values=c["pixel_values"])
    text = other["input_ids"] != model.config.image_token_index
    other["input_ids"][text] = torch.randint(4, 300, (int(text.sum()),))
    collate = PackedCollator(tokenizer.pad_token_id)
    with torch.no_grad():
        first = model(**collate([pack_samples([a, b, a])])).logits[0]
        second = model(**collate([pack_samples([a, other, a])])).logits[0]
    na, nb = len(a["input_ids"]), len(b["input_ids"])
    torch.testing.assert_close(first[:na], second[:na], rtol=0, atol=1e-5)  # before
    torch.testing.assert_close(first[na + nb:], second[na + nb:], rtol=0, atol=1e-5)  # after
    assert not torch.allclose(first[na:na + nb], second[na:na + nb])  # the changed one did change
    with torch.no_grad():  # and a sample packed behind others = that sample alone
        alone = model(**DataCollator(tokenizer.pad_token_id)([a])).logits[0]
    torch.testing.assert_close(first[na + nb:], alone, rtol=0, atol=1e-5)


def test_trainer_step_with_gradient_accumulation_matches_unpacked(tiny, tmp_path):
    """One optimizer step over the same samples, packed (2 micro-batches of packed rows) and unpacked
    (2 micro-batches of padded samples): the loss is normalised by real tokens, so the step is the same."""
    from transformers import Trainer, TrainingArguments

    _, model, tokenizer, dataset = tiny
    packed = PackedDataset(dataset, capacity=256)
    chosen = [j for i in range(3) for j in packed.bins[i]]  # three bins: a step of 2 x 2 rows takes them all
    subset = torch.utils.data.Subset(dataset, chosen)
    subset.modality_lengths = [dataset.modality_lengths[j] for j in chosen]
    packed_subset = PackedDataset(subset, capacity=256)
    assert len(packed_subset) == 3
    start = {n: p.detach().clone() for n, p in model.named_parameters()}

    def one_step(train_set, collator, batch_size):
        model.load_state_dict(start, strict=False)
        args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=batch_size,
                                 gradient_accumulation_steps=2, max_steps=1, learning_rate=1.0, optim="sgd",
                                 lr_scheduler_type="constant", max_grad_norm=0.0, weight_decay=0.0,
                                 report_to=[], save_strategy="no", logging_steps=1, use_cpu=True,
                                 dataloader_num_workers=0, remove_unused_columns=False)
        trainer = Trainer(model=model, args=args, train_dataset=train_set, data_collator=collator)
        trainer.train()
        after = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        return after, trainer.state.log_history[0]["loss"]

    packed_params, packed_loss = one_step(packed_subset, PackedCollator(tokenizer.pad_token_id), 2)
    plain_params, plain_loss = one_step(subset, DataCollator(tokenizer.pad_token_id), (len(chosen) + 1) // 2)
    model.load_state_dict(start, strict=False)
    assert packed_loss == pytest.approx(plain_loss, rel=1e-4)
    moved = 0
    for name, value in plain_params.items():
        torch.testing.assert_close(packed_params[name], value, rtol=1e-4, atol=1e-5, msg=name)
        moved += not torch.equal(value, start[name])
    assert moved > 0


def test_llava_trainer_trains_on_packed_rows_with_the_grouped_sampler(tiny, tmp_path):
    """The wiring the runner uses: PackedDataset + PackedCollator into LLaVATrainer (default
    remove_unused_columns, which drops the batch's use_cache), rows drawn by its PackedSampler;
    the batches as the model gets them keep the samples apart."""
    from llava_hydra.sampling.packing import packed_training, prepare_model_for_packing
    from llava_hydra.train.trainer import LlavaTrainingArguments, LLaVATrainer

    _, model, tokenizer, dataset = tiny
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    train_set, collator = packed_training(dataset, tokenizer.pad_token_id, 128, "sdpa")
    prepare_model_for_packing(model)
    args = LlavaTrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=2, max_steps=2,
                                  group_by_modality_length=True, report_to=[], save_strategy="no", use_cpu=True)
    trainer = LLaVATrainer(model=model, args=args, train_dataset=train_set, data_collator=collator)
    assert isinstance(trainer._get_train_sampler(), PackedSampler)
    checked = 0
    for batch in trainer.get_train_dataloader():  # as the model receives them
        assert "position_ids" in batch and "attention_mask" not in batch
        for r in range(len(batch["input_ids"])):
            starts = (batch["position_ids"][r] == 0).nonzero().view(-1).tolist()
            if len(starts) < 2 or "pixel_values" in batch:
                continue
            second = slice(starts[1], starts[2] if len(starts) > 2 else None)
            with torch.no_grad():
                packed_logits = model(**batch).logits[r, second]
                alone = model(input_ids=batch["input_ids"][r:r + 1, second]).logits[0]
            torch.testing.assert_close(packed_logits, alone, rtol=0, atol=1e-5)
            checked += 1
            break
    assert checked, "no text-only batch with a packed row to check"
    trainer.train()
    model.load_state_dict(start, strict=False)
    assert trainer.state.log_history[-1]["train_loss"] > 0
