"""Data loaders for training (an endless, resumable, sharded stream) and evaluation.

Training is counted in iterations. ``TrainingSampler`` walks an endless sequence of
epochs, each a permutation of the dataset drawn from ``(seed, epoch)``; process ``rank``
of ``world_size`` takes every ``world_size``-th position. Each position yields
``(index, sample_seed)``, and ``AugmentedDataset`` seeds the sample's augmentation from
``sample_seed``: the stream is a pure function of the position, so a run resumed at
iteration ``i`` (``start`` = the number of samples this process has consumed) sees
exactly the batches an uninterrupted run would.

A sample that cannot be read (``DatasetError``: a corrupt image, a size that is not the
annotated one) stops the loop with that one message in the main process, also when
loader worker processes read it (PyTorch would re-raise it there wrapped in the worker's
whole traceback). ``data.num_workers`` is capped at the CPU cores the process may use.
"""

from __future__ import annotations

import functools
import itertools
import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from fcos_fast.data.common import DatasetError, ImageReadError
from fcos_fast.data.transforms import Compose

logger = logging.getLogger(__name__)

#: Appended to the message of an unreadable image met while training or evaluating.
VERIFY_HINT = ("set data.verify_images: true to check every image when the dataset is "
               "built, before any step")


@dataclass
class LoadFailure:
    """A sample that could not be read, handed to the main process as data."""

    message: str


class _Guarded(Dataset):
    """``dataset[key]``, or a ``LoadFailure`` where it raises ``DatasetError``."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: Any) -> Any:
        try:
            return self.dataset[key]
        except ImageReadError as error:
            return LoadFailure(f"{error} ({VERIFY_HINT})")
        except DatasetError as error:
            return LoadFailure(str(error))


def _raise_failures(batches: Iterable) -> Iterator:
    for batch in batches:
        if isinstance(batch, LoadFailure):
            raise DatasetError(batch.message)
        yield batch


def usable_workers(requested: int) -> int:
    """``requested`` loader workers, at most the CPU cores this process may run on (more
    only compete for them; PyTorch warns)."""
    cores = (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
             else os.cpu_count() or 1)
    if requested > cores:
        _log_capped(requested, cores)
    return min(requested, cores)


@functools.lru_cache(maxsize=None)
def _log_capped(requested: int, cores: int) -> None:
    logger.info("data.num_workers %d: %d loader workers, the CPU cores available", requested,
                cores)


class TrainingSampler(Sampler):
    """Endless ``(index, sample_seed)`` stream for one process, starting at ``start``."""

    def __init__(self, size: int, *, seed: int = 0, rank: int = 0, world_size: int = 1,
                 start: int = 0, shuffle: bool = True) -> None:
        if size <= 0:
            raise ValueError("cannot sample from an empty dataset")
        self.size, self.seed, self.shuffle = size, seed, shuffle
        self.rank, self.world_size, self.start = rank, world_size, start

    def _order(self, epoch: int) -> list[int]:
        if not self.shuffle:
            return list(range(self.size))
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.size, generator=generator).tolist()

    def __iter__(self) -> Iterator[tuple[int, int]]:
        position = self.rank + self.start * self.world_size  # in the global stream
        epoch, order = -1, []
        while True:
            if position // self.size != epoch:
                epoch = position // self.size
                order = self._order(epoch)
            yield order[position % self.size], self.seed * 1_000_003 + position
            position += self.world_size


class InferenceSampler(Sampler):
    """Process ``rank``'s contiguous share of ``range(size)`` (every index exactly once)."""

    def __init__(self, size: int, *, rank: int = 0, world_size: int = 1) -> None:
        shard = (size + world_size - 1) // world_size
        self.indices = range(min(rank * shard, size), min((rank + 1) * shard, size))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


class AugmentedDataset(Dataset):
    """``dataset[index]`` transformed with a generator seeded by the key's ``sample_seed``."""

    def __init__(self, dataset: Dataset, transform: Compose) -> None:
        self.dataset, self.transform = dataset, transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        index, sample_seed = key
        image, target = self.dataset[index]
        return self.transform(image, target, torch.Generator().manual_seed(sample_seed))


def collate(batch: list[tuple[Any, Any]]) -> tuple[list, list] | LoadFailure:
    """``[(image, target), ...] -> ([images], [targets])`` (images keep their sizes); the
    first ``LoadFailure`` of the batch instead, if any."""
    failure = next((item for item in batch if isinstance(item, LoadFailure)), None)
    if failure is not None:
        return failure
    images, targets = zip(*batch)
    return list(images), list(targets)


def train_loader(dataset: Dataset, transform: Compose, *, batch_size: int, seed: int,
                 rank: int = 0, world_size: int = 1, start_iter: int = 0,
                 num_workers: int = 0) -> Iterator[tuple[list, list]]:
    """Endless iterator of training batches of ``batch_size`` images for this process,
    positioned after ``start_iter`` iterations."""
    sampler = TrainingSampler(len(dataset), seed=seed, rank=rank, world_size=world_size,
                              start=start_iter * batch_size)
    batches = _BatchStream(iter(sampler), batch_size)
    num_workers = usable_workers(num_workers)
    return _raise_failures(DataLoader(
        _Guarded(AugmentedDataset(dataset, transform)), batch_sampler=batches,
        collate_fn=collate, num_workers=num_workers, persistent_workers=num_workers > 0))


class _BatchStream(Sampler):
    """Groups an endless index stream into lists of ``batch_size`` (a batch sampler)."""

    def __init__(self, stream: Iterator, batch_size: int) -> None:
        self.stream, self.batch_size = stream, batch_size

    def __iter__(self) -> Iterator[list]:
        while True:
            yield list(itertools.islice(self.stream, self.batch_size))


class CheckedLoader:
    """A ``DataLoader`` whose unreadable samples raise ``DatasetError`` in this process."""

    def __init__(self, loader: DataLoader) -> None:
        self.loader = loader

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator:
        return _raise_failures(self.loader)


def test_loader(dataset: Dataset, *, batch_size: int, rank: int = 0, world_size: int = 1,
                num_workers: int = 0) -> CheckedLoader:
    """This process's share of ``dataset``, in order, untransformed."""
    return CheckedLoader(DataLoader(
        _Guarded(dataset), batch_size=batch_size,
        sampler=InferenceSampler(len(dataset), rank=rank, world_size=world_size),
        collate_fn=collate, num_workers=usable_workers(num_workers)))
