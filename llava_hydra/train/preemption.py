"""Preemption: the signals that make a run checkpoint at the next optimizer step and exit.

``training.checkpoint_on_signals`` (default ``[SIGTERM, SIGUSR1, SIGUSR2]``) names them:
SIGTERM is what ``scancel``, SLURM preemption, Kubernetes and ``kill`` send; SIGUSR1 is the usual
choice for SLURM's pre-kill warning (``sbatch --signal=USR1@120``); SIGUSR2 is submitit's
(``hydra/launcher=slurm``: ``signal_delay_s`` before the time limit). ``StopSignals`` replaces
their handlers while ``train()`` runs with one that only notes the signal; ``llava_hydra.train.guards``
reads that note at the next step boundary, agrees on it across ranks (a signal may reach only
some of them), saves a checkpoint and stops training. Then ``hand_on``:

- if the signal had a Python handler before ours (submitit's, which requeues the job on rank 0
  and exits), that handler is called now, the checkpoint already on disk;
- otherwise the process ends with ``Preempted``: a ``SystemExit`` with status 128 + the signal's
  number (143 for SIGTERM, 138 for SIGUSR1 on Linux), the status a process killed by that signal
  reports to a shell, so a wrapper, ``torchrun`` or SLURM sees an interrupted run (never a
  finished one, status 0), and a line ``preempted at step N by SIGTERM: checkpoint-N written;
  resume with training.resume_from_checkpoint=auto`` says what happened. A requeued SLURM job
  resumes by itself (``SLURM_RESTART_COUNT``, llava_hydra.commands.launch).

A second signal while the first is being honoured is logged and otherwise ignored (the step and
the save finish); SIGKILL cannot be caught, which is why ``training.save_every_minutes`` exists.
"""

from __future__ import annotations

import logging
import signal
import threading

from llava_hydra.config.schema import CHOICES

log = logging.getLogger("llava_hydra")

SIGNAL_NAMES = CHOICES["training.checkpoint_on_signals"]


class Preempted(SystemExit):
    """The run stopped on a signal after writing its checkpoint; ``code`` is 128 + signal number."""

    def __init__(self, signum: int, message: str):
        super().__init__(128 + signum)
        self.signum = signum
        self.message = message

    def __str__(self) -> str:
        return self.message


def parse_signals(names) -> list[int]:
    """``["SIGTERM", "SIGUSR1", ...]`` -> signal numbers; an unknown name is a ValueError naming the valid ones."""
    out = []
    for sig in [names] if isinstance(names, str) else list(names or []):
        if sig not in SIGNAL_NAMES or not hasattr(signal, sig):
            raise ValueError(f"training.checkpoint_on_signals item {sig!r}: not one of {', '.join(SIGNAL_NAMES)}")
        out.append(int(getattr(signal, sig)))
    return out


class StopSignals:
    """Notes the first of ``signums`` to arrive (``received``) while installed."""

    def __init__(self, signums: list[int]):
        self.signums = list(signums)
        self.received: int | None = None
        self.previous: dict[int, object] = {}  # the handlers ours replaced (kept after restore, for hand_on)
        self.installed = False

    def install(self) -> bool:
        """Replace the handlers; False (nothing installed, with a warning) off the main thread,
        where Python cannot set signal handlers."""
        if not self.signums:
            return False
        if threading.current_thread() is not threading.main_thread():
            log.warning("training.checkpoint_on_signals: training runs off the main thread, where signal handlers "
                        "cannot be set; %s will not save a checkpoint", ", ".join(map(name, self.signums)))
            return False
        self.previous = {s: signal.signal(s, self._note) for s in self.signums}
        self.installed = True
        return True

    def restore(self) -> None:
        if self.installed:
            for s, handler in self.previous.items():
                signal.signal(s, handler if handler is not None else signal.SIG_DFL)
        self.installed = False

    def _note(self, signum: int, frame) -> None:
        if self.received is None:
            self.received = signum
            log.warning("%s received: saving a checkpoint at the end of this optimizer step, then stopping",
                        name(signum))
        else:
            log.warning("%s received while already stopping on %s: finishing the checkpoint first",
                        name(signum), name(self.received))

    def hand_on(self, signum: int, step: int, checkpoint: str | None) -> None:
        """After the checkpoint: call the handler the signal had before (submitit requeues), else
        raise ``Preempted``. ``signum`` is the one the ranks agreed on (this rank may not have had it)."""
        saved = f"{checkpoint} written" if checkpoint else "no checkpoint written"
        message = (f"preempted at step {step} by {name(signum)}: {saved}; resume with "
                   f"training.resume_from_checkpoint=auto (exit status {128 + signum})")
        log.warning(message)
        before = self.previous.get(signum)
        self.restore()
        if callable(before):
            before(signum, None)  # submitit: requeue (rank 0) and sys.exit; on other ranks it returns
        raise Preempted(signum, message)


def name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"
