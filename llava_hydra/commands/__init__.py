"""The commands layer: the entry points a user types, each thin, wiring the layers below.

``runner`` (``python -m llava_hydra``: one run, narrated step by step), ``launch`` / ``worker``
(``launcher.nproc_per_node`` processes), ``sweep`` (multirun summaries), ``tracking`` (wandb,
TensorBoard, MLflow), ``chat``, ``merge``, ``eval_cli`` (``python -m llava_hydra.eval``). May
import every other layer; nothing imports it but the shims at the package's top.
"""
