"""``python -m llava_hydra.chat``: a shim; the command is llava_hydra.commands.chat."""

import sys

from llava_hydra.commands.chat import main

if __name__ == "__main__":
    sys.exit(main())
