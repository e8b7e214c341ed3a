"""The config layer: what a run is asked to do, known before anything heavy is imported.

``schema`` (the dataclasses Hydra composes onto, the choices and ranges), ``validate`` (the
pre-flight that names every bad key or value), ``hf_source`` (transformers' names read from its
source without importing it), ``distributed`` (rank / world from the launcher's environment, and
joining / leaving the process group), ``run_spec`` (the resolved spec a run leaves for the
commands after it), ``sweep_dir`` (the directory a sweep claims). Imports nothing from the package's other layers; no torch at import time.
"""
