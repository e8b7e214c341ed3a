"""The eval layer: a trained (or training) model answers questions, and the answers are scored.

``heldout`` (exact match on held-out conversations, during and after training), ``sharding`` (the
one generation loop: questions sharded over ranks, batched, gathered), ``generation`` (prompts
through the saved chat template, batched greedy answers), ``loading`` (run dir / LoRA run /
merged / HF-native folder -> model + processor), ``benchmarks`` (LLaVA's question formats and
prompt suffixes, answers JSONL), ``scorers``, ``mme`` and ``vqa_normalize`` (LLaVA's scoring
scripts), ``mmbench`` (the TSV as LLaVA reads it), ``submission`` (server files), ``owndata`` (a
held-out training-format file). Imports from ``config``, ``data`` and ``model``;
``python -m llava_hydra.eval`` is ``commands.eval_cli``.
"""
