"""llava_hydra: a Hydra-configured runner for LLaVA-style visual instruction tuning.

The package's folders are its layers, in the order data flows; a module imports only from its
own layer and the layers before it (tests/test_layout.py checks this):

- ``config``   the run spec: schema, pre-flight validation, names read from transformers,
               where this process stands among the run's processes, the spec a run leaves behind
- ``data``     records, templates, tokens + labels, images -> pixels, lengths, dataset + collator
- ``sampling`` the order of samples in steps (grouped sampler) and packing rows
- ``model``    families, assembly from LLM + tower, freezing, precision, LoRA, processor
- ``eval``     held-out exact match, benchmarks, scorers, sharded generation, loading for inference
- ``train``    LLaVATrainer, optimizer groups, checkpoints, progress
- ``commands`` the entry points a user types, each thin: the run, launch/workers, sweeps,
               trackers, chat, merge, the eval app

``python -m llava_hydra``, ``.chat``, ``.merge`` and ``.eval`` are shims into ``commands``.
"""

__version__ = "0.1.0"
