"""Image-folder pre-flight: a run's image paths checked against ``data.image_folder`` before
its model loads, so that a path written to leave the folder (``../`` past its top, an absolute
path) stops the run in seconds instead of at the first image batch after a 7B model has loaded.
Checked lexically (images.outside_folder): symlinked subfolders inside the folder (LLaVA's
playground layout) are the user's own and are accepted.

Cheap by design: the paths come from the record store's ``images`` column (store.image_paths,
no record decoded), and only the distinct folders they go through are resolved (a few for
LLaVA-665K, hundreds for LLaVA-Pretrain's numbered subfolders), never each file: no existence
check (that is ``data.check``'s job). Refused unless ``data.allow_images_outside_folder``; under
``data.on_bad_sample=skip`` the run goes on and the log says how many records point outside
and that they will be skipped (each then counted under ``image_outside_folder``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from llava_hydra.data.images import outside_folder
from llava_hydra.data.records import BadSampleError, record_id

log = logging.getLogger(__name__)
FLAG = "data.allow_images_outside_folder=true"


@dataclass
class Outside:
    """A folder that image paths go through and that leaves the image folder (as written)."""

    folder: str  # as the paths spell it ("" for files directly in the image folder)
    resolved: str  # where it points
    records: np.ndarray  # indices of the records with an image under it (sorted, distinct)
    example: str  # the first such image path


def folders_outside(records, image_folder) -> list[Outside]:
    """The folders the records' image paths go through that leave ``image_folder`` as written
    (each distinct folder checked once), in the order of their first record."""
    import pyarrow.compute as pc

    from llava_hydra.data.store import image_paths

    record_of, paths = image_paths(records)
    if len(paths) == 0:
        return []
    folders = pc.replace_substring_regex(paths, pattern="[^/]*$", replacement="", max_replacements=1)
    encoded = pc.dictionary_encode(folders)  # each distinct folder once, the paths as codes into them
    names = encoded.dictionary.to_pylist()
    where = {k: r for k, name in enumerate(names) if (r := outside_folder(image_folder, name or ".")) is not None}
    if not where:
        return []
    codes = encoded.indices.to_numpy(zero_copy_only=False)
    hits = np.flatnonzero(np.isin(codes, list(where)))  # one pass over the paths, whatever the folder count
    by_code = codes[hits]
    order = np.argsort(by_code, kind="stable")
    starts = np.flatnonzero(np.r_[True, by_code[order][1:] != by_code[order][:-1]])
    found = []
    for group in np.split(hits[order], starts[1:]):
        k = int(codes[group[0]])
        found.append(Outside(names[k], where[k], np.unique(record_of[group]), paths[int(group[0])].as_py()))
    return sorted(found, key=lambda o: int(o.records[0]))


def check_image_folder(records, data_path, image_folder, on_bad_sample: str = "raise") -> int:
    """How many records have an image path through a folder outside ``image_folder``; raises
    BadSampleError naming the file, the first such sample (index and id), where its folder
    resolves and the flag to set, unless ``on_bad_sample`` is skip (then logged)."""
    outside = folders_outside(records, image_folder)
    if not outside:
        return 0
    n = len(np.unique(np.concatenate([o.records for o in outside])))
    first = outside[0]
    i = int(first.records[0])
    where = (f"image path {first.example!r} goes through {first.folder.rstrip('/') or '.'!r}, which leaves "
             f"data.image_folder={str(image_folder)!r} (to {first.resolved})")
    others = f"; {n} record(s) in all have images outside it" if n > 1 else ""
    if on_bad_sample != "skip":
        raise BadSampleError(f"{data_path}: sample {i} (id={record_id(records[i])!r}): {where}{others}. "
                             f"Set {FLAG} to allow images outside the folder", "image_outside_folder")
    log.warning("data: %d of %d records of %s have images outside data.image_folder (e.g. sample %d: %s); "
                "they will be skipped (data.on_bad_sample=skip; set %s to use them)", n, len(records), data_path, i,
                where, FLAG)
    return n


def preflight(cfg) -> None:
    """The image-folder check of a run spec's data files (``data.data_path`` or a mixture's sources,
    and the held-out file when the run evaluates on it), before the model loads. The records are opened as the
    dataset opens them (under ``paths.cache_dir``: the record store it then reuses)."""
    from llava_hydra.data.records import load_records
    from llava_hydra.data.store import open_records
    from llava_hydra.data.synthetic import eval_data_path

    from llava_hydra.data.mixture import data_files

    data = cfg.data
    if data.allow_images_outside_folder:
        return
    files = data_files(cfg)  # a mixture: each source with its own image folder
    if (cfg.eval.enable or cfg.eval.steps) and eval_data_path(cfg):
        files.append((eval_data_path(cfg), data.image_folder))
    skip = data.on_bad_sample == "skip"
    for path, folder in files:
        cache = cfg.paths.cache_dir
        records = open_records(path, cache, skip)[0] if cache else load_records(path, skip)[0]
        check_image_folder(records, path, Path(folder or "."), data.on_bad_sample)
