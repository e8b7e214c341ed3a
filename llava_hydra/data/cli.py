"""What the data commands (check, preview) share: the run spec composed from the same Hydra
overrides as ``python -m llava_hydra``, and the data side of a run without its model — the
tokenizer, the image processor and the image token count read from the vision tower's config.
"""

from __future__ import annotations


def compose_spec(overrides: list[str]):
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    from llava_hydra.config import register_configs

    register_configs()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_module("llava_hydra.conf", version_base="1.3"):
            return compose("config", overrides=list(overrides))
    finally:
        GlobalHydra.instance().clear()


def num_image_tokens(cfg) -> int:
    """Image tokens per image, as the assembled model will have them (config only, no weights)."""
    from transformers import AutoConfig

    from llava_hydra.model import has_cls_token, select_strategy
    from llava_hydra.tiny import resolve

    m = cfg.model
    if m.pretrained_llava:
        return AutoConfig.from_pretrained(resolve(m.pretrained_llava, cfg.paths.cache_dir)).image_seq_length
    vc = AutoConfig.from_pretrained(resolve(m.vision_tower, cfg.paths.cache_dir))
    vc = getattr(vc, "vision_config", vc)
    full = select_strategy(m.mm_vision_select_feature, has_cls_token(vc)) == "full"
    return (vc.image_size // vc.patch_size) ** 2 + (1 if full and has_cls_token(vc) else 0)


def data_parts(cfg, image_processor: bool = True):
    """(tokenizer, image processor or None, image tokens per image); builds builtin:// models
    and the synthetic data on first use, as the runner does."""
    from llava_hydra.model import load_tokenizer
    from llava_hydra.tiny import resolve

    from llava_hydra.data.synthetic import prepare

    prepare(cfg)  # only under paths.cache_dir, and only when the spec reads the synthetic data
    m = cfg.model
    source = m.pretrained_llava or m.llm
    tokenizer = load_tokenizer(resolve(source, cfg.paths.cache_dir), m.model_max_length, m.trust_remote_code)
    processor = None
    if image_processor:
        from transformers import AutoImageProcessor

        processor = AutoImageProcessor.from_pretrained(resolve(m.pretrained_llava or m.vision_tower,
                                                               cfg.paths.cache_dir))
    return tokenizer, processor, num_image_tokens(cfg)


def make_dataset(cfg, data_path: str | None = None, image_processor: bool = True, on_bad_sample: str | None = None):
    from llava_hydra.data.dataset import LazySupervisedDataset

    tokenizer, processor, n_tokens = data_parts(cfg, image_processor)
    return LazySupervisedDataset(
        data_path or cfg.data.data_path, tokenizer, processor, template=cfg.data.template,
        image_folder=cfg.data.image_folder, image_aspect_ratio=cfg.data.image_aspect_ratio,
        model_max_length=cfg.model.model_max_length, num_image_tokens=n_tokens,
        on_bad_sample=on_bad_sample or cfg.data.on_bad_sample, cache_dir=cfg.paths.cache_dir,
        allow_images_outside_folder=cfg.data.allow_images_outside_folder, max_image_pixels=cfg.data.max_image_pixels)
