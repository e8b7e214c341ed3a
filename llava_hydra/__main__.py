"""Command-line entry: ``python -m llava_hydra [overrides]``.

Only Hydra and the config schema are imported here, so ``--cfg job``, ``--help`` and
config errors answer in about a second; the runner (torch, transformers) is imported
inside the task function.
"""

import hydra
from omegaconf import DictConfig

from llava_hydra.config import register_configs

register_configs()


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig):
    from llava_hydra.runner import run

    return run(cfg)


if __name__ == "__main__":
    main()
