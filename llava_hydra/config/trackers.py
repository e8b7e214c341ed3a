"""Which trackers ``training.report_to`` can name, and whether each is installed: asked by the
pre-flight (llava_hydra.config.validate) before anything heavy is imported or any weights load."""

from __future__ import annotations

# training.report_to value -> (module transformers imports for it, pip package, our install extra)
TRACKERS = {
    "wandb": ("wandb", "wandb", "wandb"),
    "tensorboard": ("tensorboard", "tensorboard", "tensorboard"),
    "mlflow": ("mlflow", "mlflow", None),
    "comet_ml": ("comet_ml", "comet-ml", None),
    "clearml": ("clearml", "clearml", None),
    "neptune": ("neptune", "neptune", None),
    "dvclive": ("dvclive", "dvclive", None),
    "trackio": ("trackio", "trackio", None),
    "swanlab": ("swanlab", "swanlab", None),
}


def check_trackers(report_to) -> None:
    """Every tracker in ``training.report_to`` is installed, or a ValueError naming the package
    and the install extra; asked before anything heavy is imported or any weights load."""
    import importlib.util

    names = [report_to] if isinstance(report_to, str) else list(report_to or [])
    for name in names:
        if name not in TRACKERS:
            continue  # none, all, or one transformers itself will judge
        module, package, extra = TRACKERS[name]
        present = importlib.util.find_spec(module) is not None
        if name == "tensorboard" and not present:  # transformers takes tensorboardX instead
            present = importlib.util.find_spec("tensorboardX") is not None
        if not present:
            how = f"pip install 'llava_hydra[{extra}]' (or pip install {package})" if extra else f"pip install {package}"
            raise ValueError(f"training.report_to includes {name!r}, but the {package} package is not installed: "
                             f"{how}, or drop it (training.report_to=[none])")
