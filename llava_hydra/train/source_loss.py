"""Loss and tokens per source of a mixture, at every logged step.

A mixture's batches carry ``source_ids`` (the source of every token, -1 on padding;
``llava_hydra.data.mixture_dataset.SourceCollator``). ``SourceLoss``, a Trainer mixin, takes them
out of the batch before the model sees it, lets the Trainer compute its loss as always, then, with
no gradient, the cross-entropy of every labelled token from the same logits (shifted as the
model's own loss shifts labels: logits at t predict the label at t+1, whose source it counts) and
adds it to that source's sums. Every logged step (a training log: one with ``loss``) the sums are
added up across ranks and logged as ``loss/<source>`` (mean cross-entropy of the source's labelled
tokens since the previous log) and ``tokens/<source>`` (how many labelled tokens: the tokens that
train), then reset. A source with no token in the interval logs ``tokens/<source>`` 0 and no loss.

Relation to ``loss``: the Trainer's step loss is the cross-entropy summed over the step's labelled
tokens divided by their number (every micro-batch and rank: ``num_items_in_batch``), and ``loss``
is the mean of the step losses since the previous log. So with ``training.logging_steps=1`` the
per-source losses weighted by their tokens average to ``loss`` exactly; over longer intervals
they average to the interval's token-weighted loss (equal to ``loss`` when steps hold equal
token counts). A model that returns no logits (a fused loss kernel) logs no per-source values.
"""

from __future__ import annotations

import logging

import torch

from llava_hydra.data.labels import IGNORE_INDEX

log = logging.getLogger(__name__)


def token_losses(logits: torch.Tensor, labels: torch.Tensor, source_ids: torch.Tensor,
                 num_sources: int) -> torch.Tensor:
    """(num_sources, 2) float64: per source, the summed cross-entropy of its labelled tokens and
    their count; one row of logits at a time in float32 (as the model's loss upcasts)."""
    sums = torch.zeros(num_sources, 2, dtype=torch.float64, device=logits.device)
    pad = torch.full_like(labels[:, :1], IGNORE_INDEX)
    targets = torch.cat([labels[:, 1:], pad], dim=1)  # the label each position predicts
    owners = torch.cat([source_ids[:, 1:], torch.full_like(source_ids[:, :1], -1)], dim=1).to(logits.device)
    targets = targets.to(logits.device)
    with torch.no_grad():
        for row in range(logits.shape[0]):
            keep = (targets[row] != IGNORE_INDEX) & (owners[row] >= 0)
            if not keep.any():
                continue
            ce = torch.nn.functional.cross_entropy(logits[row][keep].float(), targets[row][keep], reduction="none")
            both = torch.stack([ce.double(), torch.ones_like(ce, dtype=torch.float64)], dim=1)
            sums.index_add_(0, owners[row][keep], both)
    return sums


class SourceLoss:
    """Trainer mixin: per-source loss and token sums over each logging interval (module docstring)."""

    _source_sums: torch.Tensor | None = None
    _source_warned = False

    def source_names(self) -> list[str] | None:
        data = getattr(self, "train_dataset", None)
        data = getattr(data, "dataset", data)  # packed rows: the dataset they pack
        return getattr(data, "names", None)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        sources = inputs.pop("source_ids", None)
        names = self.source_names() if sources is not None and model.training else None
        if not names:
            return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch)
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        logits = outputs.get("logits") if isinstance(outputs, dict) else None
        if logits is None or logits.shape[:2] != inputs["labels"].shape:
            if not self._source_warned:
                log.warning("per-source loss not logged: the model returned no logits aligned with the labels")
                self._source_warned = True
        else:
            sums = token_losses(logits.detach(), inputs["labels"], sources, len(names))
            self._source_sums = sums if self._source_sums is None else self._source_sums + sums
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        names = self.source_names()
        if "loss" in logs and names:  # a training log: every rank logs it (the Trainer gathered its loss)
            logs.update(self.source_logs(names))
        super().log(logs, start_time)

    def source_logs(self, names: list[str]) -> dict[str, float]:
        """``loss/<source>`` and ``tokens/<source>`` since the last call, summed over ranks; resets the sums."""
        import torch.distributed as dist

        sums = self._source_sums
        if sums is None:
            sums = torch.zeros(len(names), 2, dtype=torch.float64, device=self.args.device)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            sums = sums.to(self.args.device)
            dist.all_reduce(sums)
        self._source_sums = None
        out = {}
        for name, (total, tokens) in zip(names, sums.tolist()):
            if tokens > 0:
                out[f"loss/{name}"] = total / tokens
            out[f"tokens/{name}"] = int(tokens)
        return out
