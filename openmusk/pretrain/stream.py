"""A deterministic, resumable stream of global batches from WebDataset shards, in two split modes.

``split="samples"`` (default): every rank and every DataLoader worker walks the same global sample
order (shards shuffled per epoch, then a seeded shuffle buffer), cuts it into global batches, and
decodes only its own part: rank r takes slice r of each global batch, worker w the batches whose
running index is w modulo the number of workers (the DataLoader's round-robin puts them back in
order). Each sample is decoded with its own generator seeded by (seed, epoch, sample index), so
augmentations and masks do not depend on how many ranks or workers there are: 1 process and N
processes see the same global batches. Every rank reads every shard (decoding only its part).

``split="shards"``: for corpora of millions of samples, each rank READS only its own shards. Per
epoch the shards are permuted (seed, epoch; the same permutation on every rank) and rank r takes
every world-th shard from position r, so the ranks' shard sets are disjoint and together hold the
whole corpus once per epoch. A rank streams its shards through its own shuffle buffer (seed, epoch,
rank) and cuts consecutive local batches of ``global_batch / world`` samples; batches run on across
epoch ends (the last samples of epoch e and the first of e + 1 share a batch), so every sample of
an epoch is used once. Ranks with more data reach their epoch ends later; decoding is seeded by
(seed, epoch, rank, index), so the batches depend on the number of ranks.

The position (epoch, batch in epoch or, per-shard, samples of the epoch read by this rank, batches
so far) travels with every batch and is what a checkpoint stores to resume exactly (per rank in
per-shard mode).
"""
from __future__ import annotations

import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Literal, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from openmusk.data.shards import iter_tar_samples, list_shards

__all__ = ["StreamPosition", "ShardStream", "collate", "JointLoader"]

Decoder = Callable[[dict, np.random.Generator], dict]


@dataclass
class StreamPosition:
    """Where a stream stands: the next batch to read is ``batch`` of ``epoch`` (``total`` read so far);
    in per-shard mode ``batch`` counts this rank's samples of ``epoch`` already read."""

    epoch: int = 0
    batch: int = 0
    total: int = 0


def collate(items: Sequence[dict]) -> dict:
    """Stack tensors key by key; other values become lists."""
    out: dict[str, Any] = {}
    for k in items[0]:
        vals = [it[k] for it in items]
        out[k] = torch.stack(vals) if isinstance(vals[0], torch.Tensor) else vals
    return out


class ShardStream(IterableDataset):
    """Endless stream of this rank's part of each global batch, decoded by ``decode``.

    ``decode(sample, rng)`` turns a raw shard sample (extension -> bytes) into a dict of tensors; a
    sample it cannot decode is reported on stderr with its shard and key and replaced by another
    sample of the same local batch, so batch shapes stay equal across ranks.
    """

    def __init__(self, shards, decode: Decoder, global_batch: int, seed: int = 0,
                 shuffle_buffer: int = 1000, rank: int = 0, world: int = 1, name: str = "data",
                 split: Literal["samples", "shards"] = "samples"):
        self.shards = [str(p) for p in list_shards(shards)]
        if not self.shards:
            raise ValueError(f"{name}: no shards found in {shards!r}")
        missing = [p for p in self.shards if not Path(p).is_file()]
        if missing:
            raise FileNotFoundError(f"{name}: shard(s) not found: {', '.join(missing[:5])}")
        if global_batch % world:
            raise ValueError(f"{name}: global batch {global_batch} is not divisible by {world} ranks")
        if split not in ("samples", "shards"):
            raise ValueError(f"{name}: split must be 'samples' or 'shards', got {split!r}")
        if split == "shards" and len(self.shards) < world:
            raise ValueError(f"{name}: per-shard split needs at least one shard per rank "
                             f"({len(self.shards)} shards, {world} ranks); use split: samples")
        self.split = split
        self.decode, self.global_batch, self.seed = decode, global_batch, seed
        self.shuffle_buffer, self.rank, self.world, self.name = shuffle_buffer, rank, world, name
        self.position = StreamPosition()

    def state_dict(self) -> dict:
        """The position to store in a checkpoint."""
        return asdict(self.position)

    def load_state_dict(self, state: dict) -> None:
        """Continue from a stored position (takes effect at the next ``iter``)."""
        self.position = StreamPosition(**state)

    def samples(self, epoch: int) -> Iterator[dict]:
        """The global sample order of one epoch: shards permuted, then a seeded shuffle buffer."""
        rng = np.random.default_rng([self.seed, epoch, 7])
        order = [self.shards[i] for i in rng.permutation(len(self.shards))]
        yield from _buffer_shuffle(order, rng, self.shuffle_buffer)

    def rank_shards(self, epoch: int) -> list[str]:
        """Per-shard mode: the shards this rank reads in ``epoch`` (disjoint across ranks)."""
        perm = np.random.default_rng([self.seed, epoch, 7]).permutation(len(self.shards))
        return [self.shards[i] for i in perm[self.rank::self.world]]

    def rank_samples(self, epoch: int) -> Iterator[dict]:
        """Per-shard mode: this rank's sample order of one epoch (its shards, its shuffle buffer)."""
        rng = np.random.default_rng([self.seed, epoch, 11, self.rank])
        yield from _buffer_shuffle(self.rank_shards(epoch), rng, self.shuffle_buffer)

    def _decode_items(self, raw: list[tuple[int, int, dict]]) -> dict:
        """Per-shard mode: decode (epoch, index, sample) items of one local batch."""
        return self._decode_batch([(sample, [self.seed, epoch, idx, self.rank, 3]) for epoch, idx, sample in raw])

    def _decode_batch(self, seeded: list[tuple[dict, list[int]]]) -> dict:
        """Decode (sample, rng seed) pairs into one batch; an undecodable sample is reported on
        stderr and replaced by a decoded one, so the batch keeps its size."""
        items, bad = [], []
        for sample, seed in seeded:
            try:
                items.append(self.decode(sample, np.random.default_rng(seed)))
            except Exception as e:  # noqa: BLE001 - any corrupt sample is skipped and reported
                bad.append(sample)
                print(f"{self.name}: skipped sample {sample.get('__key__')!r} of "
                      f"{sample.get('__shard__')}: {type(e).__name__}: {e}", file=sys.stderr)
        if not items:
            keys = [s.get("__key__") for s in bad]
            raise ValueError(f"{self.name}: every sample of a local batch failed to decode: {keys}")
        items += [items[i % len(items)] for i in range(len(bad))]
        return collate(items)

    def _iter_shards(self, wid: int, nw: int) -> Iterator[dict]:
        """Per-shard mode: consecutive local batches of this rank's samples, across epochs."""
        local = self.global_batch // self.world
        start = self.position
        epoch, skip, total = start.epoch, start.batch, start.total
        raw: list[tuple[int, int, dict]] = []
        while True:
            n = 0
            for idx, sample in enumerate(self.rank_samples(epoch)):
                n += 1
                if idx < skip:
                    continue
                raw.append((epoch, idx, sample))
                if len(raw) == local:
                    if (total - start.total) % nw == wid:
                        batch = self._decode_items(raw)
                        batch["__pos__"] = (epoch, idx + 1, total + 1)
                        yield batch
                    total += 1
                    raw = []
            if n == 0:
                raise ValueError(f"{self.name}: rank {self.rank} found no samples in its shards "
                                 f"of epoch {epoch}: {self.rank_shards(epoch)[:3]}")
            epoch, skip = epoch + 1, 0

    def _decode_slice(self, raw: list[dict], epoch: int, first_index: int) -> dict:
        """Decode this rank's samples of one global batch, replacing undecodable ones."""
        local = self.global_batch // self.world
        lo = self.rank * local
        return self._decode_batch([(sample, [self.seed, epoch, first_index + lo + i])
                                   for i, sample in enumerate(raw[lo:lo + local])])

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        if self.split == "shards":
            yield from self._iter_shards(wid, nw)
            return
        start = self.position
        epoch, skip, total = start.epoch, start.batch, start.total
        while True:
            n_in_epoch, raw = 0, []
            first = 0
            for idx, sample in enumerate(self.samples(epoch)):
                raw.append(sample)
                if len(raw) < self.global_batch:
                    continue
                if n_in_epoch >= skip:
                    if (total - start.total) % nw == wid:
                        batch = self._decode_slice(raw, epoch, first)
                        batch["__pos__"] = (epoch, n_in_epoch + 1, total + 1)
                        yield batch
                    total += 1
                n_in_epoch += 1
                raw, first = [], idx + 1
            if n_in_epoch == 0:
                raise ValueError(f"{self.name}: an epoch holds fewer samples than one global "
                                 f"batch ({self.global_batch})")
            epoch, skip = epoch + 1, 0


class JointLoader:
    """Step-wise batches from several named streams (e.g. images and texts for stage 1).

    Each stream runs in its own DataLoader (``num_workers`` processes); ``state_dict`` holds the
    position after the last batch handed out, so a checkpoint taken between steps resumes there.
    """

    def __init__(self, streams: dict[str, ShardStream], num_workers: int = 0):
        self.streams, self.num_workers = streams, num_workers
        self._iters: dict[str, Iterator] | None = None

    def state_dict(self) -> dict:
        """Positions of every stream."""
        return {k: s.state_dict() for k, s in self.streams.items()}

    def load_state_dict(self, state: dict) -> None:
        """Restore positions; the next batch read continues from them."""
        for k, s in self.streams.items():
            if k not in state:
                raise KeyError(f"checkpoint data state has no position for stream {k!r}")
            s.load_state_dict(state[k])
        self._iters = None

    def _start(self) -> None:
        self._iters = {}
        for k, s in self.streams.items():
            # a private generator: starting workers must not draw from the global RNG (drop-path)
            dl = DataLoader(s, batch_size=None, num_workers=self.num_workers,
                            prefetch_factor=2 if self.num_workers else None,
                            generator=torch.Generator().manual_seed(s.seed))
            self._iters[k] = iter(dl)

    def next(self) -> dict[str, dict]:
        """The next step's batch of every stream: {name: batch}."""
        if self._iters is None:
            self._start()
        out = {}
        for k, it in self._iters.items():
            batch = next(it)
            epoch, b, total = batch.pop("__pos__")
            self.streams[k].position = StreamPosition(int(epoch), int(b), int(total))
            out[k] = batch
        return out

    def close(self) -> None:
        """Stop worker processes."""
        self._iters = None


def _buffer_shuffle(shards: list[str], rng: np.random.Generator, size: int) -> Iterator[dict]:
    """The samples of ``shards`` in order, shuffled through a buffer of ``size`` (WebDataset's rule)."""
    buffer: list[dict] = []
    for shard in shards:
        for sample in iter_tar_samples(shard):
            if len(buffer) < size:
                buffer.append(sample)
                continue
            j = int(rng.integers(len(buffer)))
            buffer[j], sample = sample, buffer[j]
            yield sample
    while buffer:
        yield buffer.pop(int(rng.integers(len(buffer))))
