"""The trainer's side of a streamed dataset (data.stream.ShardStream): its DataLoader, its exact
mid-epoch resume, and the stream position in every checkpoint.

- The DataLoader is the stream's own (``StreamLoader``): the stream already split the epoch across
  ranks and workers and collated its micro-batches, so it is not handed to accelerate (which would
  have every rank read the whole stream and keep one batch in R, or rank 0 read it all and send
  it out). Its items are groups of micro-batches, flattened here; its length is the rank's
  micro-batch count, equal on every rank. Tensors reach the device through the Trainer's own
  ``_prepare_inputs``.
- Every checkpoint's run record carries ``stream``: the epoch, the micro-batches of it already
  trained on this rank, and the key that decides every rank's samples (sample count, ranks,
  batch, group, seed, buffer, DataLoader workers, the shard index's digest).
- Resuming mid-epoch, the Trainer asks ``get_resumed_dataloader(loader, k)`` to skip k micro-batches:
  the stream starts after them instead (its workers skip the consumed samples without reading,
  data.stream), and a checkpoint whose key differs (another world size, batch, seed, buffer, worker count or
  data) is refused: its step would not see the samples the uninterrupted run would.
"""

from __future__ import annotations

import logging

import torch

from llava_hydra.data.stream import ShardStream
from llava_hydra.train.checkpoints import CheckpointError, read_record

log = logging.getLogger(__name__)


class StreamLoader(torch.utils.data.DataLoader):
    """A ShardStream's loader: one item per micro-batch (its groups flattened), ``len`` in micro-batches."""

    def __iter__(self):
        for group in super().__iter__():
            yield from group

    def __len__(self) -> int:
        return len(self.dataset)

    def set_epoch(self, epoch: int) -> None:
        self.dataset.set_epoch(epoch)


def stream_loader(dataset: ShardStream, args) -> StreamLoader:
    workers = args.dataloader_num_workers
    extra = {"prefetch_factor": args.dataloader_prefetch_factor} if workers else {}
    return StreamLoader(dataset, batch_size=None, num_workers=workers, pin_memory=args.dataloader_pin_memory,
                        persistent_workers=False, multiprocessing_context=args.dataloader_multiprocessing_context,
                        **extra)


class StreamTraining:
    """Trainer mixin: the above for a ShardStream train_dataset; the Trainer's own paths otherwise."""

    def _stream(self):
        return self.train_dataset if isinstance(self.train_dataset, ShardStream) else None

    def get_train_dataloader(self):
        stream = self._stream()
        if stream is None:
            return super().get_train_dataloader()
        stream.resume_at(0)
        return stream_loader(stream, self.args)

    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        self._stream_resume_from = resume_from_checkpoint if isinstance(resume_from_checkpoint, str) else None
        return super().train(resume_from_checkpoint, *args, **kwargs)

    def num_examples(self, dataloader) -> int:
        """A stream's samples (all ranks), not its micro-batches: the Trainer's "Num examples" line and
        its samples/s (a packed stream's rows hold several samples each)."""
        stream = getattr(dataloader, "dataset", None)
        return stream.n if isinstance(stream, ShardStream) else super().num_examples(dataloader)

    def get_resumed_dataloader(self, dataloader, num_batches: int):
        stream = self._stream()
        if stream is None:
            return super().get_resumed_dataloader(dataloader, num_batches)
        saved = read_record(self._stream_resume_from).get("stream") if self._stream_resume_from else None
        if saved is not None:
            here = stream.key()
            saved = {**saved, "key": older_key(saved.get("key") or {}, here.get("workers"))}
            if saved.get("key") != here:
                diff = sorted(k for k in here if saved.get("key", {}).get(k) != here[k])
                raise CheckpointError(
                    f"{self._stream_resume_from} was written by a stream split differently ({', '.join(diff)}: "
                    f"{ {k: saved.get('key', {}).get(k) for k in diff} } then, { {k: here[k] for k in diff} } now); "
                    f"resuming would not see the samples the run would have seen: resume with the same "
                    f"launcher.nproc_per_node, batch size, gradient accumulation, seed, training.dataloader_num_workers, "
                    f"data.stream and shards")
            if saved.get("micro_batches") != num_batches:
                raise CheckpointError(f"{self._stream_resume_from}: its stream position ({saved.get('micro_batches')} "
                                      f"micro-batches into epoch {saved.get('epoch')}) is not the step it was "
                                      f"saved at ({num_batches})")
        stream.resume_at(num_batches)
        log.info("stream: resuming epoch %d after %d micro-batches of this rank (consumed samples not read)",
                 stream.epoch, num_batches)
        return stream_loader(stream, self.args)

    def _save_checkpoint(self, model, trial):
        stream = self._stream()
        if stream is not None:  # the position the next micro-batch would be read from (every rank's is the same)
            steps = max(1, len(stream) // self.args.gradient_accumulation_steps + (
                len(stream) % self.args.gradient_accumulation_steps > 0))
            epoch, done = divmod(self.state.global_step, steps)
            self.run_data = {**(getattr(self, "run_data", None) or {}), "stream": {
                "epoch": epoch, "micro_batches": done * self.args.gradient_accumulation_steps, "key": stream.key()}}
        return super()._save_checkpoint(model, trial)


def older_key(key: dict, workers_now) -> dict:
    """A stream key as this version writes it: before the worker count was a top-level field, packed
    streams kept it under ``packing`` and unpacked ones not at all (unknown: taken to be this run's)."""
    if "workers" in key or not key:
        return key
    packing = key.get("packing")
    if isinstance(packing, dict) and "workers" in packing:
        return {**key, "packing": {k: v for k, v in packing.items() if k != "workers"},
                "workers": max(1, packing["workers"])}
    log.warning("stream checkpoint written before the DataLoader worker count was recorded: resuming as if it "
                "had the same training.dataloader_num_workers as this run")
    return {**key, "workers": workers_now}
