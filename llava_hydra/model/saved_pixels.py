"""The image processor a saved model carries: one that makes the pixels training made.

Training makes pixels by ``data.image_aspect_ratio`` (data/pixels.py): ``square`` runs the vision
tower's own processor on the image (CLIP: resize the shortest edge, centre crop; SigLIP: resize
to height x width), ``pad`` first expands the image to a square of the processor's mean colour
(LLaVA's ``expand2square``: ``int(255 * mean)``, the image centred, offsets floored) and then runs
the same processor. A client that loads the saved folder with transformers alone gets:

- ``pad``: transformers' ``LlavaImageProcessor`` with ``do_pad=True`` (its ``pad_to_square``
  fills with ``int(255 * image_mean)`` and centres the image with floored offsets, as
  ``expand2square``) and the tower's resize / crop / rescale / normalize settings
  (:func:`pad_processor`). Saved as ``image_processor_type: LlavaImageProcessor``: transformers
  loads its torchvision backend where torchvision is installed, its PIL backend otherwise.
- ``square``: the tower's processor, without padding (:func:`square_processor`).

Each mode and tower is a function of its own; :func:`for_aspect` picks one. A processor this
module does not know how to carry (tiling, a longest-edge resize, ...) is kept as it is, with a
warning: its clients may not see the pixels training saw.
"""

from __future__ import annotations

import logging

from llava_hydra.data.pixels import check_aspect, pads_to_square, without_padding

log = logging.getLogger(__name__)

# the tower processor's settings a LlavaImageProcessor takes over (its own defaults are CLIP-224's)
_SHARED = ("do_resize", "size", "resample", "do_rescale", "rescale_factor", "do_normalize", "image_mean",
           "image_std", "do_convert_rgb")


def _backend(image_processor) -> str:
    names = {c.__name__ for c in type(image_processor).__mro__}
    return "torchvision" if "TorchvisionBackend" in names else "pil" if "PilBackend" in names else "other"


def _plain_resize(image_processor) -> bool:
    """A resize this module can carry: shortest edge (CLIP) or height x width (SigLIP), no tiling."""
    size = getattr(image_processor, "size", None)
    if getattr(image_processor, "image_grid_pinpoints", None) or size is None:
        return False
    if getattr(size, "longest_edge", None):
        return False
    return bool(getattr(size, "shortest_edge", None) or (getattr(size, "height", None) and getattr(size, "width", None)))


def _settings(image_processor) -> dict:
    """The tower's steps as LlavaImageProcessor arguments: resize (CLIP's shortest edge or SigLIP's
    height x width), centre crop only where the tower crops, rescale, normalize."""
    out = {key: getattr(image_processor, key) for key in _SHARED if getattr(image_processor, key, None) is not None}
    size = image_processor.size
    out["size"] = ({"shortest_edge": int(size.shortest_edge)} if getattr(size, "shortest_edge", None)
                   else {"height": int(size.height), "width": int(size.width)})
    crops = bool(getattr(image_processor, "do_center_crop", False))
    out["do_center_crop"] = crops
    if crops:
        crop = getattr(image_processor, "crop_size", None)
        out["crop_size"] = {"height": int(crop.height), "width": int(crop.width)}
    return out


def pad_processor(image_processor):
    """transformers' LlavaImageProcessor (same backend as ``image_processor``) that pads to a square
    of the mean colour and then does the tower's steps: training's ``pad`` pixels."""
    if pads_to_square(image_processor):
        return image_processor
    if _backend(image_processor) == "torchvision":
        from transformers.models.llava import LlavaImageProcessor as cls
    else:
        from transformers.models.llava import LlavaImageProcessorPil as cls
    return cls(**_settings(image_processor), do_pad=True)


def square_processor(image_processor):
    """The tower's processor as training's ``square`` path runs it (a padding LLaVA processor, as a
    model saved from a ``pad`` run carries, with its padding turned off)."""
    return without_padding(image_processor)


MODES = {"pad": pad_processor, "square": square_processor}


def for_aspect(image_processor, aspect: str | None):
    """The image processor to save for a model trained with ``image_aspect_ratio=aspect``
    (None: ``image_processor`` unchanged)."""
    if aspect is None:
        return image_processor
    check_aspect(aspect)
    if _backend(image_processor) == "other" or not _plain_resize(image_processor):
        log.warning("saving %s unchanged: no transformers processor set up here reproduces training's %r pixels "
                    "for it; clients that load the folder may see other pixels than training did",
                    type(image_processor).__name__, aspect)
        return image_processor
    return MODES[aspect](image_processor)
