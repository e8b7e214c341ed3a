"""Mixtures of data sources: what a mixture spec says and which records of each source it selects.

A mixture is either ``data.sources`` (a list of ``SourceConfig``: data_path, name, image_folder,
video_folder, sampling_strategy, repeat) or ``data.data_path`` naming a ``.yaml`` / ``.yml`` file
in LLaVA-NeXT's format (``datasets:`` a list of ``{json_path, sampling_strategy}``; the same
optional keys as a source are accepted, ``data_path`` as another spelling of ``json_path``).
Relative paths in such a file are read beside the file first, else from the working directory
(LLaVA-NeXT's only place). Every source without its own ``image_folder`` uses ``data.image_folder``,
as LLaVA-NeXT's single image folder.

Sampling strategies, LLaVA-NeXT's spellings and arithmetic (``LazySupervisedDataset.__init__``):
``all``; ``first:N`` / ``end:N`` / ``random:N`` records, or ``N%`` of the file, rounded up
(``math.ceil(N * len / 100)``, N an integer as its ``int()`` takes it). ``first`` keeps the first
records, ``end`` the last, ``random`` shuffles the indices with ``random.Random(seed)`` and keeps
the first N of the shuffle -- one generator for the whole mixture, consumed by the ``random``
sources in order, which is exactly LLaVA-NeXT's ``random.shuffle`` on the global generator after
``random.seed(seed)``. LLaVA-NeXT itself never seeds it: its draw differs from run to run and
from rank to rank; ours is a function of the seed (``training.data_seed``, else ``training.seed``)
and is recorded in the run spec (``data.selection``). A number beyond the file keeps the whole file
(Python's slices, as LLaVA-NeXT). Refused where LLaVA-NeXT would silently train on the whole file
or on nothing: an unknown strategy or a missing number (its loader trains on all records), ``N=0``
(``end:0`` selects the whole file there), a negative or fractional N, a selection of no records.
``repeat: r`` (a number > 0, default 1) puts ``r`` times the selection in each epoch: ``int(r)`` whole
copies (LLaVA-NeXT's way is to list a file twice) and, for the fractional part ``f``, a random
``round(f * selected)`` of the selected records (no record twice; drawn from a generator of its
own, seeded with the seed and the source's position, so the strategies' draws stay LLaVA-NeXT's):
``repeat: 0.5`` halves a source, ``2.5`` weighs it 2.5 times.
"""

from __future__ import annotations

import hashlib
import math
import random
from dataclasses import dataclass
from pathlib import Path

STRATEGIES = ("all", "first", "end", "random")
SOURCE_KEYS = ("data_path", "name", "image_folder", "video_folder", "sampling_strategy", "repeat")
YAML_SUFFIXES = (".yaml", ".yml")


class MixtureError(ValueError):
    """A mixture spec that cannot be read as asked: names the file or key, the source and the problem."""


@dataclass(frozen=True)
class Source:
    name: str
    data_path: str
    image_folder: str | None = None
    video_folder: str | None = None
    sampling_strategy: str = "all"
    repeat: float = 1


def parse_strategy(text, where: str = "") -> tuple[str, int | None, bool]:
    """(kind, N or None, whether N is a percentage) of a sampling strategy; MixtureError otherwise."""
    at = f"{where}: " if where else ""
    if not isinstance(text, str):
        raise MixtureError(f"{at}sampling_strategy must be a string such as 'first:10%', got {text!r}")
    kind, sep, number = text.strip().partition(":")
    kind = kind.strip()
    if kind not in STRATEGIES:
        raise MixtureError(f"{at}unknown sampling_strategy {text!r}: use all, first:N, end:N, random:N "
                           f"or first:N%, end:N%, random:N% (LLaVA-NeXT's loader would train on every record)")
    if kind == "all":
        if sep:
            raise MixtureError(f"{at}sampling_strategy {text!r}: 'all' takes no number")
        return kind, None, False
    if not sep:
        raise MixtureError(f"{at}sampling_strategy {text!r} needs a number: {kind}:N or {kind}:N% "
                           f"(LLaVA-NeXT's loader would train on every record)")
    number = number.strip()
    percent = number.endswith("%")
    digits = number[:-1].strip() if percent else number
    if not digits.isdigit():
        raise MixtureError(f"{at}sampling_strategy {text!r}: N must be a whole number of records or of percent "
                           f"(LLaVA-NeXT reads it with int())")
    n = int(digits)
    if n == 0:
        raise MixtureError(f"{at}sampling_strategy {text!r} selects no record (LLaVA-NeXT's end:0 would "
                           f"select the whole file); remove the source instead")
    return kind, n, percent


def selected_count(total: int, text: str, where: str = "") -> int:
    """How many records of a file of ``total`` records a strategy keeps (LLaVA-NeXT's arithmetic)."""
    kind, n, percent = parse_strategy(text, where)
    if kind == "all":
        return total
    count = math.ceil(n * total / 100) if percent else n
    return min(count, total)  # a slice past the end stops at the end


def select(total: int, text: str, rng: random.Random, where: str = "") -> list[int]:
    """Indices of the records a strategy keeps, in LLaVA-NeXT's order (``random``: the shuffle's)."""
    kind, _, _ = parse_strategy(text, where)
    count = selected_count(total, text, where)
    if kind == "all":
        return list(range(total))
    if kind == "first":
        return list(range(count))
    if kind == "end":
        return list(range(total - count, total))
    order = list(range(total))
    rng.shuffle(order)  # random.shuffle draws from the length alone: the same draw as on LLaVA-NeXT's records
    return order[:count]


def selections(sources: list[Source], totals: list[int], seed: int) -> list[list[int]]:
    """Every source's selected indices, ``repeat`` times over; one generator for the mixture,
    seeded with ``seed``, consumed by the random sources in order."""
    rng = random.Random(seed)
    out = []
    for k, (source, total) in enumerate(zip(sources, totals)):
        where = f"data source {source.name!r} ({source.data_path})"
        chosen = select(total, source.sampling_strategy, rng, where)
        if not chosen:
            raise MixtureError(f"{where}: sampling_strategy {source.sampling_strategy!r} selects none of its "
                               f"{total} records")
        whole, part = int(source.repeat), source.repeat - int(source.repeat)
        extra = math.floor(part * len(chosen) + 0.5)
        repeated = chosen * whole + (random.Random(f"{seed}/repeat/{k}").sample(chosen, extra) if extra else [])
        if not repeated:
            raise MixtureError(f"{where}: repeat {source.repeat} of {len(chosen)} selected records leaves none")
        out.append(repeated)
    return out


def indices_digest(indices: list[int]) -> str:
    return hashlib.sha256(",".join(map(str, indices)).encode()).hexdigest()[:16]


def is_mixture(data) -> bool:
    """Whether a ``data`` node describes a mixture (data.sources, or a .yaml data_path)."""
    return data.get("sources") is not None or str(data.get("data_path") or "").endswith(YAML_SUFFIXES)


def read_sources(data) -> list[Source]:
    """The sources of a ``data`` node (a DictConfig or dict): data.sources, or the mixture file
    data.data_path names. MixtureError names the file / key and the problem."""
    path, inline = data.get("data_path"), data.get("sources")
    if inline is not None and path is not None:
        raise MixtureError(f"data.sources and data.data_path={path!r} are both set: a run reads one of them "
                           f"(add data.data_path=null to use data.sources)")
    if inline is not None:
        entries, where, base = [dict(s) for s in inline], "data.sources", None
    elif path is not None and str(path).endswith(YAML_SUFFIXES):
        entries, where, base = _yaml_entries(Path(path)), str(path), Path(path).parent
    else:
        raise MixtureError("no training data: set data.data_path (a JSON file or a mixture .yaml) or data.sources")
    if not entries:
        raise MixtureError(f"{where}: the mixture lists no source")
    default_folder = data.get("image_folder")
    sources, names = [], set()
    for k, entry in enumerate(entries):
        at = f"{where}: source {k}"
        file = _file_of(entry, at, base)
        unknown = sorted(set(entry) - set(SOURCE_KEYS) - {"json_path"})
        if unknown:
            raise MixtureError(f"{at}: unknown key(s) {unknown}; a source takes json_path (or data_path), "
                               f"{', '.join(SOURCE_KEYS[1:])}")
        repeat = entry.get("repeat")
        repeat = 1 if repeat is None else repeat
        if not isinstance(repeat, (int, float)) or isinstance(repeat, bool) or not 0 < repeat < math.inf:
            raise MixtureError(f"{at}: repeat must be a number > 0 (1: the selection once per epoch), got {repeat!r}")
        strategy = entry.get("sampling_strategy") or "all"
        parse_strategy(strategy, at)
        name = str(entry.get("name") or Path(file).name.split(".")[0])
        unique, n = name, 2
        while unique in names:  # the same file listed twice (LLaVA-NeXT's way to double it)
            unique, n = f"{name}_{n}", n + 1
        names.add(unique)
        sources.append(Source(unique, file, _folder(entry.get("image_folder"), base) or default_folder,
                              _folder(entry.get("video_folder"), base), strategy, repeat))
    return sources


def _yaml_entries(path: Path) -> list[dict]:
    import yaml

    if not path.is_file():
        raise FileNotFoundError(f"mixture file not found: {path}")
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise MixtureError(f"{path}: not valid YAML: {e}") from None
    datasets = doc.get("datasets") if isinstance(doc, dict) else None
    if not isinstance(datasets, list) or not all(isinstance(d, dict) for d in datasets):
        raise MixtureError(f"{path}: expected LLaVA-NeXT's mixture format, 'datasets:' a list of "
                           f"{{json_path: ..., sampling_strategy: ...}}")
    return datasets


def _file_of(entry: dict, at: str, base: Path | None) -> str:
    if "json_path" in entry and "data_path" in entry:
        raise MixtureError(f"{at}: json_path and data_path are two names of one key: give one")
    file = entry.get("json_path", entry.get("data_path"))
    if not file:
        raise MixtureError(f"{at}: no json_path (or data_path)")
    if not str(file).endswith((".json", ".jsonl")):
        raise MixtureError(f"{at}: {file}: a source is a .json or .jsonl file (as LLaVA-NeXT reads them)")
    return _resolved(str(file), base)


def _resolved(file: str, base: Path | None) -> str:
    """A relative path in a mixture file: beside the file if it exists there, else as given."""
    if base is not None and not Path(file).is_absolute() and (base / file).exists():
        return str(base / file)
    return file


def _folder(folder, base: Path | None):
    return None if folder is None else _resolved(str(folder), base)


def data_files(cfg) -> list[tuple[str, str | None]]:
    """(data file, image folder) of every training file of a spec: the mixture's sources, or data.data_path."""
    if is_mixture(cfg.data) or cfg.data.data_path is None:  # the latter: read_sources says what is missing
        return [(s.data_path, s.image_folder) for s in read_sources(cfg.data)]
    return [(cfg.data.data_path, cfg.data.image_folder)]


def data_seed(cfg) -> int:
    """The seed of the selection: training.data_seed, else training.seed (as the grouped sampler)."""
    t = cfg.training
    return int(t.data_seed if t.get("data_seed") is not None else t.seed)
