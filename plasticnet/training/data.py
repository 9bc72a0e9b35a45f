"""Batches of an on-device dataset, with shuffling and augmentation as a few batched tensor ops.

The uint8 images live on the training device (plasticnet.training.datasets loads them).
Shuffling, random crop (reflect padding), horizontal flip and cutout run there, a handful of
batched ops per step: no per-sample Python and no DataLoader workers, so the GPU is never
waiting on the host. TrainBatches yields one epoch of augmented training batches per
iteration, EvaluationBatches a held-out set's normalised batches.
"""

import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F

from plasticnet.training.datasets import ImageSet


def channel_statistics(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std of uint8 images on the [0, 1] scale, shaped (1, 3, 1, 1).

    Pass the training images only, after the validation split is removed: the statistics
    normalise every split, so held-out images must not shape them."""
    scaled = images.float() / 255
    return scaled.mean(dim=(0, 2, 3), keepdim=True), scaled.std(dim=(0, 2, 3), keepdim=True)


class DeviceAugmenter:
    """uint8 batch -> normalised float batch with random crop, flip and cutout, all batched.

    Crop and flip are one gather: each sample's source rows and columns in the reflect-padded
    batch are computed from its random offset (columns reversed when flipped).
    """

    def __init__(
        self, mean: torch.Tensor, std: torch.Tensor, *, crop_padding: int = 4, flip: bool = True, cutout: int = 0
    ):
        if crop_padding < 0 or cutout < 0:
            raise ValueError(f"crop_padding and cutout: expected >= 0, got {crop_padding} and {cutout}")
        self.mean, self.std = mean, std
        self.crop_padding, self.flip, self.cutout = crop_padding, flip, cutout

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        return (images.float() / 255 - self.mean) / self.std

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        batch, _, height, width = images.shape
        device = images.device
        x = self.normalise(images)
        if self.crop_padding or self.flip:
            pad = self.crop_padding
            padded = F.pad(x, (pad, pad, pad, pad), mode="reflect") if pad else x
            offsets = torch.randint(2 * pad + 1, (2, batch, 1), generator=generator, device=device)
            rows = offsets[0] + torch.arange(height, device=device)
            columns = offsets[1] + torch.arange(width, device=device)
            if self.flip:
                flipped = torch.rand(batch, 1, generator=generator, device=device) < 0.5
                columns = torch.where(flipped, columns.flip(1), columns)
            samples = torch.arange(batch, device=device)[:, None, None]
            x = padded[samples, :, rows[:, :, None], columns[:, None, :]].permute(0, 3, 1, 2)
        if self.cutout:
            centres = torch.randint(height, (2, batch, 1, 1), generator=generator, device=device)
            inside_rows = (torch.arange(height, device=device)[:, None] - centres[0]).abs() <= self.cutout // 2
            inside_columns = (torch.arange(width, device=device)[None, :] - centres[1]).abs() <= self.cutout // 2
            x = x * ~(inside_rows & inside_columns)[:, None]
        return x.contiguous()


def shuffled_batches(
    size: int, batch_size: int, generator: torch.Generator, *, rank: int = 0, world_size: int = 1
) -> list[torch.Tensor]:
    """This rank's index batches for one epoch: every rank draws the same permutation (same
    generator state) and takes every world_size-th sample, so ranks see disjoint data.
    Every rank keeps size // world_size samples and drops its incomplete last batch, so every
    rank takes the same number of steps of the same size."""
    permutation = torch.randperm(size, generator=generator, device=generator.device)
    per_rank = permutation[rank::world_size][: size // world_size]
    steps = per_rank.shape[0] // batch_size
    if steps == 0:
        raise ValueError(
            f"batch_size: expected at most {per_rank.shape[0]} (the training samples per rank), got {batch_size}"
        )
    return list(per_rank[: steps * batch_size].view(steps, batch_size))


class TrainBatches:
    """One epoch of augmented training batches per iteration, like a DataLoader over `data` on its device.

    Each iteration draws one permutation from `shuffle` (which every rank seeds alike, so they
    agree on it; see shuffled_batches) and yields (inputs, labels) per step: the inputs
    normalised and augmented by `augmenter` from `augment` (each rank's own stream), in
    channels_last layout when asked. len() is the number of steps per epoch.
    """

    def __init__(
        self,
        data: ImageSet,
        batch_size: int,
        augmenter: DeviceAugmenter,
        *,
        shuffle: torch.Generator,
        augment: torch.Generator,
        rank: int = 0,
        world_size: int = 1,
        channels_last: bool = False,
    ):
        per_rank = len(data) // world_size
        if not 1 <= batch_size <= per_rank:
            raise ValueError(f"batch_size: expected 1..{per_rank} (the training samples per rank), got {batch_size}")
        self.data, self.batch_size, self.augmenter = data, batch_size, augmenter
        self.shuffle, self.augment = shuffle, augment
        self.rank, self.world_size, self.channels_last = rank, world_size, channels_last

    def __len__(self) -> int:
        return len(self.data) // self.world_size // self.batch_size

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        batches = shuffled_batches(
            len(self.data), self.batch_size, self.shuffle, rank=self.rank, world_size=self.world_size
        )
        for indices in batches:
            inputs = self.augmenter(self.data.images[indices], self.augment)
            yield _layout(inputs, self.channels_last), self.data.labels[indices]


class EvaluationBatches:
    """A held-out set's (inputs, labels) batches, normalised by `augmenter` and never augmented.

    Each rank takes every world_size-th sample, so the ranks together cover the set once; the
    last batch may be smaller. Iterable any number of times, in the same order.
    """

    def __init__(
        self,
        data: ImageSet,
        batch_size: int,
        augmenter: DeviceAugmenter,
        *,
        rank: int = 0,
        world_size: int = 1,
        channels_last: bool = False,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size: expected >= 1, got {batch_size}")
        self.images, self.labels = data.images[rank::world_size], data.labels[rank::world_size]
        self.batch_size, self.augmenter, self.channels_last = batch_size, augmenter, channels_last

    def __len__(self) -> int:
        return math.ceil(self.labels.shape[0] / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for images, labels in zip(self.images.split(self.batch_size), self.labels.split(self.batch_size)):
            yield _layout(self.augmenter.normalise(images), self.channels_last), labels


def _layout(inputs: torch.Tensor, channels_last: bool) -> torch.Tensor:
    return inputs.contiguous(memory_format=torch.channels_last) if channels_last else inputs
