"""What the console shows: the run's own lines and progress bar, not other libraries' noise.

``quiet_console(cfg)`` (called before the runner imports torch) keeps these off the console and
writes them to the run's log file at DEBUG level instead:

- bitsandbytes' CPU kernel warning (``Failed to load CPU gemm_4bit_forward ...``) in runs that
  quantize nothing (``lora.bits`` 16 or no LoRA);
- DeepSpeed's ``Setting accelerator to CPU`` in runs without DeepSpeed (DeepSpeed's logger writes
  to stdout itself, so the record is taken at that logger);
- Python warnings of kind FutureWarning / DeprecationWarning raised by other packages (transformers'
  deprecations, torch.distributed's advice to switch launchers), routed through logging.

Progress bars of other libraries (transformers' ``Loading weights`` / ``Writing model shards``,
datasets' ``Saving the dataset``, the hub's) are off (``HF_HUB_DISABLE_PROGRESS_BARS`` /
``HF_DATASETS_DISABLE_PROGRESS_BARS``, unless the environment sets them); the training bar and
the evaluation bar are ours (tqdm directly) and stay.
"""

from __future__ import annotations

import logging
import os
import re

# (logger name prefix, message pattern, when it is noise: a function of the spec)
NOISE = (
    ("bitsandbytes", re.compile(r"."), lambda cfg: not (cfg.lora.enable and cfg.lora.bits in (4, 8))),
    ("DeepSpeed", re.compile(r"Setting accelerator to CPU"), lambda cfg: cfg.deepspeed is None),
    ("py.warnings", re.compile(r"\b(FutureWarning|DeprecationWarning|PendingDeprecationWarning)\b"), lambda cfg: True),
)
QUIET_BARS = ("HF_HUB_DISABLE_PROGRESS_BARS", "HF_DATASETS_DISABLE_PROGRESS_BARS")


class _Noise(logging.Filter):
    """Matches the records of ``rules`` (logger prefix, message pattern)."""

    def __init__(self, rules):
        super().__init__()
        self.rules = rules

    def matches(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR or record.name.startswith("llava_hydra"):
            return False
        return any((record.name == name or record.name.startswith(name + ".")) and pattern.search(record.getMessage())
                   for name, pattern in self.rules)


class OffTheConsole(_Noise):
    def filter(self, record):
        return not self.matches(record)


class DebugInTheFile(_Noise):
    def filter(self, record):
        if self.matches(record):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return True


class ToTheFileOnly(_Noise):
    """On a logger that does not propagate (DeepSpeed's): noise goes to the root's files, at DEBUG."""

    def filter(self, record):
        if not self.matches(record):
            return True
        for handler in logging.getLogger().handlers:
            if isinstance(handler, logging.FileHandler):
                handler.handle(record)  # its DebugInTheFile filter demotes it
        return False


def quiet_console(cfg) -> None:
    """Install the filters on the root logger's handlers (Hydra's console and log file), DeepSpeed's
    logger and Python's warnings; turn other libraries' progress bars off. Safe to call twice."""
    for name in QUIET_BARS:
        os.environ.setdefault(name, "1")
    rules = tuple((name, pattern) for name, pattern, applies in NOISE if applies(cfg))
    logging.captureWarnings(True)
    root = logging.getLogger()
    for handler in root.handlers:
        for f in [f for f in handler.filters if isinstance(f, _Noise)]:
            handler.removeFilter(f)
        file = isinstance(handler, logging.FileHandler)
        handler.addFilter(DebugInTheFile(rules) if file else OffTheConsole(rules))
        if file and handler.level > logging.DEBUG:
            handler.setLevel(logging.DEBUG)
    deepspeed = logging.getLogger("DeepSpeed")
    for f in [f for f in deepspeed.filters if isinstance(f, _Noise)]:
        deepspeed.removeFilter(f)
    deepspeed.addFilter(ToTheFileOnly(rules))
