"""``python -m llava_hydra.merge``: a shim; the command is llava_hydra.commands.merge."""

from llava_hydra.commands.merge import main

if __name__ == "__main__":
    main()
