"""The sampling layer: which samples make each optimizer step, in which order.

``sampler`` (the modality/length-grouped sampler: global order, random megabatches, sorting only
inside a step), ``packing_rows`` (rows of several samples drawn at random), ``packing`` (the
packed dataset, its collator and the model patch that keeps samples apart). Imports only from
``config`` and ``data``.
"""
