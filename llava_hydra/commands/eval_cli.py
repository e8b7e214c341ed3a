"""``python -m llava_hydra.eval model_dir=... benchmark=NAME`` (Hydra; ``-m benchmark=pope,gqa`` for several).

One job: load the model (eval/loading.py), read the benchmark's questions (benchmarks.py),
answer them (answers.py: batched, greedy, resumable, sharded under torchrun), score them
(scorers.py / owndata.py) and write submission files (submission.py), all under
``output_dir`` (``<model_dir>/eval/<benchmark>``): ``answers.jsonl``, ``results.json``,
``results.md``. ``<output_root>/results.md`` is then rebuilt with one row per benchmark
evaluated there, so a sweep (or benchmarks run one by one) ends in one table.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

log = logging.getLogger("llava_hydra.eval")


def score(bench, answers: list[dict], items) -> dict:
    from llava_hydra.eval import owndata, scorers

    kind = bench.scorer
    if kind is None:
        return {"n": len(answers)}
    if kind == "exact_f1":
        return owndata.score(answers)
    if kind == "pope":
        return scorers.pope(answers, [it.source for it in items],
                            bench.annotations)
    if kind in ("science_qa", "gqa", "vqa", "mme"):
        return getattr(scorers, kind)(answers, bench.annotations)
    raise ValueError(f"benchmark.scorer must be one of pope, science_qa, gqa, vqa, mme, exact_f1 or null, "
                     f"got {kind!r}")


def markdown(rows: list[tuple[str, str, float]]) -> str:
    lines = ["| benchmark | metric | value |", "|---|---|---|"]
    lines += [f"| {b} | {m} | {v:.2f} |" if isinstance(v, float) else f"| {b} | {m} | {v} |" for b, m, v in rows]
    return "\n".join(lines) + "\n"


def write_results(out_dir: Path, name: str, metrics: dict, headline: list[str]) -> None:
    (out_dir / "results.json").write_text(json.dumps({"benchmark": name, "headline": headline, **metrics},
                                                     indent=2))
    (out_dir / "results.md").write_text(markdown([(name, k, v) for k, v in metrics.items()]))
    print(markdown([(name, k, v) for k, v in metrics.items()]))


def summarize(root: Path) -> Path:
    """``root/results.md``: the headline metrics of every ``root/*/results.json``."""
    rows = []
    for path in sorted(root.glob("*/results.json")):
        res = json.loads(path.read_text())
        rows += [(res["benchmark"], k, res[k]) for k in res.get("headline") or [] if k in res]
    (root / "results.md").write_text(markdown(rows))
    return root / "results.md"


def run(cfg) -> dict | None:
    from llava_hydra.eval import submission
    from llava_hydra.eval.answers import answer_benchmark
    from llava_hydra.eval.benchmarks import load_items
    from llava_hydra.eval.generation import generation_kwargs
    from llava_hydra.eval.loading import load_for_inference
    from llava_hydra.config.distributed import start_process_group

    bench = cfg.benchmark
    out_dir = Path(cfg.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if bench.question_file is None:
        raise ValueError(f"benchmark {bench.name}: set benchmark.question_file=PATH")
    from llava_hydra.eval.loading import spec_data

    video_folder = bench.get("video_folder") or spec_data(Path(cfg.model_dir)).get("video_folder")  # OneVision
    items = load_items(bench.format, bench.question_file, bench.image_folder, bench.prompt_suffix, video_folder)
    if cfg.max_samples:
        items = items[:cfg.max_samples]
    import torch

    rank_device = start_process_group(cpu=cfg.device == "cpu" or not torch.cuda.is_available())  # under torchrun
    model, processor, aspect = load_for_inference(cfg.model_dir, cfg.dtype, cfg.device or rank_device)
    model_id = cfg.model_id or Path(cfg.model_dir).resolve().name
    from llava_hydra.model.families import family_of_config

    rule = None
    if family_of_config(model.config) == "llava_onevision":  # video questions: the run's frame rule
        from llava_hydra.eval.videos import video_rule

        rule = video_rule(cfg.model_dir, model.config)
    answers = answer_benchmark(model, processor, cfg.image_aspect_ratio or aspect, items,
                               out_dir / "answers.jsonl", model_id, cfg.batch_size,
                               generation_kwargs(bench.max_new_tokens), video_rule=rule)
    if answers is None:  # not rank 0
        return None
    metrics = score(bench, answers, items)
    if bench.scorer == "exact_f1":  # per-sample exact / f1 added to the rows
        from llava_hydra.eval.answers import write_answers

        write_answers(out_dir / "answers.jsonl", answers)
    if bench.submission:
        metrics["submission"] = str(getattr(submission, bench.submission)(answers, bench.submission_source,
                                                                          out_dir))
    write_results(out_dir, bench.name, metrics, list(bench.headline or []))
    log.info("summary of %s: %s", out_dir.parent, summarize(out_dir.parent))
    return metrics


def main() -> None:
    import hydra

    @hydra.main(version_base="1.3", config_path="pkg://llava_hydra.conf", config_name="eval")
    def _main(cfg):
        logging.getLogger().setLevel(logging.INFO)
        return run(cfg)

    try:
        _main()
    finally:  # under torchrun: leave the process group the answers were gathered in
        if "torch" in sys.modules:
            from llava_hydra.config.distributed import end_process_group

            end_process_group()
