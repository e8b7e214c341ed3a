"""Training step time: our LLaVATrainer against a plain transformers.Trainer, same model and batches.

The embedded default (``python -m llava_hydra``: tiny LLaVA, stage=pretrain, synthetic
captions, CPU) is composed and built as the runner does; both trainers get the same
TrainingArguments (from ``runner.training_arguments``), the same initial weights, the same
dataset, collator and seed, hence the same batches. Each step is timed by a callback
(on_step_begin -> on_step_end: forward, backward, optimizer step), the first --warmup steps
dropped; the two trainers run alternately --rounds times and the medians are compared.

    .venv/bin/python bench/bench_train_step.py            # writes bench/results/train_step.json

``--stage finetune`` times stage 2 (LLM + projector trained, grouped sampler, no stage-1
projector); its plain Trainer then shuffles at random, so its batches differ.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stage", default="pretrain", choices=["pretrain", "finetune"])
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "train_step.json"))
    args = ap.parse_args()

    import torch
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from transformers import Trainer, TrainerCallback, set_seed

    from llava_hydra.config.schema import register_configs
    from llava_hydra.data.dataset import DataCollator
    from llava_hydra.data.synthetic import prepare
    from llava_hydra.model import build_model
    from llava_hydra.data.spec import spec_dataset
    from llava_hydra.commands.runner import training_arguments
    from llava_hydra.train.trainer import LLaVATrainer

    torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="bench_train_step_"))
    overrides = [f"stage={args.stage}", f"paths.cache_dir={tmp / 'cache'}", f"paths.output_root={tmp / 'out'}",
                 f"training.max_steps={args.steps}", "training.save_strategy=no", "training.logging_steps=1000",
                 "training.dataloader_num_workers=0"]
    if args.stage == "finetune":
        overrides.append("stage.pretrain_mm_mlp_adapter=null")
    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_module("llava_hydra.conf", version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    prepare(cfg)  # the synthetic data under paths.cache_dir, as a run generates it
    model, tokenizer, image_processor = build_model(cfg)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    train_set = spec_dataset(cfg, cfg.data.data_path, tokenizer, image_processor, model.config.image_seq_length,
                             model.config.image_token_index)

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.times = []

        def on_step_begin(self, *a, **k):
            self.t = time.perf_counter()

        def on_step_end(self, *a, **k):
            self.times.append(time.perf_counter() - self.t)

    def one_run(kind: str) -> list[float]:
        model.load_state_dict(start)
        targs = training_arguments(cfg)
        set_seed(targs.seed)
        timer = StepTimer()
        common = dict(model=model, args=targs, train_dataset=train_set,
                      data_collator=DataCollator(tokenizer.pad_token_id), callbacks=[timer])
        if kind == "LLaVATrainer":
            trainer = LLaVATrainer(**common, processing_class=tokenizer,
                                   save_projector_only=list(cfg.stage.trainable) == ["mm_projector"])
        else:
            trainer = Trainer(**common, processing_class=tokenizer)
        trainer.train()
        return timer.times[args.warmup:]

    times = {"transformers.Trainer": [], "LLaVATrainer": []}
    for _ in range(args.rounds):
        for kind in times:
            times[kind] += one_run(kind)
    med = {k: statistics.median(v) for k, v in times.items()}
    ratio = med["LLaVATrainer"] / med["transformers.Trainer"]
    batch = cfg.training.per_device_train_batch_size
    print(f"embedded default, stage={args.stage}: tiny LLaVA, batch {batch}, {args.steps} steps x {args.rounds} "
          f"rounds ({args.warmup} warm-up steps dropped per run), CPU, torch threads {args.threads}")
    header = f"{'trainer':<22}{'median s/step':>15}{'p10':>9}{'p90':>9}{'steps':>7}"
    print(header + "\n" + "-" * len(header))
    rows = []
    for k, v in times.items():
        q = statistics.quantiles(v, n=10)
        rows.append({"trainer": k, "median_s": med[k], "p10_s": q[0], "p90_s": q[-1], "steps": len(v)})
        print(f"{k:<22}{med[k]:>15.4f}{q[0]:>9.4f}{q[-1]:>9.4f}{len(v):>7d}")
    print(f"overhead ratio (LLaVATrainer / Trainer, medians): {ratio:.3f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"stage": args.stage, "batch_size": batch, "threads": args.threads,
                               "rows": rows, "ratio": ratio, "command": " ".join(sys.argv)}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
