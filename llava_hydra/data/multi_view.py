"""LLaVA-OneVision's multi-image layout on the data side: the pixels of a sample with several images.

A OneVision sample with one image is cut into AnyRes crops (anyres.py). A record with several images
is not: LLaVA-NeXT's ``train.py`` processes each of them with ``process_image(f, "pad")`` (expand to
a square filled with the image mean, then the tower's resize: one view), its ``llava_arch`` gives a
one-view image its base features + one ``image_newline`` (``spatial_unpad``), and transformers does the
same from ``batch_num_images`` (``LlavaOnevisionModel.get_image_features``: an image of a sample with
``n != 1`` images takes one view; ``LlavaOnevisionProcessor`` counts ``num_image_tokens + 1`` for it).
So each image here is one padded base view made by transformers' own image processor called as a
client calls it for one sample (``images=[[a, b, ...]]``), and the sample carries ``batch_num_images``
(how many images it has) for the model. Token counts: ``ImageTokens.runs`` (image_tokens.py).

Truncation at ``model_max_length`` may keep only some of a record's images. Two or more stay one view
each. Exactly one kept of several cannot be told to the model (``batch_num_images == 1`` means crops,
and its run was counted as one view): that sample is refused as ``multi_image_layout``
(``keeps_one_of_several`` finds such records for ``data.check``).
"""

from __future__ import annotations

from typing import Callable

from llava_hydra.data.images import ImageError, ImageSource


def is_multi_view(image_processor) -> bool:
    """OneVision's image processor: several images of one sample take a padded base view each."""
    return type(image_processor).__name__.startswith("LlavaOnevision")


def multi_view_images(source: ImageSource, names: list[str], image_processor, of: int,
                      check: Callable[[ImageSource, str, tuple[int, int]], None]) -> dict:
    """The kept images ``names`` of a record of ``of`` (> 1) images: ``pixel_values`` (n, C, h, w), one
    padded base view each, ``image_sizes`` (n, 2) and ``batch_num_images`` [n]. ``check(source, name,
    decoded)``: ImageError unless the decoded size is the one its run was counted from (anyres.DecodedSize)."""
    import torch

    if len(names) == 1:
        raise ImageError(f"truncation at model_max_length keeps 1 of this record's {of} images: OneVision counted its "
                         f"run as one of several (a base view + a newline), and a sample with one image is cut into "
                         f"crops by the model (transformers' batch_num_images); raise model.model_max_length or "
                         f"shorten the record", "multi_image_layout")
    rgbs = [source.open(name) for name in names]
    out = image_processor(images=[rgbs], return_tensors="pt")  # one sample of n images: batch_num_images [n]
    pixels, sizes = out["pixel_values"], out["image_sizes"]
    if pixels.dim() == 5:  # (n, views, C, h, w), one view each
        if pixels.shape[1] != 1:
            raise AssertionError(f"{type(image_processor).__name__} made {pixels.shape[1]} views of an image of "
                                 f"a {len(names)}-image sample, expected 1")
        pixels = pixels[:, 0]
    for name, size in zip(names, sizes.tolist()):
        check(source, name, tuple(size))
    return {"pixel_values": pixels, "image_sizes": sizes, "batch_num_images": torch.tensor([len(names)])}


def keeps_one_of_several(ds, i: int) -> str | None:
    """For ``data.check``: why record i of a LazySupervisedDataset would be refused because truncation keeps
    one of its several images (OneVision only), else None. Encodes the record (no image decoded); call it for
    over-length records only."""
    if not getattr(ds.image_tokens, "multi_view", False):
        return None
    try:
        e, images = ds.encode(i)
    except ValueError:  # nothing to train, or a bad record: found by the other checks
        return None
    if len(images) > 1 and e.num_images == 1:
        return (f"truncation at model_max_length={ds.model_max_length} keeps 1 of its {len(images)} images "
                f"(a OneVision image of several is one view + a newline; one alone is cropped)")
    return None
