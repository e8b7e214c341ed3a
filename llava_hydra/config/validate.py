"""The run spec's pre-flight: every value a typo can break, checked before anything heavy is imported.

Hydra's schema (llava_hydra.config.schema) already refuses an unknown key or a wrong type while it
composes. This step checks what a type cannot say, in about a tenth of a second and without
torch or transformers: every interpolation resolves; string choices are among the values the
code branches on (``config.CHOICES``, and transformers' own names for ``lr_scheduler_type``,
``optim``, ``save_strategy``, ``eval_strategy``, ``report_to``); numbers lie in their range
(``config.RANGES``) and a run trains at least one step; a ``+training.<key>`` is a
``TrainingArguments`` field; a model or projector path that looks local exists; each tracker in
``report_to`` is installed. Before Hydra composes, ``group_option_problems`` refuses a
``group=option`` whose option is no file of ``conf/<group>/``. All problems are reported at once, each naming its key, with the
valid values and a "did you mean" for a near miss (or the new name of a renamed value)::

    the run spec has 1 problem:
      data.template='v2': not one of plain, v1, llama_2, mpt, qwen_1_5, chat_template (did you mean 'v1'?)

Code that gets such a value without a composed spec (TrainingArguments, the sampler, the packer,
the model builder) checks it by the same rule: ``check_choice`` / ``check_range``.
"""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import fields

from omegaconf import DictConfig, ListConfig, OmegaConf

from llava_hydra.config.schema import CHOICES, LOCAL_PATH_KEYS, RANGES, TrainingConfig, check_resolves
from llava_hydra.config.trackers import check_trackers


class SpecError(ValueError):
    """The composed spec holds values that cannot run; the message lists every one by key."""


def validate(cfg: DictConfig, local_paths: bool = True) -> None:
    """Raise SpecError listing every problem of the composed spec (``local_paths=False``: leave
    the file system and the installed trackers alone, for specs composed only to be read)."""
    check_resolves(cfg)  # a missing value behind an interpolation: an error naming both keys
    problems = [*choice_problems(cfg), *number_problems(cfg), *training_key_problems(cfg)]
    if "model" in cfg and "data" in cfg:
        from llava_hydra.config.families import family_problems

        problems += family_problems(cfg.model, cfg.data, cfg.get("training"))
    if "training" in cfg:
        from llava_hydra.config.fsdp import engine_problems

        problems += engine_problems(cfg)  # one engine: deepspeed or fsdp
    if local_paths:
        from llava_hydra.config.local_data import data_path_problems

        problems += path_problems(cfg) + data_path_problems(cfg)  # model paths, then data files and folders
    if problems:
        noun = "problem" if len(problems) == 1 else "problems"
        raise SpecError(f"the run spec has {len(problems)} {noun}:\n" + "\n".join(f"  {p}" for p in problems))
    if local_paths:
        check_trackers(cfg.training.report_to)  # installed? (says which package and extra to install)


def did_you_mean(value, valid) -> str:
    """The suffix " (did you mean 'X'?)" for the nearest valid value: one it begins (adamw -> adamw_torch), else
    the closest spelling (v2 -> v1, learnig_rate -> learning_rate); "" when none is near."""
    names = [str(v) for v in valid]
    close = [n for n in names if n.startswith(str(value))] if str(value) else []
    close = close or difflib.get_close_matches(str(value), names, n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _select(cfg: DictConfig, key: str):
    value = OmegaConf.select(cfg, key, default=None, throw_on_missing=False)
    return OmegaConf.to_container(value, resolve=True) if isinstance(value, (DictConfig, ListConfig)) else value


def _open_ended(key: str, value) -> bool:
    """Values a choice list cannot enumerate: a hub attention kernel ("org/kernel", "paged|sdpa")."""
    return key == "model.attn_implementation" and isinstance(value, str) and ("/" in value or "|" in value)


# An old name of a value -> (its new name, what to know), named in the error for that key.
RENAMED = {"training.length_grouping": {"balanced": ("sorted_steps", "it changes what each step averages")}}


def choice_problem(key: str, item, shown: str | None = None, valid=None) -> str | None:
    """The line saying ``item`` is not a value ``key`` takes (``config.CHOICES``), or None."""
    valid = CHOICES[key] if valid is None else valid
    if item in valid or _open_ended(key, item):
        return None
    renamed = RENAMED.get(key, {}).get(item)
    hint = f" ({item!r} is now called {renamed[0]!r}; {renamed[1]})" if renamed else did_you_mean(item, valid)
    return f"{shown or f'{key}={item!r}'}: not one of {', '.join(map(str, valid))}{hint}"


def check_choice(key: str, value) -> None:
    """The same rule for a value that reaches code without a composed spec (TrainingArguments,
    the sampler, the model builder): ValueError with ``choice_problem``'s line."""
    problem = choice_problem(key, value)
    if problem:
        raise ValueError(problem)


def choice_problems(cfg: DictConfig) -> list[str]:
    from llava_hydra.config.hf_source import training_choices

    out = []
    for key, valid in {**CHOICES, **training_choices()}.items():
        value = _select(cfg, key)
        for item in value if isinstance(value, list) else [value]:
            shown = f"{key} item {item!r}" if isinstance(value, list) else None
            problem = None if item is None else choice_problem(key, item, shown, valid)
            out += [problem] if problem else []
    return out


_RANGE = re.compile(r"^(>=|>) (\S+)$|^([\[(])(\S+), (\S+)([\])])$")


def in_range(value, rule: str) -> bool:
    """``value`` within ``rule``: "> x", ">= x" or an interval "[a, b)", "(a, b]" ..."""
    match = _RANGE.match(rule)
    if match is None:
        raise ValueError(f"bad range rule {rule!r}")
    op, bound, left, low, high, right = match.groups()
    if op:
        return value >= float(bound) if op == ">=" else value > float(bound)
    above = value >= float(low) if left == "[" else value > float(low)
    return above and (value <= float(high) if right == "]" else value < float(high))


def range_problem(key: str, value) -> str | None:
    """The line saying ``value`` lies outside ``key``'s range (``config.RANGES``), or None."""
    rule = RANGES[key]
    return None if in_range(value, rule) else f"{key}={value}: must be {rule if rule[0] == '>' else 'in ' + rule}"


def check_range(key: str, value) -> None:
    """The same rule for a value that reaches code without a composed spec: ValueError."""
    problem = range_problem(key, value)
    if problem:
        raise ValueError(problem)


def number_problems(cfg: DictConfig) -> list[str]:
    out = []
    for key in RANGES:
        value = _select(cfg, key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and (problem := range_problem(key, value)):
            out.append(problem)
    t = cfg.training
    if t.max_steps <= 0 and t.num_train_epochs <= 0:  # would save an untrained model
        out.append(f"training.num_train_epochs={t.num_train_epochs} (with training.max_steps={t.max_steps}) "
                   f"trains nothing: set training.num_train_epochs > 0 or training.max_steps > 0")
    if t.warmup_ratio and t.warmup_steps:
        out.append(f"training.warmup_ratio={t.warmup_ratio} and training.warmup_steps={t.warmup_steps}: "
                   f"set one of them, not both")
    return out


def training_key_problems(cfg: DictConfig) -> list[str]:
    """``+training.<key>`` keys (not in the schema) must be TrainingArguments fields."""
    from llava_hydra.config.hf_source import training_argument_fields

    ours = {f.name for f in fields(TrainingConfig)}
    extra = [k for k in cfg.training.keys() if k not in ours]
    known = training_argument_fields()
    if not extra or known is None:
        return []
    return [f"training.{k}: not a field of transformers' TrainingArguments{did_you_mean(k, ours | known)}"
            for k in extra if k not in known]


def looks_local(value: str) -> bool:
    """A path, not a hub id ("org/name") or builtin://NAME: starts with / . ~, or has 2+ slashes."""
    if "://" in value:
        return False
    return value.startswith(("/", ".", "~")) or "\\" in value or value.count("/") >= 2


def path_problems(cfg: DictConfig) -> list[str]:
    out = []
    for key in LOCAL_PATH_KEYS:
        value = _select(cfg, key)
        if not isinstance(value, str) or os.path.exists(value) or not looks_local(value):
            continue
        kind = "file" if key == "stage.pretrain_mm_mlp_adapter" else "directory"
        expanded = os.path.expanduser(value)
        if expanded != value and os.path.exists(expanded):
            out.append(f"{key}={value}: write the path without ~ ({expanded}); it is not expanded")
            continue
        problem = f"no such local {kind}: {value} ({key})"
        if key == "stage.pretrain_mm_mlp_adapter":
            root = cfg.paths.output_root
            also = "" if root == "outputs" else f" paths.output_root={root}"
            problem += (f"\n    stage 1 writes it: python -m llava_hydra stage=pretrain model={cfg.model.name}{also}"
                        f"\n    (or stage.pretrain_mm_mlp_adapter=null to start from a new projector)")
        out.append(problem)
    return out


# Groups a user types whose options are all files of this package (hydra/launcher also takes Hydra's
# and plugins' own: Hydra's error lists them). Options from --config-dir or hydra.searchpath are not
# seen here, so with either on the command line this check stands aside.
TYPED_GROUPS = ("stage", "model", "data", "deepspeed", "fsdp", "lora", "experiment", "hparams_search")


def group_option_problems(argv: list[str]) -> list[str]:
    """``group=option`` words of a command line whose option is not a file of ``conf/<group>/``,
    with the options and a "did you mean" (Hydra's own error lists the options without one)."""
    from importlib.resources import files

    from hydra.core.override_parser.overrides_parser import OverridesParser

    if any(a.startswith(("-cd", "--config-dir", "-cp", "--config-path")) or "searchpath" in a for a in argv):
        return []
    out = []
    for arg in argv:
        if arg.startswith("-") or "=" not in arg or arg.split("=", 1)[0].lstrip("+~") not in TYPED_GROUPS:
            continue
        try:
            override = OverridesParser.create().parse_overrides([arg])[0]
        except Exception:  # noqa: BLE001 - Hydra reports the syntax error itself
            continue
        if override.package is not None or override.is_delete():
            continue
        group = override.key_or_group
        values = list(override.sweep_string_iterator()) if override.is_sweep_override() else [override.value()]
        options = sorted(p.name[:-5] for p in files("llava_hydra.conf").joinpath(group).iterdir()
                         if p.name.endswith(".yaml"))
        for value in values:
            if value is not None and str(value) not in options:
                out.append(f"{group}={value}: no such option; the options are {', '.join(options)}"
                           f"{did_you_mean(value, options)}")
    return out
