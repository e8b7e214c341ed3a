"""Command-line entry: ``python -m llava_hydra [overrides]``.

Only Hydra, the config schema and its check are imported here, so ``--cfg job``, ``--help``
and config errors answer in about a second. Before Hydra composes, the command line's words are
checked (llava_hydra.config.overrides: a key typed without ``+`` that is no field, with the key it
nearly is; a path typed as a group's option; an unknown option). The task function then validates
the spec (llava_hydra.config.validate: bad choices, numbers, ``+training`` keys, missing local model
and data paths, each by key name), answers a run directory another run left (commands.taken_run_dir:
the ways out that work; a finished run asked to resume: exit 0), quiets other libraries' console
noise (commands.console), and only then imports the runner (torch, transformers).

Under a multi-process launcher (torchrun, ``deepspeed --module``) every rank composes the
same spec into the same run directory (it has no timestamp); only rank 0 writes Hydra's
``.hydra/`` and log file. The ``--local_rank=N`` that the ``deepspeed`` launcher appends is
taken off the command line (into ``LOCAL_RANK``) before Hydra, which would reject it, sees it.
"""

import os
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from llava_hydra.config.schema import register_configs
from llava_hydra.config.distributed import failure_reported_to_launcher, is_main_process
from llava_hydra.config.overrides import override_problems
from llava_hydra.config.validate import TYPED_GROUPS, SpecError, group_option_problems, validate
from llava_hydra.config.sweep_dir import register_resolver

register_configs()
register_resolver()  # ${llava_sweep_dir:...}: hydra.sweep.dir, one per sweep


def take_local_rank(argv: list[str]) -> list[str]:
    """argv without ``--local_rank=N`` / ``--local_rank N``; N goes to ``LOCAL_RANK``."""
    out, i = [], 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--local_rank=") or arg.startswith("--local-rank="):
            os.environ.setdefault("LOCAL_RANK", arg.split("=", 1)[1])
        elif arg in ("--local_rank", "--local-rank") and i + 1 < len(argv):
            os.environ.setdefault("LOCAL_RANK", argv[i + 1])
            i += 1
        else:
            out.append(arg)
        i += 1
    return out


def quiet_non_zero_rank(argv: list[str]) -> list[str]:
    """Ranks other than 0 neither write ``.hydra/`` nor share rank 0's log file."""
    if is_main_process():
        return argv
    return [*argv, "hydra.output_subdir=null", "hydra/job_logging=stdout"]


# The configs are the package llava_hydra.conf (conf/ at the repository top, shipped in the wheel).
@hydra.main(version_base="1.3", config_path="pkg://llava_hydra.conf", config_name="config")
def main(cfg: DictConfig):
    try:  # every value a typo can break, before torch is imported (llava_hydra.config.validate)
        validate(cfg)
    except SpecError as e:  # the message names every bad key; a traceback would add nothing
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            raise  # a sweep marks this job failed (summary.json) and runs the others
        raise SystemExit(f"error: {e}") from None
    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    if not multirun:  # a directory another run left: the ways out that work, before torch (commands.taken_run_dir)
        from llava_hydra.commands.launch import resume_request
        from llava_hydra.commands.taken_run_dir import run_dir_verdict

        verdict = run_dir_verdict(cfg, resume_request(cfg.training.resume_from_checkpoint))
        if verdict is not None:
            status, message = verdict
            if status == 0:
                print(message)
                return None
            raise SystemExit(f"error: {message}")
    from llava_hydra.commands.console import quiet_console

    quiet_console(cfg)  # other libraries' warnings and bars: in the log file, not on the console
    from llava_hydra.commands.runner import run
    from llava_hydra.train.checkpoints import CheckpointError, RunDirError

    try:
        with failure_reported_to_launcher():  # torchrun's closing report names this rank's error
            return run(cfg)
    except (RunDirError, CheckpointError) as e:  # a run directory in use, a damaged checkpoint: the message says it all
        if multirun:
            raise
        raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
    sys.argv = [sys.argv[0], *quiet_non_zero_rank(take_local_rank(sys.argv[1:]))]
    # training.learnig_rate=1e-4, model=/models/x (llava_hydra.config.overrides), model=vicuna14b: one line each
    flagged = override_problems(sys.argv[1:], (*TYPED_GROUPS, "recipe"))
    unknown = [p for _, p in flagged] + group_option_problems([a for a in sys.argv[1:] if a not in dict(flagged)])
    if unknown:
        raise SystemExit("error: " + "\n".join(unknown))
    try:
        main()
    finally:  # after every job of the app (a sweep's too): torch is loaded only if a run started
        if "torch" in sys.modules:
            from llava_hydra.config.distributed import end_process_group

            end_process_group()
