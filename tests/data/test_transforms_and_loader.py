"""Augmentation and the resumable, sharded sampling."""

import itertools

import pytest
import torch

from fcos_fast.data import (InferenceSampler, RandomHorizontalFlip, ResizeShortestEdge,
                            TrainingSampler, collate)


def _sample():
    image = torch.rand(3, 20, 40)
    return image, {"boxes": torch.tensor([[2., 4, 10, 14]]), "labels": torch.tensor([1])}


def test_flip_mirrors_image_and_boxes():
    image, target = _sample()
    flipped, moved = RandomHorizontalFlip(1.0)(image, target, torch.Generator())
    torch.testing.assert_close(flipped, image.flip(-1))
    torch.testing.assert_close(moved["boxes"], torch.tensor([[30., 4, 38, 14]]))
    # The pixels inside the box move with it.
    torch.testing.assert_close(flipped[:, 4:14, 30:38], image[:, 4:14, 2:10].flip(-1))
    same, kept = RandomHorizontalFlip(0.0)(image, target, torch.Generator())
    assert same is image and kept is target


def test_resize_scales_boxes_and_respects_max_size():
    image, target = _sample()
    resized, scaled = ResizeShortestEdge([10], 1000)(image, target, torch.Generator())
    assert resized.shape == (3, 10, 20)
    torch.testing.assert_close(scaled["boxes"], torch.tensor([[1., 2, 5, 7]]))
    capped, _ = ResizeShortestEdge([30], 50)(image, target, torch.Generator())
    assert capped.shape == (3, 25, 50)


def test_resize_draws_from_the_sizes_with_the_generator():
    image, target = _sample()
    transform = ResizeShortestEdge([10, 20, 30], 1000)
    sizes = {transform(image, target, torch.Generator().manual_seed(s))[0].shape[1]
             for s in range(30)}
    assert sizes == {10, 20, 30}
    first = transform(image, target, torch.Generator().manual_seed(3))[0]
    assert torch.equal(first, transform(image, target, torch.Generator().manual_seed(3))[0])


def _take(sampler, n):
    return list(itertools.islice(iter(sampler), n))


def test_training_stream_resumes_exactly():
    full = _take(TrainingSampler(7, seed=3), 30)
    assert _take(TrainingSampler(7, seed=3, start=11), 19) == full[11:]
    # Each epoch is a permutation; epochs differ.
    indices = [index for index, _ in full[:21]]
    assert all(sorted(indices[e * 7:(e + 1) * 7]) == list(range(7)) for e in range(3))
    assert indices[:7] != indices[7:14]
    assert len({seed for _, seed in full}) == 30  # every sample its own augmentation


def test_training_stream_is_sharded():
    full = _take(TrainingSampler(5, seed=1), 20)
    ranks = [_take(TrainingSampler(5, seed=1, rank=r, world_size=2), 10) for r in range(2)]
    assert ranks[0] == full[0::2] and ranks[1] == full[1::2]
    resumed = _take(TrainingSampler(5, seed=1, rank=1, world_size=2, start=4), 6)
    assert resumed == ranks[1][4:]


@pytest.mark.parametrize("size, world_size", [(10, 3), (2, 4), (0, 2), (9, 1)])
def test_inference_shards_cover_every_index_once(size, world_size):
    shards = [list(InferenceSampler(size, rank=r, world_size=world_size))
              for r in range(world_size)]
    assert sum(shards, []) == list(range(size))


def test_collate_keeps_sizes():
    images, targets = collate([(torch.zeros(3, 4, 5), {"a": 1}), (torch.zeros(3, 6, 2), {"a": 2})])
    assert [i.shape[1:] for i in images] == [(4, 5), (6, 2)] and targets == [{"a": 1}, {"a": 2}]
