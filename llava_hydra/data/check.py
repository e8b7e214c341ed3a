"""``python -m llava_hydra.data.check [--images] [--eval] [--limit N] [--json PATH] [overrides]``

Validates the dataset a run spec names, before a long run and without loading the model:
counts samples as with image(s) (of which multi-image) / text-only / bad, and finds what
training would refuse (records.normalize_turns, the same check: malformed records, ``<image>``
tag count mismatches, tags in answers, empty answers), missing images of every record and
paths outside data.image_folder (``--images``: also images that do not decode to their end or exceed data.max_image_pixels, each opened as
training opens it), samples longer than model.model_max_length (truncated) and samples whose
answers all lie beyond it (skipped in training). Each problem names the sample's index and id;
image problems are counted by the kind the image code gave them (images.IMAGE_KINDS).
Errors — anything ``data.on_bad_sample=raise`` would stop on — make it exit 1; the length pass
it runs is the cached one training reuses. A mixture (``data.sources`` or a mixture ``.yaml``) is
checked source by source (each whole file, with what the mixture selects of it) and in total.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from llava_hydra.data.images import IMAGE_KINDS
from llava_hydra.data.multi_view import keeps_one_of_several
from llava_hydra.data.records import RECORD_KINDS

ERRORS = (*RECORD_KINDS, *IMAGE_KINDS)
WARNINGS = ("over_length", "nothing_to_train")
DESCRIBE = {
    **RECORD_KINDS,
    **IMAGE_KINDS,
    "over_length": "longer than model_max_length (truncated)",
    "nothing_to_train": "all answers beyond model_max_length (skipped)",
}


def check_dataset(ds, decode_images: bool = False, workers: int = 8) -> dict:
    """Findings for a LazySupervisedDataset: counts (samples = with image(s) + text-only + bad,
    where bad is every record with an error) and, per kind, the [index, id, message] list."""
    from llava_hydra.data.records import images_of, record_id

    started = time.time()
    table = ds.length_table()
    found: dict[str, list[tuple[int, str]]] = {k: [] for k in (*ERRORS, *WARNINGS)}
    for i, (kind, message) in sorted(table.problems.items()):
        found[kind if kind in found else "malformed"].append((i, message))
    bad = set(table.problems)
    image_jobs = []  # (index, path) for every image of every well-formed record
    for i in range(len(ds)):
        if i not in bad and table.has_image[i]:
            image_jobs += [(i, path) for path in images_of(ds.records[i])]
    images_per_record = Counter(i for i, _ in image_jobs)
    with ThreadPoolExecutor(workers if decode_images else 1) as pool:  # what training refuses, images decoded
        results = list(pool.map(lambda job: ds.images.check(job[1], decode=decode_images), image_jobs))
    for (i, path), problem in zip(image_jobs, results):
        if problem:
            found[problem.kind].append((i, str(problem)))
            bad.add(i)
    videos = _videos_of(ds, bad, table)  # OneVision: each video's file (--images: decoded) as training reads it
    for i, name in videos:
        problem = ds.videos.check(name, decode=decode_images)
        if problem:
            found[problem.kind].append((i, str(problem)))
            bad.add(i)
    max_len = ds.model_max_length
    for i in (table.tokens > max_len).nonzero()[0].tolist():
        one_of_several = None if i in bad else keeps_one_of_several(ds, i)  # OneVision: refused in training
        if one_of_several:
            found["multi_image_layout"].append((i, one_of_several))
            bad.add(i)
        elif i not in bad:
            found["over_length"].append((i, f"{int(table.tokens[i])} tokens"))
    for i in table.nothing_to_train(max_len).nonzero()[0].tolist():
        first = int(table.first_label[i])
        found["nothing_to_train"].append((i, f"first answer token at {first}" if first >= 0
                                          else "no answer token to train on"))
    good = [i for i in range(len(ds)) if i not in bad]
    n_image = int(table.has_image[good].sum()) if good else 0
    named = {kind: [[i, record_id(ds.records[i]), message] for i, message in items]
             for kind, items in found.items()}
    return {"data_path": ds.data_path, "samples": len(ds), "image_samples": n_image,
            "multi_image_samples": sum(images_per_record[i] > 1 for i in good),
            "video_samples": sum(i not in bad for i, _ in videos),
            "text_only_samples": len(good) - n_image, "bad_samples": len(bad), "model_max_length": max_len,
            "max_tokens": int(table.tokens.max(initial=0)), "images_decoded": decode_images,
            "errors": sum(len(found[k]) for k in ERRORS), "warnings": sum(len(found[k]) for k in WARNINGS),
            "found": named, "seconds": round(time.time() - started, 2)}


TOTALS = ("samples", "image_samples", "multi_image_samples", "text_only_samples", "bad_samples", "errors",
          "warnings")


def _videos_of(ds, bad: set, table) -> list[tuple[int, str]]:
    """(index, video path) of every well-formed video record (data/video.py)."""
    from llava_hydra.data.video import video_of

    if getattr(ds, "videos", None) is None:
        return []
    return [(i, video_of(ds.records[i])) for i in range(len(ds))
            if i not in bad and table.has_image[i] and video_of(ds.records[i])]


def check_mixture(mixture, decode_images: bool = False) -> dict:
    """Findings per source of a MixtureDataset (each source's whole file, as ``check_dataset``,
    plus what the mixture selects of it) and their sums under ``total``."""
    from llava_hydra.data.mixture import selected_count

    sources = {}
    for name, ds, source, sel in zip(mixture.names, mixture.datasets, mixture.sources, mixture.selected):
        report = check_dataset(ds, decode_images)
        bad = {i for kind in ERRORS for i, _, _ in report["found"][kind]}
        report.update(name=name, sampling_strategy=source.sampling_strategy, repeat=source.repeat,
                      selected=selected_count(len(ds), source.sampling_strategy), mixture_samples=len(sel),
                      bad_selected=len(bad & set(sel.tolist())))
        sources[name] = report
    total = {key: sum(r[key] for r in sources.values())
             for key in (*TOTALS, "selected", "mixture_samples", "bad_selected")}
    return {"sources": sources, "total": total}


def _print_mixture(report: dict, limit: int, out=None) -> None:
    p = lambda *a: print(*a, file=out or sys.stdout)  # noqa: E731
    for name, r in report["sources"].items():
        repeat = f", x{r['repeat']:g}" if r["repeat"] != 1 else ""
        p(f"== source {name}: {r['selected']} of {r['samples']} records selected ({r['sampling_strategy']}{repeat}), "
          f"{r['mixture_samples']} samples per epoch, {r['bad_selected']} of the selected records bad")
        _print(r, limit, out)
    t = report["total"]
    p(f"== total: {len(report['sources'])} sources, {t['mixture_samples']} samples per epoch "
      f"({t['selected']} records selected of {t['samples']})")
    p(f"  with image(s) {t['image_samples']} ({t['multi_image_samples']} with several), text-only "
      f"{t['text_only_samples']}, bad {t['bad_samples']} (whole files; {t['bad_selected']} of them selected)")
    p(f"{'FAILED' if t['errors'] else 'OK'}: {t['errors']} error(s), {t['warnings']} warning(s) in all sources")


def _print(report: dict, limit: int, out=None) -> None:
    p = lambda *a: print(*a, file=out or sys.stdout)  # noqa: E731
    p(f"{report['data_path']}")
    p(f"  samples            {report['samples']:>10}")
    videos = f", {report['video_samples']} videos" if report.get("video_samples") else ""
    p(f"  with image(s)      {report['image_samples']:>10}   ({report['multi_image_samples']} with several{videos})")
    p(f"  text-only          {report['text_only_samples']:>10}")
    p(f"  bad (errors below) {report['bad_samples']:>10}")
    p(f"  longest (tokens)   {report['max_tokens']:>10}   (model_max_length {report['model_max_length']})")
    for kind in (*ERRORS, *WARNINGS):
        items = report["found"][kind]
        level = "error" if kind in ERRORS else "warning"
        p(f"  {DESCRIBE[kind]:<46} {len(items):>8}   {level if items else ''}")
    for kind in (*ERRORS, *WARNINGS):
        for i, rid, message in report["found"][kind][:limit]:
            p(f"  [{kind}] sample {i} (id={rid!r}): {message}")
        if len(report["found"][kind]) > limit:
            p(f"  [{kind}] ... and {len(report['found'][kind]) - limit} more")
    verdict = "FAILED" if report["errors"] else "OK"
    p(f"{verdict}: {report['errors']} error(s), {report['warnings']} warning(s) in {report['seconds']}s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llava_hydra.data.check", description=__doc__.split("\n\n")[1],
                                     epilog="Other arguments are Hydra overrides, as for python -m llava_hydra.")
    parser.add_argument("--images", action="store_true",
                        help="decode every image to its end (as training does), not just stat it")
    parser.add_argument("--eval", action="store_true", help="check data.eval_data_path instead of data.data_path")
    parser.add_argument("--limit", type=int, default=10, help="problems listed per kind (default 10)")
    parser.add_argument("--json", type=Path, help="also write the full report as JSON here")
    args, overrides = parser.parse_known_args(argv)

    from llava_hydra.data.cli import compose_spec, make_dataset
    from llava_hydra.data.records import BadSampleError
    from llava_hydra.config.validate import SpecError

    from llava_hydra.data.synthetic import eval_data_path

    try:
        cfg = compose_spec(overrides)
    except SpecError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from llava_hydra.data.mixture import MixtureError, is_mixture

    if is_mixture(cfg.data) and not args.eval:  # per source, and in total
        from llava_hydra.data.mixture_dataset import mixture_dataset
        from llava_hydra.data.spec import data_parts

        try:
            tokenizer, _, n_tokens = data_parts(cfg, image_processor=False)
            mixture = mixture_dataset(cfg, tokenizer, None, n_tokens, on_bad_sample="skip")
        except (FileNotFoundError, BadSampleError, MixtureError) as e:
            print(f"FAILED: {e}")
            return 1
        report = check_mixture(mixture, decode_images=args.images)
        _print_mixture(report, args.limit)
        return _written(report, args.json, report["total"]["errors"])
    path = eval_data_path(cfg) if args.eval else cfg.data.data_path
    if not path:
        print("no data path: data.eval_data_path is not set", file=sys.stderr)
        return 2
    try:
        ds = make_dataset(cfg, path, image_processor=False, on_bad_sample="skip")
    except (FileNotFoundError, BadSampleError) as e:
        print(f"FAILED: {e}")
        return 1
    report = check_dataset(ds, decode_images=args.images)
    _print(report, args.limit)
    return _written(report, args.json, report["errors"])


def _written(report: dict, path: Path | None, errors: int) -> int:
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=1))
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
