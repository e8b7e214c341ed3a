"""The data layer: records -> tokens, labels and pixels, one sample at a time.

Record files and the memory-mapped record store (checked against what it was built from), conversation templates, tokenize + mask,
images -> pixels, image token counts, the cached length pass, the lazy dataset and its collator,
the synthetic shapes dataset and the tiny parts of the embedded default, and the data commands
(``python -m llava_hydra.data.check`` / ``.preview``). Imports only from ``config``.
"""
