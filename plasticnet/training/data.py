"""Datasets that live entirely on the training device, and batched augmentation there.

CIFAR-10 (torchvision's on-disk format, downloaded when online) and a procedural synthetic
set of the same shape are held as uint8 NCHW tensors on the device. Shuffling, random crop
(reflect padding), horizontal flip and cutout are a handful of batched tensor ops per step:
no per-sample Python and no DataLoader workers, so the GPU is never waiting on the host.
"""
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torchvision.datasets import CIFAR10

DATASETS = ("cifar10", "synthetic")
NUM_CLASSES = 10
IMAGE_SIZE = 32


class DataUnavailableError(RuntimeError):
    """The requested data cannot be found or fetched; the message says where and how to fix it."""


@dataclass
class ImageSet:
    """uint8 images (N, 3, 32, 32) and int64 labels (N,), on one device."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return self.labels.shape[0]

    def to(self, device) -> "ImageSet":
        return ImageSet(self.images.to(device), self.labels.to(device))

    def subset(self, size: int | None) -> "ImageSet":
        """The first `size` samples (all for None): a fixed, seed-independent subset."""
        if size is None:
            return self
        if not 0 < size <= len(self):
            raise ValueError(f"subset size: expected 1..{len(self)} (the dataset's size), got {size}")
        return ImageSet(self.images[:size], self.labels[:size])


def load_cifar10(data_dir: str, download: bool) -> tuple[ImageSet, ImageSet]:
    """CIFAR-10 train and test sets from `data_dir`/cifar-10-batches-py, fetched when `download`."""
    def load(train: bool) -> CIFAR10:
        try:
            return CIFAR10(data_dir, train=train, download=False)
        except RuntimeError:
            if not download:
                raise DataUnavailableError(
                    f"CIFAR-10 not found in {data_dir}/{CIFAR10.base_folder} (download disabled). Fix: put the "
                    f"extracted {CIFAR10.filename} there, pass --data-dir DIR holding {CIFAR10.base_folder}, "
                    f"or use --dataset synthetic") from None
        try:
            return CIFAR10(data_dir, train=train, download=True)
        except (OSError, RuntimeError) as error:  # URLError is an OSError; torchvision raises RuntimeError on bad md5
            raise DataUnavailableError(
                f"CIFAR-10 not found in {data_dir}/{CIFAR10.base_folder} and downloading {CIFAR10.url} failed "
                f"({type(error).__name__}: {error}). Fix: download and extract it there when online, pass "
                f"--data-dir DIR holding {CIFAR10.base_folder}, or use --dataset synthetic") from None

    def to_image_set(dataset: CIFAR10) -> ImageSet:
        images = torch.from_numpy(dataset.data).permute(0, 3, 1, 2).contiguous()  # torchvision keeps HWC
        return ImageSet(images, torch.tensor(dataset.targets, dtype=torch.long))

    return to_image_set(load(True)), to_image_set(load(False))


def synthetic_cifar(train_size: int, test_size: int, seed: int) -> tuple[ImageSet, ImageSet]:
    """A CIFAR-shaped 10-class set: each class is a coloured oriented grating (its own hue,
    orientation and frequency), drawn at a random phase and contrast with pixel noise.

    Deterministic given `seed`. Easy enough that a small ResNet is far above chance within
    two short epochs, hard enough (phase, contrast, noise) that it is not solved by one pixel.
    """
    generator = torch.Generator().manual_seed(seed)
    angles = torch.arange(NUM_CLASSES) * (torch.pi / NUM_CLASSES)
    frequencies = 2 * torch.pi * (1.5 + (torch.arange(NUM_CLASSES) % 3)) / IMAGE_SIZE
    colours = 0.3 + 0.7 * torch.rand(NUM_CLASSES, 3, generator=generator)
    coordinate = torch.arange(IMAGE_SIZE, dtype=torch.float32)
    y, x = torch.meshgrid(coordinate, coordinate, indexing="ij")

    def draw(size: int) -> ImageSet:
        labels = torch.randint(NUM_CLASSES, (size,), generator=generator)
        phase = 2 * torch.pi * torch.rand(size, 1, 1, generator=generator)
        contrast = 0.5 + 0.5 * torch.rand(size, 1, 1, 1, generator=generator)
        along = x * torch.cos(angles[labels])[:, None, None] + y * torch.sin(angles[labels])[:, None, None]
        grating = torch.sin(frequencies[labels][:, None, None] * along + phase)[:, None]  # (N, 1, H, W)
        images = 0.5 + 0.5 * contrast * grating * colours[labels][:, :, None, None]
        images = images + 0.15 * torch.randn(images.shape, generator=generator)
        return ImageSet((images.clamp(0, 1) * 255).round().to(torch.uint8), labels)

    return draw(train_size), draw(test_size)


def channel_statistics(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std of uint8 images on the [0, 1] scale, shaped (1, 3, 1, 1)."""
    scaled = images.float() / 255
    return scaled.mean(dim=(0, 2, 3), keepdim=True), scaled.std(dim=(0, 2, 3), keepdim=True)


class DeviceAugmenter:
    """uint8 batch -> normalised float batch with random crop, flip and cutout, all batched.

    Crop and flip are one gather: each sample's source rows and columns in the reflect-padded
    batch are computed from its random offset (columns reversed when flipped).
    """

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, *, crop_padding: int = 4, flip: bool = True,
                 cutout: int = 0):
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


def shuffled_batches(size: int, batch_size: int, generator: torch.Generator, *, rank: int = 0,
                     world_size: int = 1) -> list[torch.Tensor]:
    """This rank's index batches for one epoch: every rank draws the same permutation (same
    generator state) and takes every world_size-th sample, so ranks see disjoint data.
    The incomplete last batch is dropped so every step has the same size on every rank."""
    permutation = torch.randperm(size, generator=generator, device=generator.device)
    per_rank = permutation[rank::world_size]
    steps = per_rank.shape[0] // batch_size
    if steps == 0:
        raise ValueError(f"batch_size: expected at most {per_rank.shape[0]} (the training samples per rank), "
                         f"got {batch_size}")
    return list(per_rank[:steps * batch_size].view(steps, batch_size))
