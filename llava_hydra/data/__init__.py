"""Data: conversation templates, tokenize + mask, images, the lazy dataset, the collator
and the synthetic shapes dataset of the embedded default."""
