"""The data side of a run, built from its spec: the tokenizer, the image processor, the image
token count and the dataset. The runner takes the count from the model it built; the data
commands (check, preview) count from the configs alone (``image_tokens_per_image``) and never
build a model. ``builtin://`` parts and the synthetic data are made on first use, as in a run.
"""

from __future__ import annotations


def image_tokens_per_image(cfg):
    """Image tokens per image, as the assembled model will have them (configs only, no weights): an
    int, or for an AnyRes family an ImageTokens rule that counts by each image's size."""
    from transformers import AutoConfig

    from llava_hydra.data.anyres import token_rule
    from llava_hydra.data.image_tokens import tokens_for_config
    from llava_hydra.data.tiny import pretrained_path

    m = cfg.model
    if m.pretrained_llava:
        rule = tokens_for_config(AutoConfig.from_pretrained(pretrained_path(m.pretrained_llava, cfg.paths.cache_dir)))
        return rule.fixed if rule.fixed is not None else rule
    vc = AutoConfig.from_pretrained(pretrained_path(m.vision_tower, cfg.paths.cache_dir))
    vc = getattr(vc, "vision_config", vc)
    rule = token_rule(_family(cfg), vc, m.mm_vision_select_feature, m.get("image_grid_pinpoints"),
                      cfg.data.image_aspect_ratio)
    return rule.fixed if rule.fixed is not None else rule


def _family(cfg) -> str:
    from llava_hydra.config.families import trained_family

    return trained_family(cfg.model.get("family", "llava"), cfg.data.image_aspect_ratio)


def data_parts(cfg, image_processor: bool = True):
    """(tokenizer, image processor or None, image tokens per image) without the model; the
    synthetic data is generated first when the spec reads it."""
    from llava_hydra.data.synthetic import prepare
    from llava_hydra.data.tokenizer import load_tokenizer
    from llava_hydra.data.tiny import pretrained_path

    prepare(cfg)  # only under paths.cache_dir, and only when the spec reads the synthetic data
    m = cfg.model
    source = m.pretrained_llava or m.llm
    tokenizer = load_tokenizer(pretrained_path(source, cfg.paths.cache_dir), m.model_max_length,
                               m.trust_remote_code)
    if _family(cfg) == "llava_onevision" and not m.pretrained_llava:  # as model assembly adds it (a saved one has it)
        tokenizer.add_tokens(["<video>"], special_tokens=True)
    processor = None
    if image_processor:
        from transformers import AutoImageProcessor

        processor = AutoImageProcessor.from_pretrained(pretrained_path(m.pretrained_llava or m.vision_tower,
                                                                       cfg.paths.cache_dir))
        if _family(cfg) != "llava" and not m.pretrained_llava:  # AnyRes: the family's processor around the tower's
            from transformers import AutoConfig

            from llava_hydra.config.families import pinpoints_for
            from llava_hydra.data.anyres import family_image_processor

            vc = AutoConfig.from_pretrained(pretrained_path(m.vision_tower, cfg.paths.cache_dir))
            vc = getattr(vc, "vision_config", vc)
            processor = family_image_processor(_family(cfg), processor, vc,
                                               pinpoints_for(_family(cfg), m.get("image_grid_pinpoints"), vc.image_size))
    return tokenizer, processor, image_tokens_per_image(cfg)


def video_source(cfg, num_image_tokens, image_processor, video_folder: str | None = None):
    """The spec's videos (data/video.py) for a OneVision model (its ImageTokens rule is ``multi_view``),
    else None (a record with a video is then refused)."""
    if not getattr(num_image_tokens, "multi_view", False):
        return None
    from llava_hydra.data.video import VideoSource
    from llava_hydra.data.video_tokens import video_tokens_for

    return VideoSource(video_folder or cfg.data.get("video_folder"), video_tokens_for(num_image_tokens.side, cfg.data),
                       image_processor, cfg.data.allow_images_outside_folder)


def spec_dataset(cfg, data_path: str, tokenizer, image_processor, num_image_tokens,
                 image_token_id: int | None = None, on_bad_sample: str | None = None, image_folder: str | None = None,
                 video_folder: str | None = None):
    """The dataset of ``data_path`` under the spec's ``data.*`` and ``model.model_max_length``
    (``image_folder`` / ``video_folder``: a mixture source's own, instead of ``data.image_folder`` / ``video_folder``)."""
    from llava_hydra.data.dataset import LazySupervisedDataset

    return LazySupervisedDataset(
        data_path, tokenizer, image_processor, template=cfg.data.template,
        image_folder=image_folder or cfg.data.image_folder,
        image_aspect_ratio=cfg.data.image_aspect_ratio, model_max_length=cfg.model.model_max_length,
        image_token_id=image_token_id, num_image_tokens=num_image_tokens,
        on_bad_sample=on_bad_sample or cfg.data.on_bad_sample, cache_dir=cfg.paths.cache_dir,
        allow_images_outside_folder=cfg.data.allow_images_outside_folder, max_image_pixels=cfg.data.max_image_pixels,
        videos=video_source(cfg, num_image_tokens, image_processor, video_folder))
