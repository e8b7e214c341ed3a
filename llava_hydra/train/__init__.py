"""The train layer: one run's optimisation, from a built model and dataset to checkpoints.

``trainer`` (LLaVATrainer and its TrainingArguments), ``param_groups`` (the optimizer's groups:
each trained part at its own rate), ``checkpoints`` (staged writes, manifests, run records,
resume), ``data_tie`` (the data digest checkpoints record and a resume checks; the epoch handed to
the dataset), ``progress`` (the log line, progress bar and loss.png). Imports from ``config``,
``data``, ``sampling``, ``model`` and ``eval`` (held-out accuracy during training).
"""
