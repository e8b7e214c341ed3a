"""Names transformers accepts, read from its installed source without importing it.

``import transformers`` takes seconds and its Trainer pulls in torch, so the spec's check
(llava_hydra.config.validate) reads what it needs from the source files instead: the
``TrainingArguments`` field names (for ``+training.<key>=...``), and the strings its enums
accept (``lr_scheduler_type``, ``optim``, ``save_strategy``, ``eval_strategy``, ``report_to``).
Each answer is computed once per process. Where a file or class is not found (another
transformers layout), the answer is None and the caller skips that check: transformers
itself still judges the value when the run builds its TrainingArguments.
"""

from __future__ import annotations

import ast
import importlib.util
import re
from functools import lru_cache
from pathlib import Path


@lru_cache(maxsize=None)
def _source(relative: str) -> str | None:
    spec = importlib.util.find_spec("transformers")  # finds the package without running it
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / relative
    return path.read_text(encoding="utf-8") if path.is_file() else None


def _class_body(relative: str, name: str) -> list[ast.stmt] | None:
    """The statements of top-level class ``name`` in the file (only that class is parsed)."""
    text = _source(relative)
    if text is None:
        return None
    start = re.search(rf"^class {name}\b", text, re.M)
    if start is None:
        return None
    end = re.search(r"^(?=[^\s#)])", text[start.end():], re.M)  # next top-level statement
    chunk = text[start.start(): start.end() + end.start() if end else len(text)]
    try:
        tree = ast.parse(chunk)
    except SyntaxError:
        tree = ast.parse(text)
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == name:
            return node.body
    return None


def _enum_values(relative: str, name: str) -> tuple[str, ...] | None:
    body = _class_body(relative, name)
    if body is None:
        return None
    return tuple(node.value.value for node in body if isinstance(node, ast.Assign)
                 and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str))


@lru_cache(maxsize=None)
def training_argument_fields() -> frozenset[str] | None:
    """The init fields of transformers' ``TrainingArguments`` (private ``_x`` ones left out)."""
    body = _class_body("training_args.py", "TrainingArguments")
    if body is None:
        return None
    return frozenset(node.target.id for node in body if isinstance(node, ast.AnnAssign)
                     and isinstance(node.target, ast.Name) and not node.target.id.startswith("_"))


@lru_cache(maxsize=None)
def reporting_integrations() -> tuple[str, ...] | None:
    """``training.report_to`` names: the keys of ``INTEGRATION_TO_CALLBACK``, plus all and none."""
    text = _source("integrations/integration_utils.py")
    block = text and re.search(r"^INTEGRATION_TO_CALLBACK = \{(.*?)^\}", text, re.M | re.S)
    if not block:
        return None
    return (*re.findall(r'^\s*"(\w+)":', block.group(1), re.M), "all", "none")


@lru_cache(maxsize=None)
def training_choices() -> dict[str, tuple[str, ...]]:
    """``training.<key>`` -> the strings transformers accepts for it (only those found)."""
    found = {
        "training.lr_scheduler_type": _enum_values("trainer_utils.py", "SchedulerType"),
        "training.optim": _enum_values("training_args.py", "OptimizerNames"),
        "training.save_strategy": _enum_values("trainer_utils.py", "SaveStrategy"),
        "training.eval_strategy": _enum_values("trainer_utils.py", "IntervalStrategy"),
        "training.report_to": reporting_integrations(),
    }
    return {key: values for key, values in found.items() if values}
