"""llava_hydra: a Hydra-configured runner for LLaVA-style visual instruction tuning."""

__version__ = "0.1.0"
