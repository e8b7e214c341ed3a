"""The run, step by step: spec -> data -> model -> trainer -> train -> save -> evaluate.

Reads like the recipe it runs. Everything heavy is imported here, after Hydra has composed
and validated the spec.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from llava_hydra.config.distributed import is_main_process, start_process_group, under_launcher

log = logging.getLogger("llava_hydra")


def training_arguments(cfg: DictConfig):
    from llava_hydra.train.trainer import LlavaTrainingArguments

    kwargs = OmegaConf.to_container(cfg.training, resolve=True)
    for key in ("resume_from_checkpoint", "overwrite_output_dir", "resume_allow_spec_change"):
        kwargs.pop(key)  # run-directory choices (llava_hydra.train.checkpoints), not the Trainer's
    for key in ("packing", "packing_fill"):
        kwargs.pop(key)  # shape the dataset and collator, not the Trainer
    # transformers 5 folded warmup_ratio into warmup_steps (a float below 1 is a ratio; validate
    # refused both set, and a ratio outside [0, 1))
    ratio = kwargs.pop("warmup_ratio")
    if ratio:
        kwargs["warmup_steps"] = ratio
    # ... and renamed gradient_checkpointing to activation_checkpointing
    kwargs["activation_checkpointing"] = kwargs.pop("gradient_checkpointing")
    if cfg.eval.steps:  # score the held-out set during training (LLaVATrainer.evaluate)
        kwargs.update(eval_strategy="steps", eval_steps=cfg.eval.steps)
        if cfg.eval.keep_best:
            kwargs.update(metric_for_best_model="eval_accuracy", greater_is_better=True)
    # pinned memory only helps a GPU (on CPU torch warns, every run); the tokens seen give tokens/s
    kwargs.setdefault("dataloader_pin_memory", accelerator_present())
    kwargs.setdefault("include_num_input_tokens_seen", "non_padding")
    from llava_hydra.commands.tracking import run_name

    kwargs["run_name"] = run_name(cfg)
    if cfg.deepspeed is not None:
        kwargs["deepspeed"] = OmegaConf.to_container(cfg.deepspeed, resolve=True)
    if cfg.get("fsdp") is not None:  # PyTorch FSDP2 (llava_hydra.train.fsdp2)
        from llava_hydra.train.fsdp2 import fsdp_arguments

        kwargs.update(fsdp_arguments(OmegaConf.to_container(cfg.fsdp, resolve=True)))
    if cpu_process_group(cfg.deepspeed is not None):
        kwargs["accelerator_config"] = {"use_configured_state": True}
    try:
        return LlavaTrainingArguments(**kwargs)
    except TypeError as e:  # a key added with +training.X that TrainingArguments does not know
        raise ValueError(f"training: {e}") from None


def accelerator_present() -> bool:
    import torch

    accelerator = getattr(torch, "accelerator", None)
    return accelerator.is_available() if accelerator is not None else torch.cuda.is_available()


def log_to_run_file(cfg: DictConfig, out_dir: Path) -> None:
    """A worker of launcher.nproc_per_node (under torchrun, outside a Hydra job): rank 0 appends
    its log to the run's log file, named as Hydra names it (hydra.job.name: <model>_<stage>)."""

    root = logging.getLogger()
    if HydraConfig.initialized() or not under_launcher() or not is_main_process() or any(
            isinstance(h, logging.FileHandler) for h in root.handlers):
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(out_dir / f"{cfg.model.name}_{cfg.stage.name}.log")
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
    root.addHandler(handler)


def cpu_process_group(deepspeed: bool) -> bool:
    """Several processes and no GPU (torchrun on CPU): start accelerate's state on gloo
    ourselves, as transformers would pick a backend the CPU cannot run. True if it did."""
    import torch

    return not torch.cuda.is_available() and start_process_group(deepspeed=deepspeed) is not None


def length_pass_once(samples, args) -> None:
    """The dataset's cached length pass, computed once: rank 0 computes it and writes the cache
    inside ``main_process_first`` while the other ranks wait, then they read it."""
    with args.main_process_first(local=False, desc="length pass"):
        samples.length_table()


def run(cfg: DictConfig) -> float | None:
    from llava_hydra.config.validate import validate

    validate(cfg)  # choices, numbers, keys, local paths, trackers: before torch, data or weights
    from transformers import set_seed

    from llava_hydra.data.synthetic import eval_data_path, prepare as prepare_synthetic, synthetic_root
    from llava_hydra.model import build_model, make_processor
    from llava_hydra.data.tiny import pretrained_path
    from llava_hydra.data.spec import spec_dataset
    from llava_hydra.data.mixture import is_mixture
    from llava_hydra.data.mixture_dataset import SourceCollator, selection_of, train_dataset
    from llava_hydra.train.nodes import claim_on_every_node
    from llava_hydra.train.trainer import LLaVATrainer
    from llava_hydra.data.dataset import DataCollator
    from llava_hydra.train.progress import final_loss, plot_loss
    from llava_hydra.commands.sweep import in_multirun
    from llava_hydra.commands.tracking import Trackers
    from llava_hydra.data.store import has_image
    from llava_hydra.data.preflight import preflight as preflight_images

    started = time.time()
    if in_multirun():  # every job of a sweep trains in its own job directory
        cfg.training.output_dir = HydraConfig.get().runtime.output_dir
    out_dir = Path(cfg.training.output_dir)
    from llava_hydra.commands.launch import adopt_slurm_ranks, resume_request, spawn

    adopt_slurm_ranks()
    if cfg.launcher.nproc_per_node > 1 and not under_launcher():  # start the workers, then wait
        return spawn(cfg, str(out_dir))
    log_to_run_file(cfg, out_dir)
    log.info("run %s/%s -> %s", cfg.model.name, cfg.stage.name, out_dir)

    # 1. (The spec's values were checked above.) Claim the run directory: locked,
    #    refused if another run's checkpoints are there, the checkpoint to resume chosen and
    #    checked against this spec (llava_hydra.train.checkpoints), all before any weights load.
    args = training_arguments(cfg)
    set_seed(args.seed)
    spec = OmegaConf.to_container(cfg, resolve=True)
    if is_mixture(cfg.data):  # the records each source trains on, recorded and checked on resume (data.mixture)
        with args.main_process_first(local=False, desc="mixture selection"):
            prepare_synthetic(cfg)
            spec["data"]["selection"] = selection_of(cfg)
    resume, run_id = claim_on_every_node(str(out_dir), spec, resume_request(cfg.training.resume_from_checkpoint),
                                         save_on_each_node=cfg.training.save_on_each_node,  # node-local dirs (train.nodes)
                                         overwrite=cfg.training.overwrite_output_dir,
                                         allow_spec_change=cfg.training.resume_allow_spec_change)

    # 2. Data files: the synthetic default's are generated on first use, under paths.cache_dir
    #    only (a user's data_path is only read). Rank 0 writes them and builds the tiny builtin
    #    models while the other ranks wait.
    with args.main_process_first(local=False, desc="synthetic data and builtin models"):
        if prepare_synthetic(cfg):
            log.info("generated the synthetic dataset (%s) under %s", cfg.data.synthetic.task, synthetic_root(cfg))
        for name in (cfg.model.llm, cfg.model.vision_tower):
            pretrained_path(name, cfg.paths.cache_dir)
    streamed = bool(cfg.data.stream.shards)  # shards streamed through fsspec (llava_hydra.data.stream)
    if not streamed:
        preflight_images(cfg)  # image paths outside data.image_folder stop the run here, before the model loads
    from llava_hydra.train.data_tie import EpochToDataset, check_resume_data, data_record, file_record

    evaluates = cfg.eval.enable or cfg.eval.steps  # resuming on edited data: refused before the model loads
    check_resume_data(resume, file_record(cfg.paths.cache_dir, train=None if streamed else cfg.data.data_path,
                                          eval=eval_data_path(cfg) if evaluates else None),
                      cfg.training.resume_allow_spec_change)

    # 3. Model: LLM + vision tower + projector, frozen except stage.trainable (all ranks
    #    together: under ZeRO-3 loading is a collective).
    model, tokenizer, image_processor = build_model(cfg)
    if cfg.training.save_on_each_node:  # node-local run dirs: every node's writer saves the weights (train.nodes)
        from llava_hydra.train.nodes import write_on_every_node

        write_on_every_node(model)
    if cfg.lora.enable:  # the spec the merge command rebuilds the adapter's base model from
        from llava_hydra.config.run_spec import write_spec

        write_spec(cfg, out_dir)

    # 4. Dataset and collator; with training.packing, samples packed into rows of model_max_length.
    from llava_hydra.data.image_tokens import tokens_for_config

    image_tokens = (tokens_for_config(model.config), model.config.image_token_index)  # AnyRes: a rule by size
    packed_stream = None
    if streamed and cfg.training.packing:  # rows packed inside each worker's shuffle buffer
        from llava_hydra.sampling.packed_stream import packed_stream_dataset
        from llava_hydra.sampling.packing import prepare_model_for_packing

        samples, packed_stream = packed_stream_dataset(cfg, tokenizer, image_processor, *image_tokens, args,
                                                       model.config.text_config._attn_implementation)
        prepare_model_for_packing(model)
    elif streamed:
        from llava_hydra.data.stream import stream_dataset

        samples = stream_dataset(cfg, tokenizer, image_processor, *image_tokens, args, DataCollator(tokenizer.pad_token_id))
    else:
        samples = train_dataset(cfg, tokenizer, image_processor, *image_tokens)  # a file, or a mixture of sources
    if not streamed and (cfg.training.group_by_modality_length or cfg.training.packing):
        length_pass_once(samples, args)
    if streamed:
        log.info("train data: %d samples streamed from %d shards at %s, %d micro-batches per rank and epoch",
                 samples.n, len(samples.counts), samples.data_path, len(samples))
    else:
        image_samples = int(has_image(samples.records).sum())  # the store's column: no record decoded
        log.info("train data: %d samples (%d with an image, %d text-only) from %s, template %s, aspect %s",
                 len(samples), image_samples, len(samples) - image_samples, samples.data_path,
                 cfg.data.template, cfg.data.image_aspect_ratio)
    train_set, collator = samples, packed_stream or DataCollator(tokenizer.pad_token_id)
    if cfg.training.packing and not streamed:
        from llava_hydra.sampling.packing import packed_training, prepare_model_for_packing

        train_set, collator = packed_training(samples, tokenizer.pad_token_id, cfg.model.model_max_length,
                                              model.config.text_config._attn_implementation, seed=args.seed,
                                              fill=cfg.training.packing_fill)
        prepare_model_for_packing(model)
        log.info("packing: %d samples in %d rows of at most %d tokens (batch size counts rows)",
                 len(samples), len(train_set), cfg.model.model_max_length)
    if is_mixture(cfg.data):  # every token's source, for loss/<source> and tokens/<source> (train.source_loss)
        collator = SourceCollator(collator)

    # 5. Trainer: grouped sampler, projector learning rate, projector-only checkpoints in stage 1.
    projector_only = list(cfg.stage.trainable) == ["mm_projector"]
    eval_path = eval_data_path(cfg)  # not the synthetic held-out set when training on a user's data
    eval_set = spec_dataset(cfg, eval_path, tokenizer, image_processor, *image_tokens) if eval_path and (
        cfg.eval.enable or cfg.eval.steps) else None
    held_out = {}
    if cfg.eval.steps:
        if eval_set is None:
            raise ValueError("eval.steps needs held-out questions of the training data: set data.eval_data_path")
        from functools import partial

        from llava_hydra.eval.heldout import exact_match

        held_out = {"eval_dataset": eval_set, "held_out_eval": partial(
            exact_match, dataset=eval_set, max_new_tokens=cfg.eval.max_new_tokens, max_samples=cfg.eval.max_samples)}
    trainer = LLaVATrainer(model=model, args=args, train_dataset=train_set, data_collator=collator,
                           processing_class=tokenizer, save_projector_only=projector_only, **held_out)

    # 6. Train, resuming from the checkpoint chosen in step 1; every checkpoint records the run's
    #    id and spec.
    trainer.run_id, trainer.run_spec = run_id, spec
    trainer.run_data = data_record(train=samples, eval=eval_set)  # the bytes the datasets were built from
    check_resume_data(resume, trainer.run_data, cfg.training.resume_allow_spec_change)
    trainer.add_callback(EpochToDataset(samples))  # skip's substitutes are drawn per epoch
    trackers = Trackers(cfg, spec, out_dir, run_id)  # wandb / TensorBoard / MLflow: name, spec, run dir
    trackers.start(trainer)
    result = trainer.train(resume_from_checkpoint=resume)
    data_report = samples.report(all_ranks=True)  # skips of every rank and worker (every rank calls it)

    # 7. Save: the projector alone after stage 1, a Hugging Face-native model otherwise.
    #    Under LoRA: the adapter with the parts trained whole (python -m llava_hydra.merge makes a model of it).
    trainer.save_model(str(out_dir))
    if not projector_only and args.should_save:  # rank 0; with save_on_each_node each node's local rank 0
        make_processor(tokenizer, image_processor, model, cfg.data.template,
                       cfg.data.image_aspect_ratio).save_pretrained(str(out_dir))
    log.info("saved %s to %s", "projector" if projector_only else "model + processor", out_dir)

    # 8. Evaluate and write metrics.json (+ loss.png).
    metrics = {"model": cfg.model.name, "stage": cfg.stage.name,
               "train_loss": final_loss(trainer.state.log_history),  # RunLog logs the last step
               "train_loss_mean": result.training_loss, "train_steps": trainer.state.global_step,
               "train_samples": data_report["samples"], "skipped_samples": data_report["skipped"],
               "skipped_steps": len(trainer.guard.skipped_steps)}  # non-finite ones, training.on_nonfinite=skip
    #    Sharded across ranks; under bf16/fp16 in the Trainer's autocast (trainable parts are fp32).
    if cfg.eval.enable and eval_set is not None:
        from llava_hydra.eval.heldout import exact_match

        with trainer.accelerator.autocast():
            metrics.update(exact_match(model, eval_set, cfg.eval.max_new_tokens, max_samples=cfg.eval.max_samples))
        trainer.log({k: v for k, v in metrics.items() if k.startswith("eval_") and isinstance(v, (int, float))})
    elif cfg.eval.enable and cfg.data.eval_data_path:
        log.info("no evaluation: data.eval_data_path is the synthetic held-out set and the training data is not "
                 "the synthetic data; set data.eval_data_path to a held-out file of your data")
    if trainer.state.best_model_checkpoint:
        metrics["best_checkpoint"] = trainer.state.best_model_checkpoint
        metrics["best_eval_accuracy"] = trainer.state.best_metric
    metrics["wall_time_s"] = round(time.time() - started, 1)
    if args.should_save:
        (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=1))
        plot_loss(trainer.state.log_history, out_dir / "loss.png")
    trackers.finish(trainer, metrics, out_dir / "metrics.json")
    log.info("metrics: %s", {k: v for k, v in metrics.items() if k != "eval_examples"})
    return metrics.get("eval_accuracy")
