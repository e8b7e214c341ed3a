"""What a run shows while it trains and what it leaves to look at afterwards.

``RunLog`` takes the place of the Trainer's progress callback: the same progress bar (rate and
time left; off with ``training.disable_tqdm=true``), and instead of a bare dict every
``logging_steps`` a log line with the step, epoch, loss, the learning rate of every trained part
(``learning_rate/<part>``, set by ``LLaVATrainer``), the gradient norm and tokens per second,
written through the ``llava_hydra`` logger, so it lands in the run's log file too. The last
step is always logged, so a run shorter than ``logging_steps`` still reports its loss.

``plot_loss`` draws ``loss.png``: train loss raw and smoothed (centred: no lag), held-out accuracy where there is any.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from transformers.trainer_callback import ProgressCallback

log = logging.getLogger("llava_hydra")

LR_PREFIX = "learning_rate/"


def _num(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def step_line(logs: dict, step: int, max_steps: int, tokens_per_s: float | None) -> str:
    """One log line of a training log dict, e.g.
    ``step 10/50 (epoch 0.2) | loss 5.638 | lr llm 0.0009484, mm_projector 2e-05 | grad_norm 0.87 | 2150 tok/s``."""
    head = f"step {step}/{max_steps}" + (f" (epoch {logs['epoch']:.3g})" if "epoch" in logs else "")
    parts = [head]
    if "train_loss" in logs and "loss" not in logs:  # the Trainer's summary at the end of train()
        parts.append(f"train done in {logs.get('train_runtime', 0):.1f} s, mean loss {_num(logs['train_loss'])}")
        if "train_tokens_per_second" in logs:
            parts.append(f"{logs['train_tokens_per_second']:.0f} tok/s")
        return " | ".join(parts)
    if "loss" in logs:
        parts.append(f"loss {_num(logs['loss'])}")
    sources = [k[len("tokens/"):] for k in logs if k.startswith("tokens/")]  # a mixture's (train.source_loss)
    if sources:
        parts.append("sources " + ", ".join(f"{n} {_num(logs[f'loss/{n}']) if f'loss/{n}' in logs else '-'} "
                                            f"({logs[f'tokens/{n}']} tok)" for n in sources))
    rates = {k[len(LR_PREFIX):]: v for k, v in logs.items() if k.startswith(LR_PREFIX)}
    if rates:
        parts.append("lr " + ", ".join(f"{part} {v:.4g}" for part, v in rates.items()))
    elif "learning_rate" in logs:
        parts.append(f"lr {logs['learning_rate']:.4g}")
    if "grad_norm" in logs:
        parts.append(f"grad_norm {_num(logs['grad_norm'])}")
    if tokens_per_s is not None:
        parts.append(f"{tokens_per_s:.0f} tok/s")
    evals = {k[len("eval_"):]: v for k, v in logs.items() if k.startswith("eval_")}
    if evals:
        parts.append("eval " + ", ".join(f"{k} {_num(v)}" for k, v in evals.items()))
    return " | ".join(parts)


class RunLog(ProgressCallback):
    """The Trainer's progress bar (when ``bar``) with log lines instead of printed dicts."""

    def __init__(self, bar: bool = True):
        super().__init__()
        self.bar = bar
        self.last = (time.time(), 0)  # (time, tokens seen) at the previous loss line

    def on_train_begin(self, args, state, control, **kwargs):
        self.last = (time.time(), state.num_input_tokens_seen)
        if self.bar:
            super().on_train_begin(args, state, control, **kwargs)

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= state.max_steps > 0:
            control.should_log = True  # the final loss, even when max_steps < logging_steps
        if self.training_bar is not None:
            super().on_step_end(args, state, control, **kwargs)

    def on_prediction_step(self, args, state, control, eval_dataloader=None, **kwargs):
        if self.bar:
            super().on_prediction_step(args, state, control, eval_dataloader=eval_dataloader, **kwargs)

    def on_train_end(self, args, state, control, **kwargs):
        if self.training_bar is not None:
            super().on_train_end(args, state, control, **kwargs)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        rate = None
        if "loss" in logs and args.include_num_input_tokens_seen != "no":
            now, tokens = time.time(), state.num_input_tokens_seen
            if now > self.last[0]:
                rate = (tokens - self.last[1]) / (now - self.last[0])
            self.last = (now, tokens)
        line = step_line(logs, state.global_step, state.max_steps, rate)
        if self.training_bar is None:
            log.info(line)
            return
        from tqdm.auto import tqdm

        with tqdm.external_write_mode():  # the bar steps aside for the line and is redrawn below it
            log.info(line)


def final_loss(log_history: list[dict]) -> float | None:
    losses = [e["loss"] for e in log_history if "loss" in e]
    return losses[-1] if losses else None


def smoothed(values: list[float], points_per_side: int | None = None) -> list[float]:
    """Centred moving average, its window narrowed symmetrically at both ends: no lag, so on a short
    run whose loss is still falling the line ends at the last losses (an exponential average, as
    TensorBoard draws, trails them by ~10 points). A straight line is kept as it is. Half-width:
    ``points_per_side``, default a twentieth of the points (at least 1)."""
    n = len(values)
    h = max(1, n // 20) if points_per_side is None else points_per_side
    out = []
    for i in range(n):
        k = min(h, i, n - 1 - i)
        window = values[i - k:i + k + 1]
        out.append(sum(window) / len(window))
    return out


def loss_figure(log_history: list[dict]):
    """The figure of loss.png (None when no loss was logged): train loss raw and smoothed by step,
    held-out accuracy on a second axis (0 to 1, with room above 1.0) where the run evaluated; the
    legend above the plot, where it covers no point."""
    points = [(e["step"], e["loss"]) for e in log_history if "loss" in e]
    if not points:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps, losses = zip(*points)
    fig, ax = plt.subplots(figsize=(6, 3.8))
    ax.plot(steps, losses, color="tab:blue", alpha=0.35, marker="o" if len(points) < 3 else None, label="train loss")
    if len(points) > 2:
        ax.plot(steps, smoothed(list(losses)), color="tab:blue", label="train loss (smoothed)")
    ax.set_xlabel("step")
    ax.set_ylabel("train loss")
    evals = [(e["step"], e["eval_accuracy"]) for e in log_history if "eval_accuracy" in e]
    handles, labels = ax.get_legend_handles_labels()
    if evals:
        acc = ax.twinx()
        acc.plot(*zip(*evals), color="tab:orange", marker="s", linestyle="--", label="eval accuracy", clip_on=False)
        acc.set_ylabel("eval accuracy")
        acc.set_ylim(0, 1.05)  # a point at 1.0 drawn whole
        more = acc.get_legend_handles_labels()
        handles, labels = handles + more[0], labels + more[1]
    ax.legend(handles, labels, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=len(handles), fontsize="small",
              frameon=False)
    fig.tight_layout()
    return fig


def plot_loss(log_history: list[dict], path: Path) -> bool:
    """Write loss.png (``loss_figure``). False (nothing written) when no loss was logged."""
    fig = loss_figure(log_history)
    if fig is None:
        return False
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return True
