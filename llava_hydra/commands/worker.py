"""One of the processes ``launcher.nproc_per_node`` starts (llava_hydra.commands.launch): it runs the
resolved spec the launching job wrote, logging at INFO on rank 0 only.

    python -m llava_hydra.commands.worker <run dir>/launch_spec.yaml
"""

from __future__ import annotations

import logging
import sys

from llava_hydra.config.distributed import is_main_process


def main(spec_file: str) -> None:
    from omegaconf import OmegaConf

    from llava_hydra.commands.runner import run
    from llava_hydra.config.distributed import end_process_group, failure_reported_to_launcher

    logging.basicConfig(level=logging.INFO if is_main_process() else logging.WARNING,
                        format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    try:
        with failure_reported_to_launcher():  # torchrun's closing report names this rank's error
            run(OmegaConf.load(spec_file))
    finally:  # a gloo rank exiting with its group alive can abort, and torchrun fails a finished run
        end_process_group()


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m llava_hydra.commands.worker <run dir>/launch_spec.yaml")
    main(sys.argv[1])
