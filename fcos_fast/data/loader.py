"""Data loaders for training (an endless, resumable, sharded stream) and evaluation.

Training is counted in iterations. ``TrainingSampler`` walks an endless sequence of
epochs, each a permutation of the dataset drawn from ``(seed, epoch)``; process ``rank``
of ``world_size`` takes every ``world_size``-th position. Each position yields
``(index, sample_seed)``, and ``AugmentedDataset`` seeds the sample's augmentation from
``sample_seed``: the stream is a pure function of the position, so a run resumed at
iteration ``i`` (``start`` = the number of samples this process has consumed) sees
exactly the batches an uninterrupted run would.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from fcos_fast.data.transforms import Compose


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


def collate(batch: list[tuple[Any, Any]]) -> tuple[list, list]:
    """``[(image, target), ...] -> ([images], [targets])`` (images keep their sizes)."""
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
    return iter(DataLoader(AugmentedDataset(dataset, transform), batch_sampler=batches,
                           collate_fn=collate, num_workers=num_workers,
                           persistent_workers=num_workers > 0))


class _BatchStream(Sampler):
    """Groups an endless index stream into lists of ``batch_size`` (a batch sampler)."""

    def __init__(self, stream: Iterator, batch_size: int) -> None:
        self.stream, self.batch_size = stream, batch_size

    def __iter__(self) -> Iterator[list]:
        while True:
            yield list(itertools.islice(self.stream, self.batch_size))


def test_loader(dataset: Dataset, *, batch_size: int, rank: int = 0, world_size: int = 1,
                num_workers: int = 0) -> DataLoader:
    """This process's share of ``dataset``, in order, untransformed."""
    return DataLoader(dataset, batch_size=batch_size,
                      sampler=InferenceSampler(len(dataset), rank=rank, world_size=world_size),
                      collate_fn=collate, num_workers=num_workers)
