"""The model side of a run, one concept per module (each imports only those above it):

- ``llava``: what a Llava model is made of (projector types, trainable parts, parameter parts)
- ``zero3``: DeepSpeed ZeRO-3 while the model is put together (no-ops without it)
- ``precision``: compute dtype, attention kernel, fp32 masters, the dtype report
- ``projector``: projector weight files (ours and LLaVA's ``mm_projector.bin``)
- ``assemble``: the base model, from an LLM + vision tower or a whole LLaVA checkpoint
- ``freezing``: what learns, and gradient hooks that skip a frozen vision tower
- ``lora``: LoRA / QLoRA adapters on the LLM (PEFT)
- ``placeholder``: the vision tower runs on a zero image for micro-batches without one
- ``build``: ``build_model(cfg)``, the model a run trains
- ``processor``: ``make_processor``, the AutoProcessor saved beside a model
"""

from llava_hydra.model.build import build_model
from llava_hydra.model.processor import make_processor

__all__ = ["build_model", "make_processor"]
