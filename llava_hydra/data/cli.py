"""What the data commands (check, preview) share: the run spec composed from the same Hydra
overrides as ``python -m llava_hydra``, and the dataset a run of it would read, built without
its model (``llava_hydra.data.spec``).
"""

from __future__ import annotations


def compose_spec(overrides: list[str]):
    """The spec of these overrides, its choices, numbers and keys checked as a run checks them
    (``llava_hydra.config.validate``; not local paths: stage 1's projector need not exist yet)."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    from llava_hydra.config.schema import register_configs
    from llava_hydra.config.validate import validate

    register_configs()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_module("llava_hydra.conf", version_base="1.3"):
            cfg = compose("config", overrides=list(overrides))
    finally:
        GlobalHydra.instance().clear()
    validate(cfg, local_paths=False)
    return cfg


def make_dataset(cfg, data_path: str | None = None, image_processor: bool = True, on_bad_sample: str | None = None):
    """The dataset of ``data_path`` (default: ``data.data_path``) as the spec's run would read it."""
    from llava_hydra.data.spec import data_parts, spec_dataset
    from llava_hydra.data.mixture import MixtureError, is_mixture

    if data_path is None and is_mixture(cfg.data):
        raise MixtureError("data.data_path is a mixture (data.sources or a mixture .yaml): name one of its files, "
                           "data.data_path=<file> data.sources=null (data.check reads a whole mixture)")

    tokenizer, processor, n_tokens = data_parts(cfg, image_processor)
    return spec_dataset(cfg, data_path or cfg.data.data_path, tokenizer, processor, n_tokens,
                        on_bad_sample=on_bad_sample)
