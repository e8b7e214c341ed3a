"""``python -m llava_hydra.eval``: see eval/cli.py."""

from llava_hydra.eval.cli import main

if __name__ == "__main__":
    main()
