"""After training: load a model for inference, ask it questions in batches, score the answers.

``loading`` (run dir / LoRA run / merged / HF-native folder -> model + processor),
``generation`` (prompts through the saved chat template, batched greedy answers),
``sharding`` (the one generation loop: questions sharded over ranks, batched, gathered; also
used by ``llava_hydra.evaluate``),
``benchmarks`` (LLaVA's question formats and prompt suffixes, answers JSONL),
``scorers`` (LLaVA's scoring scripts), ``submission`` (server files), ``owndata`` (held-out
training-format file), ``cli`` (``python -m llava_hydra.eval``).
"""
