"""On-device data: the synthetic set, batched augmentation, and the train and evaluation batches
(plasticnet.training.data)."""

import pytest
import torch
import torch.nn.functional as F

from plasticnet.training.data import (
    DeviceAugmenter,
    EvaluationBatches,
    TrainBatches,
    channel_statistics,
    shuffled_batches,
)
from plasticnet.training.datasets import NUM_CLASSES, ImageSet, synthetic_cifar

# ---- the synthetic set -------------------------------------------------------------------


@pytest.mark.parametrize(
    "device",
    [
        "cpu",
        pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")),
    ],
)
def test_synthetic_is_deterministic_cifar_shaped_on_the_device_and_covers_every_class(device):
    train, test = synthetic_cifar(300, 40, seed=3, device=device)
    again, _ = synthetic_cifar(300, 40, seed=3, device=device)
    other, _ = synthetic_cifar(300, 40, seed=4, device=device)
    assert train.images.shape == (300, 3, 32, 32) and train.images.dtype == torch.uint8
    assert test.images.shape == (40, 3, 32, 32) and train.labels.dtype == torch.long
    assert train.images.device.type == test.labels.device.type == device
    assert torch.equal(train.images, again.images) and torch.equal(train.labels, again.labels)
    assert not torch.equal(train.images, other.images)
    assert set(train.labels.tolist()) == set(range(NUM_CLASSES))


def test_synthetic_classes_differ_in_texture_not_in_colour_or_brightness():
    # nearest class centroid on each image's per-channel mean and std: the shortcut an easy
    # set (one colour per class) offers, which would let a model skip learning the shapes
    train, test = synthetic_cifar(2000, 1000, seed=0)

    def colour_statistics(images):
        scaled = images.float() / 255
        return torch.cat([scaled.mean(dim=(2, 3)), scaled.std(dim=(2, 3))], 1)

    features = colour_statistics(train.images)
    centroids = torch.stack([features[train.labels == k].mean(0) for k in range(NUM_CLASSES)])
    predicted = torch.cdist(colour_statistics(test.images), centroids).argmin(1)
    assert (predicted == test.labels).float().mean() < 0.2  # chance is 0.1


def _odd_batch(seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (6, 3, 13, 11), dtype=torch.uint8, generator=generator)


def _augmenter(images, **options):
    mean, std = channel_statistics(images)
    return DeviceAugmenter(mean, std, **options)


def test_without_crop_and_flip_the_augmenter_only_normalises():
    images = _odd_batch()
    augmenter = _augmenter(images, crop_padding=0, flip=False)
    out = augmenter(images, torch.Generator().manual_seed(0))
    mean, std = channel_statistics(images)
    torch.testing.assert_close(out, (images.float() / 255 - mean) / std)
    torch.testing.assert_close(out.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5, rtol=0)


def test_flip_mirrors_some_samples_and_keeps_the_others():
    images = _odd_batch()
    augmenter = _augmenter(images, crop_padding=0, flip=True)
    plain = augmenter.normalise(images)
    out = augmenter(images.repeat(4, 1, 1, 1), torch.Generator().manual_seed(1))
    flipped = [torch.equal(o, p.flip(-1)) for o, p in zip(out, plain.repeat(4, 1, 1, 1))]
    kept = [torch.equal(o, p) for o, p in zip(out, plain.repeat(4, 1, 1, 1))]
    assert all(f or k for f, k in zip(flipped, kept))
    assert any(flipped) and any(kept)


@pytest.mark.parametrize("flip", [False, True])
def test_crop_takes_a_window_of_the_reflect_padded_image(flip):
    images = _odd_batch(seed=2)
    pad = 3
    augmenter = _augmenter(images, crop_padding=pad, flip=flip)
    padded = F.pad(augmenter.normalise(images), (pad,) * 4, mode="reflect")
    out = augmenter(images, torch.Generator().manual_seed(2))
    height, width = images.shape[2:]
    for sample, source in zip(out, padded):
        windows = [
            source[:, dy : dy + height, dx : dx + width] for dy in range(2 * pad + 1) for dx in range(2 * pad + 1)
        ]
        windows += [w.flip(-1) for w in windows] if flip else []
        assert any(torch.equal(sample, w) for w in windows)


def test_cutout_zeroes_one_square_and_keeps_the_rest():
    images = _odd_batch(seed=3)
    augmenter = _augmenter(images, crop_padding=0, flip=False, cutout=5)
    plain = augmenter.normalise(images)
    out = augmenter(images, torch.Generator().manual_seed(3))
    for sample, source in zip(out, plain):
        zero = (sample == 0).all(0)
        rows, columns = zero.any(1).nonzero().flatten(), zero.any(0).nonzero().flatten()
        assert 0 < len(rows) <= 5 and 0 < len(columns) <= 5
        assert zero.sum() == len(rows) * len(columns)  # a (border-clipped) rectangle
        torch.testing.assert_close(sample[:, ~zero], source[:, ~zero])


def test_shuffled_batches_give_ranks_disjoint_equal_batches():
    size, batch = 103, 8
    per_rank = [shuffled_batches(size, batch, torch.Generator().manual_seed(5), rank=r, world_size=3) for r in range(3)]
    assert [len(b) for b in per_rank] == [4, 4, 4]
    seen = torch.cat([torch.cat(b) for b in per_rank])
    assert len(set(seen.tolist())) == seen.numel() and seen.max() < size
    with pytest.raises(ValueError, match="batch_size"):
        shuffled_batches(10, 11, torch.Generator())


def test_every_rank_takes_the_same_number_of_steps_when_the_data_does_not_split_evenly():
    # 11 samples on 2 ranks: rank 0's stride holds 6, rank 1's 5; with batches of 3 rank 0
    # would take a second step that rank 1 never joins (a DDP hang)
    per_rank = [shuffled_batches(11, 3, torch.Generator().manual_seed(0), rank=r, world_size=2) for r in range(2)]
    assert [len(b) for b in per_rank] == [1, 1]
    with pytest.raises(ValueError, match="batch_size: expected at most 5"):
        shuffled_batches(11, 6, torch.Generator(), rank=0, world_size=2)


def _numbered_set(size: int) -> ImageSet:
    images = torch.randint(0, 256, (size, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(size))
    return ImageSet(images, torch.arange(size))


@pytest.mark.parametrize(("rank", "world_size"), [(0, 1), (1, 3)])
def test_train_batches_are_the_shuffled_batches_augmented_from_the_same_generator_states(rank, world_size):
    data = _numbered_set(50)
    augmenter = _augmenter(data.images, crop_padding=2, flip=True, cutout=3)
    generators = [torch.Generator().manual_seed(seed) for seed in (1, 2, 1, 2)]
    batches = TrainBatches(
        data, 4, augmenter, shuffle=generators[0], augment=generators[1], rank=rank, world_size=world_size
    )
    assert len(batches) == 50 // world_size // 4
    epochs = []
    for _ in range(2):  # each iteration is a new epoch with a new permutation
        expected = shuffled_batches(50, 4, generators[2], rank=rank, world_size=world_size)
        steps = list(batches)
        assert len(steps) == len(batches) == len(expected)
        for (inputs, labels), indices in zip(steps, expected):
            assert torch.equal(labels, indices)  # labels are the sample indices
            torch.testing.assert_close(inputs, augmenter(data.images[indices], generators[3]), rtol=0, atol=0)
        epochs.append(torch.cat([labels for _, labels in steps]))
    assert not torch.equal(*epochs)


def test_train_batches_refuse_a_batch_larger_than_a_rank_holds():
    data = _numbered_set(20)
    augmenter = _augmenter(data.images)
    generator = torch.Generator()
    with pytest.raises(ValueError, match="batch_size: expected 1..6 \\(the training samples per rank\\), got 7"):
        TrainBatches(data, 7, augmenter, shuffle=generator, augment=generator, world_size=3)
    with pytest.raises(ValueError, match="got 0"):
        TrainBatches(data, 0, augmenter, shuffle=generator, augment=generator)


def test_train_batches_in_channels_last_hold_the_same_values():
    data = _numbered_set(12)
    augmenter = _augmenter(data.images)

    def first_step(channels_last):
        generators = {"shuffle": torch.Generator().manual_seed(0), "augment": torch.Generator().manual_seed(1)}
        return next(iter(TrainBatches(data, 4, augmenter, **generators, channels_last=channels_last)))[0]

    dense, channels_last = first_step(False), first_step(True)
    assert channels_last.is_contiguous(memory_format=torch.channels_last) and not dense.is_contiguous(
        memory_format=torch.channels_last
    )
    assert torch.equal(dense, channels_last)


def test_evaluation_batches_cover_the_set_once_across_ranks_normalised_not_augmented():
    data = _numbered_set(23)
    augmenter = _augmenter(data.images, crop_padding=4, flip=True, cutout=4)
    per_rank = [EvaluationBatches(data, 3, augmenter, rank=r, world_size=2) for r in range(2)]
    assert [len(b) for b in per_rank] == [4, 4]  # 12 and 11 samples in batches of 3
    seen = []
    for batches in per_rank:
        for _ in range(2):  # iterable again, in the same order
            steps = list(batches)
            assert len(steps) == len(batches)
        for inputs, labels in steps:
            torch.testing.assert_close(inputs, augmenter.normalise(data.images[labels]), rtol=0, atol=0)
            seen += labels.tolist()
    assert sorted(seen) == list(range(23))
