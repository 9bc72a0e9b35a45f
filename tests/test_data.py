"""On-device datasets and batched augmentation (plasticnet.training.data)."""

import argparse
import hashlib
import os
import pickle
import urllib.error

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torchvision.datasets import CIFAR10

from plasticnet.training import cli
from plasticnet.training.data import (
    NUM_CLASSES,
    DataUnavailableError,
    DeviceAugmenter,
    channel_statistics,
    load_cifar10,
    shuffled_batches,
    synthetic_cifar,
)


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


# ---- CIFAR-10 in torchvision's format, on a fixture written here ----


def _write_cifar_fixture(root, per_batch: int = 4, seed: int = 0) -> tuple[np.ndarray, list[int], dict]:
    """CIFAR-10's python pickles (5 train batches, a test batch, the meta file) with tiny random
    contents. Returns the train data, its labels and every file's md5."""
    rng = np.random.default_rng(seed)
    folder = os.path.join(root, CIFAR10.base_folder)
    os.makedirs(folder)
    checksums, train_data, train_labels = {}, [], []
    for name in [n for n, _ in CIFAR10.train_list + CIFAR10.test_list]:
        data = rng.integers(0, 256, (per_batch, 3 * 32 * 32), dtype=np.uint8)
        labels = rng.integers(0, 10, per_batch).tolist()
        if name != "test_batch":
            train_data.append(data)
            train_labels += labels
        with open(os.path.join(folder, name), "wb") as f:
            pickle.dump({"data": data, "labels": labels}, f)
    with open(os.path.join(folder, CIFAR10.meta["filename"]), "wb") as f:
        pickle.dump({"label_names": [f"class{k}" for k in range(10)]}, f)
    for name in os.listdir(folder):
        with open(os.path.join(folder, name), "rb") as f:
            checksums[name] = hashlib.md5(f.read()).hexdigest()
    return np.concatenate(train_data), train_labels, checksums


@pytest.fixture
def cifar_fixture(tmp_path, monkeypatch):
    data, labels, md5 = _write_cifar_fixture(str(tmp_path))
    monkeypatch.setattr(CIFAR10, "train_list", [[n, md5[n]] for n, _ in CIFAR10.train_list])
    monkeypatch.setattr(CIFAR10, "test_list", [[n, md5[n]] for n, _ in CIFAR10.test_list])
    monkeypatch.setattr(CIFAR10, "meta", {**CIFAR10.meta, "md5": md5[CIFAR10.meta["filename"]]})
    return str(tmp_path), data, labels


def test_cifar10_loads_torchvision_format_as_uint8_nchw(cifar_fixture):
    root, data, labels = cifar_fixture
    train, test = load_cifar10(root, download=False)
    assert train.images.shape == (20, 3, 32, 32) and test.images.shape == (4, 3, 32, 32)
    assert torch.equal(train.images, torch.from_numpy(data).view(-1, 3, 32, 32))
    assert train.labels.tolist() == labels


def test_missing_cifar10_without_download_says_where_and_how(tmp_path):
    with pytest.raises(DataUnavailableError, match=f"not found in {tmp_path}.*--data-dir.*--dataset synthetic"):
        load_cifar10(str(tmp_path), download=False)


def test_failed_download_says_where_and_why(tmp_path, monkeypatch):
    def offline(self):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(CIFAR10, "download", offline)
    with pytest.raises(DataUnavailableError, match=f"{tmp_path}.*failed.*no network.*--dataset synthetic"):
        load_cifar10(str(tmp_path), download=True)


def test_cli_without_data_exits_nonzero_with_one_line_and_no_traceback(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    args = parser.parse_args(
        [
            "--dataset",
            "cifar10",
            "--data-dir",
            str(tmp_path / "none"),
            "--no-download",
            "--out",
            str(tmp_path / "run"),
            "--device",
            "cpu",
        ]
    )
    assert cli.run(args) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "Traceback" not in error
    assert "CIFAR-10 not found in" in error and str(tmp_path / "none") in error
