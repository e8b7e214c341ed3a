"""``python -m llava_hydra.data.preview --index N [--eval] [--plain] [overrides]``

Prints sample N of the run spec's dataset as the model sees it: the rendered prompt with the
trained (labelled) text marked — green on a terminal, between ``⟦`` and ``⟧`` otherwise — and
how many tokens it has, how many are labelled and how many are image tokens. The marks come
from the labels themselves (each labelled token's character span), after truncation. A sample
that training would refuse or skip prints its problem (file, index, id and what is wrong) and
exits 1.
"""

from __future__ import annotations

import argparse
import sys

OPEN, CLOSE = "⟦", "⟧"
ANSI_OPEN, ANSI_CLOSE = "\033[1;32m", "\033[0m"


def marked_text(text: str, token_spans, token_trained, open_mark: str = OPEN, close_mark: str = CLOSE,
                cut: int | None = None) -> str:
    """``text`` with each maximal run of labelled tokens' characters wrapped in the marks."""
    trained = [False] * len(text)
    for (s, e), flag in zip(token_spans, token_trained):
        if flag:
            for c in range(s, e):
                trained[c] = True
    out, inside = [], False
    end = len(text) if cut is None else cut
    for c in range(end):
        if trained[c] != inside:
            out.append(open_mark if trained[c] else close_mark)
            inside = trained[c]
        out.append(text[c])
    if inside:
        out.append(close_mark)
    return "".join(out)


def preview(ds, index: int, color: bool = False) -> str:
    """Sample ``index`` marked; BadSampleError (naming file, index, id) for a sample training
    refuses or skips."""
    from llava_hydra.data.labels import IGNORE_INDEX, NothingToTrain
    from llava_hydra.data.records import record_id

    try:
        e, images = ds.encode(index)  # the record's checks first: a bad record raises BadSampleError
    except NothingToTrain as err:
        raise ds._fail(index, f"{err} (training skips it)") from None
    rendered, _ = ds.prepare(index)
    marks = (ANSI_OPEN, ANSI_CLOSE) if color else (OPEN, CLOSE)
    cut = e.token_spans[-1][1] if e.truncated and e.token_spans else None
    body = marked_text(rendered.text, e.token_spans, e.token_trained, *marks, cut=cut)
    n_image = e.input_ids.count(ds.image_token_id)
    lines = [f"sample {index} (id={record_id(ds.records[index])!r}) of {ds.data_path}",
             f"template {ds.template}; image: {', '.join(images) if images else 'none (text-only)'}",
             f"tokens {len(e.input_ids)} (of which {n_image} image tokens, {ds.num_image_tokens} per <image>), "
             f"labelled {sum(lab != IGNORE_INDEX for lab in e.labels)}"
             + (f"; truncated from {e.full_length} at model_max_length={ds.model_max_length}" if e.truncated else ""),
             "-" * 72, body]
    if cut is not None:
        lines.append(f"[... truncated: {len(rendered.text) - cut} more characters]")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llava_hydra.data.preview", description=__doc__.split("\n\n")[1],
                                     epilog="Other arguments are Hydra overrides, as for python -m llava_hydra.")
    parser.add_argument("--index", type=int, default=0, help="sample to show (default 0)")
    parser.add_argument("--eval", action="store_true", help="from data.eval_data_path")
    parser.add_argument("--plain", action="store_true", help="no colour, even on a terminal")
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
    if args.eval and not eval_data_path(cfg):
        print("no data path: data.eval_data_path is not set for this data", file=sys.stderr)
        return 2
    try:
        # skip: a bad JSONL line keeps its index (its preview names the problem) and the rest still show
        ds = make_dataset(cfg, eval_data_path(cfg) if args.eval else None, image_processor=False,
                          on_bad_sample="skip")
        if not 0 <= args.index < len(ds):
            print(f"--index {args.index} is out of range: the dataset has {len(ds)} samples", file=sys.stderr)
            return 2
        print(preview(ds, args.index, color=sys.stdout.isatty() and not args.plain))
    except (FileNotFoundError, BadSampleError) as e:
        print(f"FAILED: {e}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
