"""``python -m llava_hydra.eval``: a shim; the command is llava_hydra.commands.eval_cli."""

from llava_hydra.commands.eval_cli import main

if __name__ == "__main__":
    main()
