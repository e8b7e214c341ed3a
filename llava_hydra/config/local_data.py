"""The data a spec reads, checked before anything heavy loads: ``data.data_path``,
``data.image_folder`` and ``data.eval_data_path`` must exist (a file, a folder, a file), except
what the synthetic default generates on first use (under ``<paths.cache_dir>/synthetic`` with
``data.synthetic`` set) and the synthetic held-out file beside a user's data (not evaluated on).

Called by ``llava_hydra.config.validate`` with the model paths, so a wrong ``data.image_folder``
is one line among the spec's problems, not a traceback after the model is built.
"""

from __future__ import annotations

import os
from pathlib import Path

DATA_PATH_KEYS = (("data_path", "file"), ("image_folder", "folder"), ("eval_data_path", "file"))


def _under(path: str, root: Path) -> bool:
    return Path(path).resolve().is_relative_to(root.resolve())


def data_path_problems(cfg) -> list[str]:
    """One line for each data path that is missing or of the wrong kind."""
    d = cfg.data
    synthetic = Path(str(cfg.paths.cache_dir)) / "synthetic"
    out = []
    for key, kind in DATA_PATH_KEYS:
        value = d.get(key)
        if value is None or not isinstance(value, str):
            continue  # no image folder (text-only data); a mixture's list is checked where it is read
        if _under(value, synthetic) and (d.get("synthetic") is not None or key == "eval_data_path"):
            continue  # generated on first use; or the synthetic held-out set beside a user's data (not used)
        if not os.path.exists(value):
            expanded = os.path.expanduser(value)
            hint = f" (write it without ~: {expanded}; it is not expanded)" if os.path.exists(expanded) else ""
            root = cfg.paths.get("data_root")
            if not hint and root and value.startswith(str(root)) and not os.path.isdir(str(root)):
                hint = f" (paths.data_root={root} does not exist: set it to the folder that holds the data)"
            out.append(f"no such {kind}: {value} (data.{key}){hint}")
        elif (kind == "folder") != os.path.isdir(value):
            out.append(f"data.{key}={value}: not a {kind}")
    return out
