"""The command line's words, checked before Hydra composes them: keys that are no field of the
schema, and paths given where a group wants an option name.

Hydra refuses ``training.learnig_rate=1e-4`` with a page of advice to add it with ``+``, which is
wrong for a typo; here it is one line with the key it nearly is (``did you mean
training.learning_rate``). A key that is no schema field but is a ``TrainingArguments`` field
(``training.label_smoothing_factor=0.1``) is told to take the ``+``. ``model=/models/vicuna-7b-v1.5``
is told that paths go in ``model.llm`` / ``model.pretrained_llava`` (and ``data=<file>`` that they go
in ``data.data_path``). Imports no torch; the schema's dataclasses are the list of keys.
"""

from __future__ import annotations

import dataclasses
import typing

from llava_hydra.config.schema import LlavaHydraConfig, TrainingConfig
from llava_hydra.config.validate import did_you_mean

# where a path belongs when it is typed as a group's option
PATH_KEYS = {
    "model": "paths go in model.llm={v} (the language model) or model.pretrained_llava={v} (an assembled "
             "LLaVA), beside model=<the model file whose recipe to use, e.g. vicuna7b>",
    "data": "paths go in data.data_path={v} (and the images' folder in data.image_folder=...)",
    "stage": "stage 1's projector goes in stage.pretrain_mm_mlp_adapter={v}",
}


def looks_like_path(value: str) -> bool:
    return value.startswith(("/", "./", "../", "~")) or value.endswith((".json", ".jsonl", ".yaml", ".bin",
                                                                        ".safetensors")) or value.count("/") >= 2


def path_option_problem(group: str, value) -> str | None:
    """``model=/models/x``: one line saying where the path goes (None when ``value`` is no path)."""
    if not isinstance(value, str) or not looks_like_path(value):
        return None
    where = PATH_KEYS.get(group, "a group takes the name of one of its files, not a path").format(v=value)
    return f"{group}={value}: {group}= takes the name of a config file, not a path; {where}"


def _nearest(name: str, valid) -> str | None:
    """The valid name ``did_you_mean`` would offer, or None."""
    hint = did_you_mean(name, sorted(valid))
    return hint[len(" (did you mean '"):-len("'?)")] if hint else None


def _dataclass_of(tp):
    """The dataclass a field's type annotation names (through Optional), else None."""
    if dataclasses.is_dataclass(tp):
        return tp
    for arg in typing.get_args(tp):
        if dataclasses.is_dataclass(arg):
            return arg
    return None


def _fields(cls) -> dict:
    hints = typing.get_type_hints(cls)
    return {f.name: hints.get(f.name, f.type) for f in dataclasses.fields(cls)}


def unknown_key_problem(key: str) -> str | None:
    """``training.learnig_rate``: a one-line problem when the dotted key is no field of the schema
    (keys under free-form nodes, such as ``deepspeed.*``, and ``hydra.*`` pass)."""
    cls, walked = LlavaHydraConfig, []
    for part in key.split("."):
        known = _fields(cls)
        if part not in known:
            full = ".".join([*walked, part])
            if cls is TrainingConfig:
                from llava_hydra.config.hf_source import training_argument_fields

                extra = training_argument_fields() or set()
                if part in extra:
                    return (f"{full}: not in the run spec's schema; it is a TrainingArguments field: add it with "
                            f"+{full}=...")
                near = _nearest(part, set(known) | extra)
            else:
                near = _nearest(part, known)
            near = f" (did you mean {'.'.join([*walked, near])}?)" if near else ""
            return f"{full}: no such key{near}"
        walked.append(part)
        cls = _dataclass_of(known[part])
        if cls is None:
            return None  # a value, or a free-form node (deepspeed, hydra's): nothing more to check
    return None


def override_problems(argv: list[str], groups: typing.Iterable[str]) -> list[tuple[str, str]]:
    """(word, one line) for each ``key=value`` word that names no schema key (without ``+``) or puts a
    path where a group (``groups``) wants an option name."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    out = []
    for arg in argv:
        if arg.startswith(("-", "+", "~")) or "=" not in arg:
            continue
        key = arg.split("=", 1)[0]
        if key.startswith("hydra") or "@" in key or "/" in key:
            continue
        try:
            override = OverridesParser.create().parse_overrides([arg])[0]
        except Exception:  # noqa: BLE001 - Hydra reports the syntax error itself
            continue
        if key in groups:
            values = list(override.sweep_string_iterator()) if override.is_sweep_override() else [override.value()]
            out += [(arg, p) for p in (path_option_problem(key, v) for v in values) if p]
        else:
            problem = unknown_key_problem(key)
            if problem:
                out.append((arg, problem))
    return out
