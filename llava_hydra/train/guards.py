"""What every optimizer step checks before it is applied: is it finite, was the run asked to
stop, is a time-based save due. All ranks decide together.

``StepGuard`` is a TrainerCallback that ``LLaVATrainer`` feeds at two points of each step
(``GuardedSteps``, a base class of it): the loss of every micro-batch (``note_loss``) and, once
the gradient norm is known and before the optimizer applies the step, ``decide``. ``decide`` makes one small all-reduce (MAX of four
numbers; none with one process) so every rank takes the same decision at the same step, even
when only one rank saw a NaN, a signal or its clock pass the save interval:

- a non-finite loss (on any rank) or gradient norm: ``training.on_nonfinite=stop`` (default)
  raises ``NonFiniteError`` naming the step, the rank, the loss and the norm before the optimizer
  applies it, so no NaN reaches the weights or a checkpoint and the run exits non-zero;
  ``skip`` drops the step instead (the optimizer does not apply it; the step still counts, its
  data is consumed, the schedule moves on), logs it and counts it (``skipped_steps``, reported in
  metrics.json). Under fp16 loss scaling an infinite gradient norm is the scaler's overflow, which
  skips the step by itself, so only the loss is checked there. DeepSpeed applies the step inside
  its backward, so ``skip`` is refused under DeepSpeed (``stop`` still stops before any save).
- a stop signal (llava_hydra.train.preemption) on any rank: this step is saved as a checkpoint
  and training stops; ``finish`` then hands the signal on (exit status 128 + signal).
- ``training.save_every_minutes``: rank 0's clock since the last save (or the start) passed the
  interval: this step is saved, whatever ``save_steps`` says.
"""

from __future__ import annotations

import logging
import math
import os
import time

import torch
from transformers import TrainerCallback

from llava_hydra.train.preemption import StopSignals, parse_signals

log = logging.getLogger("llava_hydra")


class NonFiniteError(RuntimeError):
    """The loss or gradient of a step is NaN or infinite (training.on_nonfinite=stop)."""


class StepGuard(TrainerCallback):
    def __init__(self, on_nonfinite: str = "stop", save_every_minutes: float | None = None,
                 checkpoint_on_signals=(), deepspeed: bool = False, loss_scaling: bool = False):
        if on_nonfinite == "skip" and deepspeed:
            raise ValueError("training.on_nonfinite=skip is not possible under DeepSpeed, which applies the step "
                             "inside its backward pass; use training.on_nonfinite=stop")
        self.on_nonfinite = on_nonfinite
        self.save_every_s = save_every_minutes * 60 if save_every_minutes else None
        self.signals = StopSignals(parse_signals(checkpoint_on_signals))
        self.loss_scaling = loss_scaling
        self.step_loss: torch.Tensor | None = None  # this rank's micro-batch losses of the current step, summed
        self.last_save = time.monotonic()
        self.pending = {"save": False, "stop_signal": 0}
        self.stop_signal = 0  # the signal the ranks agreed to stop on
        self.checkpoint: str | None = None  # the checkpoint written for it
        self.skipped_steps: list[int] = []

    # -- fed by the trainer ----------------------------------------------------------------

    def note_loss(self, loss: torch.Tensor) -> None:
        loss = loss.detach().float().sum()
        self.step_loss = loss if self.step_loss is None else self.step_loss + loss

    def decide(self, trainer, grad_norm) -> None:
        """Before the optimizer applies step ``global_step + 1`` (every rank calls it)."""
        step = trainer.state.global_step + 1
        device = trainer.args.device
        loss = self.step_loss if self.step_loss is not None else torch.zeros((), device=device)
        self.step_loss = None
        norm = torch.as_tensor(grad_norm if grad_norm is not None else 0.0, dtype=torch.float32, device=loss.device)
        bad_loss = ~torch.isfinite(loss)
        bad_norm = ~torch.isfinite(norm) if not self.loss_scaling else torch.zeros((), dtype=torch.bool,
                                                                                      device=loss.device)
        rank, world = trainer.args.process_index, trainer.args.world_size
        due = self.save_every_s is not None and rank == 0 and time.monotonic() - self.last_save >= self.save_every_s
        flags = torch.stack([torch.where(bad_loss, float(world - rank), 0.0).to(loss.device),
                             bad_norm.float(), torch.tensor(float(self.signals.received or 0), device=loss.device),
                             torch.tensor(float(due), device=loss.device)])
        if world > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            flags = flags.to(device)
            torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MAX)
        loss_rank, norm_bad, signum, due = (int(v) for v in flags.tolist())
        if loss_rank or norm_bad:
            self._nonfinite(trainer, step, world - loss_rank if loss_rank else None, loss, norm)
        if signum:
            self.pending["stop_signal"] = signum
        if due:
            log.info("step %d: %.4g minutes since the last checkpoint (training.save_every_minutes): saving one",
                     step, self.save_every_s / 60)
        self.pending["save"] = bool(due or signum)

    def _nonfinite(self, trainer, step: int, bad_rank: int | None, loss, norm) -> None:
        what = []
        if bad_rank is not None:
            mine = f"{loss.item():.4g}" if bad_rank == trainer.args.process_index else "non-finite"
            what.append(f"the loss is {mine}" + (f" on rank {bad_rank}" if trainer.args.world_size > 1 else ""))
        if not math.isfinite(norm.item()):
            what.append(f"the gradient norm is {norm.item():.4g}")
        what = " and ".join(what) or "the gradient norm is not finite"
        if self.on_nonfinite == "skip":
            self.skipped_steps.append(step)
            log.warning("step %d: %s: the step is skipped (training.on_nonfinite=skip; %d skipped so far)",
                        step, what, len(self.skipped_steps))
            skip_next_optimizer_step(trainer.optimizer)
            return
        raise NonFiniteError(
            f"step {step}: {what}; training stopped before the optimizer applied it (nothing of this step is "
            f"saved; the latest checkpoint, if any, is from before it). Usual causes: a learning rate too high "
            f"(training.learning_rate={trainer.args.learning_rate}), fp16 overflow (try bf16), bad data. "
            f"training.on_nonfinite=skip drops such steps instead of stopping")

    # -- callback events ----------------------------------------------------------------------

    def on_train_begin(self, args, state, control, **kwargs):
        self.last_save = time.monotonic()

    def on_step_end(self, args, state, control, **kwargs):
        if self.pending["save"]:
            control.should_save = True
        if self.pending["stop_signal"]:
            self.stop_signal = self.pending["stop_signal"]
            control.should_training_stop = True
            control.should_log = True  # the last step's loss, as a finished run logs it
        self.pending = {"save": False, "stop_signal": 0}

    def on_save(self, args, state, control, **kwargs):
        self.last_save = time.monotonic()
        if self.stop_signal and self.checkpoint is None:
            self.checkpoint = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")

    # -- around train() ---------------------------------------------------------------------

    def start(self) -> None:
        self.stop_signal, self.checkpoint, self.skipped_steps = 0, None, []
        self.signals.received = None
        self.signals.install()

    def finish(self, step: int) -> None:
        """After train(): restore the handlers; after a stop signal, hand it on (raises)."""
        if self.stop_signal:
            self.signals.hand_on(self.stop_signal, step, self.checkpoint)
        self.signals.restore()


class GuardedSteps:
    """The two points of a step ``LLaVATrainer`` (a Trainer with ``self.guard``) feeds its guard."""

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        self.guard.note_loss(loss)
        return loss

    def _get_grad_norm(self, model, grad_norm=None):
        """The step's gradient norm; then, before the optimizer applies the step, the guard's
        decision (stop on NaN, skip, save now, stop on a signal)."""
        grad_norm = super()._get_grad_norm(model, grad_norm)
        self.guard.decide(self, grad_norm)
        return grad_norm


def skip_next_optimizer_step(optimizer) -> None:
    """Make the next ``optimizer.step()`` a no-op (once): the step's gradients are not applied."""
    had_own = "step" in vars(optimizer)
    own = vars(optimizer).get("step")

    def skipped(*args, **kwargs):
        if had_own:
            optimizer.step = own
        else:
            del optimizer.step
        return None

    optimizer.step = skipped
