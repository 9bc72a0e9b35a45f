"""Every dataset the trainer loads (plasticnet.training.datasets), on fixtures written here.

The CIFAR, Fashion-MNIST and image-folder fixtures are tiny files in each format; none of the
real datasets is read, and nothing is downloaded.
"""

import argparse
import hashlib
import os
import pickle
import struct
import urllib.error

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.datasets import CIFAR10, CIFAR100, FashionMNIST

from plasticnet.training import cli
from plasticnet.training.datasets import (
    NUM_CLASSES,
    SYNTHETIC_CLASSES,
    DataUnavailableError,
    ImageSet,
    load_dataset,
    split_validation,
    synthetic_cifar,
)


def _unavailable(match: str):
    return pytest.raises(DataUnavailableError, match=match)


def _one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message and "Fix:" in message and "--dataset synthetic" in message
    return message


# ---- every dataset ----------------------------------------------------------------------


def test_load_dataset_synthetic_has_the_asked_sizes_seed_and_ten_named_classes(tmp_path):
    dataset = load_dataset("synthetic", str(tmp_path / "unused"), synthetic_sizes=(50, 20), seed=7)
    train, test = synthetic_cifar(50, 20, seed=7)
    assert torch.equal(dataset.train.images, train.images) and torch.equal(dataset.test.labels, test.labels)
    assert dataset.num_classes == NUM_CLASSES == len(set(SYNTHETIC_CLASSES))
    assert dataset.classes[0] == "coarse vertical stripes"


@pytest.mark.parametrize("name", ["synthetic", "cifar10", "cifar100", "fashion-mnist"])
def test_image_size_other_than_32_is_refused_outside_an_image_folder(name, tmp_path):
    with pytest.raises(ValueError, match="--image-size applies to imagefolder only"):
        load_dataset(name, str(tmp_path), image_size=16)


def test_unknown_dataset_name_lists_the_known_ones(tmp_path):
    with pytest.raises(ValueError, match="expected one of cifar10, cifar100, fashion-mnist, imagefolder, synthetic"):
        load_dataset("imagenet", str(tmp_path))


# ---- CIFAR-10 and CIFAR-100 in torchvision's format --------------------------------------


def _write_cifar(root, kind, per_file: int = 4, seed: int = 0) -> tuple[np.ndarray, list[int]]:
    """`kind`'s python pickles with tiny random contents (CIFAR-100's with fine and coarse
    labels, as torchvision's format has). Returns the train data and (fine) labels."""
    rng = np.random.default_rng(seed)
    num_classes = 10 if kind is CIFAR10 else 100
    folder = os.path.join(root, kind.base_folder)
    os.makedirs(folder)
    train_data, train_labels = [], []
    for name, _ in kind.train_list + kind.test_list:
        data = rng.integers(0, 256, (per_file, 3 * 32 * 32), dtype=np.uint8)
        labels = rng.integers(0, num_classes, per_file).tolist()
        if name in {n for n, _ in kind.train_list}:
            train_data.append(data)
            train_labels += labels
        entry = {"data": data, "labels": labels}
        if kind is CIFAR100:
            entry = {"data": data, "fine_labels": labels, "coarse_labels": [label // 5 for label in labels]}
        with open(os.path.join(folder, name), "wb") as f:
            pickle.dump(entry, f)
    names = [f"class{k}" for k in range(num_classes)]
    meta = {"label_names": names} if kind is CIFAR10 else {"fine_label_names": names, "coarse_label_names": names[:20]}
    with open(os.path.join(folder, kind.meta["filename"]), "wb") as f:
        pickle.dump(meta, f)
    return np.concatenate(train_data), train_labels


def _accept_files_as_they_are(monkeypatch, root, kind):
    """torchvision checks each file against the real dataset's md5: make it expect the fixture's."""

    def md5(name):
        with open(os.path.join(root, kind.base_folder, name), "rb") as f:
            return hashlib.md5(f.read()).hexdigest()

    monkeypatch.setattr(kind, "train_list", [[n, md5(n)] for n, _ in kind.train_list])
    monkeypatch.setattr(kind, "test_list", [[n, md5(n)] for n, _ in kind.test_list])
    monkeypatch.setattr(kind, "meta", {**kind.meta, "md5": md5(kind.meta["filename"])})


CIFARS = {CIFAR10: ("cifar10", "CIFAR-10"), CIFAR100: ("cifar100", "CIFAR-100")}


@pytest.fixture(params=list(CIFARS), ids=[name for name, _ in CIFARS.values()])
def cifar(request, tmp_path, monkeypatch):
    """(torchvision's class, train data, train labels) of a tiny CIFAR in tmp_path whose md5s torchvision accepts."""
    data, labels = _write_cifar(str(tmp_path), request.param)
    _accept_files_as_they_are(monkeypatch, str(tmp_path), request.param)
    return request.param, data, labels


def test_cifar_loads_torchvision_format_as_uint8_nchw_with_fine_labels_and_class_names(cifar, tmp_path):
    kind, data, labels = cifar
    dataset = load_dataset(CIFARS[kind][0], str(tmp_path))
    assert dataset.train.images.shape == (len(labels), 3, 32, 32) and dataset.test.images.shape == (4, 3, 32, 32)
    assert len(labels) == 4 * len(kind.train_list)
    assert dataset.train.images.dtype == torch.uint8 and dataset.train.labels.dtype == torch.long
    assert torch.equal(dataset.train.images, torch.from_numpy(data).view(-1, 3, 32, 32))
    assert dataset.train.labels.tolist() == labels
    assert dataset.num_classes == (10 if kind is CIFAR10 else 100) and dataset.classes[3] == "class3"


def test_missing_cifar_file_is_named_with_the_folder_and_nothing_is_downloaded(cifar, tmp_path, monkeypatch):
    kind, _, _ = cifar
    name, title = CIFARS[kind]
    os.remove(tmp_path / kind.base_folder / kind.test_list[0][0])
    monkeypatch.setattr(kind, "download", lambda self: pytest.fail("downloaded without download=True"))
    with _unavailable(
        f"{title} in {tmp_path / kind.base_folder}: not found \\(missing {kind.test_list[0][0]}\\)"
    ) as error:
        load_dataset(name, str(tmp_path))
    assert "--data-dir DIR that holds" in _one_line(error) and "--download" in str(error.value)


def test_empty_data_dir_without_download_says_where_and_how(tmp_path):
    with _unavailable(f"CIFAR-10 in {tmp_path / 'cifar-10-batches-py'}: not found.*data_batch_1.*--download") as error:
        load_dataset("cifar10", str(tmp_path))
    _one_line(error)


def test_cifar_file_changed_after_the_fact_fails_its_md5_check(cifar, tmp_path):
    kind, _, _ = cifar
    with open(tmp_path / kind.base_folder / kind.train_list[0][0], "ab") as f:
        f.write(b"partial download")
    with _unavailable(f"{kind.train_list[0][0]} failed the md5 check"):
        load_dataset(CIFARS[kind][0], str(tmp_path))


def test_corrupt_cifar_pickle_is_unreadable_not_a_traceback(cifar, tmp_path, monkeypatch):
    kind, _, _ = cifar
    (tmp_path / kind.base_folder / kind.test_list[0][0]).write_bytes(b"\x80\x04not a pickle")
    _accept_files_as_they_are(monkeypatch, str(tmp_path), kind)  # passes the md5 check, fails to unpickle
    with _unavailable(f"{CIFARS[kind][1]} in {tmp_path / kind.base_folder}: unreadable") as error:
        load_dataset(CIFARS[kind][0], str(tmp_path))
    _one_line(error)


def test_cifar_labels_that_do_not_match_the_images_are_refused(tmp_path, monkeypatch):
    _write_cifar(str(tmp_path), CIFAR100)
    with open(tmp_path / CIFAR100.base_folder / "test", "wb") as f:
        pickle.dump({"data": np.zeros((4, 3072), np.uint8), "fine_labels": [0, 1, 2]}, f)
    _accept_files_as_they_are(monkeypatch, str(tmp_path), CIFAR100)
    with _unavailable("4 images but 3 labels"):
        load_dataset("cifar100", str(tmp_path))


def test_failed_download_says_where_and_why(tmp_path, monkeypatch):
    def offline(self):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(CIFAR10, "download", offline)
    with _unavailable(f"{tmp_path}.*downloading {CIFAR10.url} failed.*no network") as error:
        load_dataset("cifar10", str(tmp_path), download=True)
    assert "pass --download" not in _one_line(error)  # it was passed


def test_cli_without_data_exits_nonzero_with_one_line_and_no_traceback(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    args = parser.parse_args(
        ["--dataset", "cifar10", "--data-dir", str(tmp_path / "none"), "--no-download"]
        + ["--out", str(tmp_path / "run"), "--device", "cpu"]
    )
    assert cli.run(args) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "Traceback" not in error
    assert f"CIFAR-10 in {tmp_path / 'none'}" in error


# ---- Fashion-MNIST's raw IDX files -------------------------------------------------------

_IDX_MAGIC = {3: 2051, 1: 2049}  # uint8 images (N, 28, 28), uint8 labels (N,)


def _write_idx(path, array: np.ndarray, magic: int | None = None) -> None:
    magic = _IDX_MAGIC[array.ndim] if magic is None else magic
    path.write_bytes(struct.pack(f">I{array.ndim}I", magic, *array.shape) + array.astype(np.uint8).tobytes())


@pytest.fixture
def fashion_mnist(tmp_path):
    """(data dir, {split prefix: (images, labels)}) of a tiny Fashion-MNIST in torchvision's raw folder."""
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    splits = {}
    for prefix, size in (("train", 6), ("t10k", 3)):
        images = rng.integers(1, 256, (size, 28, 28), dtype=np.uint8)  # no zeros: the padding is told apart
        labels = rng.integers(0, 10, size, dtype=np.uint8)
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
        splits[prefix] = images, labels
    return tmp_path, splits


def test_fashion_mnist_is_zero_padded_to_32_grey_in_three_channels(fashion_mnist):
    root, splits = fashion_mnist
    dataset = load_dataset("fashion-mnist", str(root))
    for loaded, (images, labels) in ((dataset.train, splits["train"]), (dataset.test, splits["t10k"])):
        assert loaded.images.shape == (len(labels), 3, 32, 32) and loaded.images.dtype == torch.uint8
        assert torch.equal(loaded.images[:, :, 2:30, 2:30], torch.from_numpy(images)[:, None].expand(-1, 3, -1, -1))
        border = torch.ones(32, 32, dtype=torch.bool)
        border[2:30, 2:30] = False
        assert (loaded.images[:, :, border] == 0).all()
        assert loaded.labels.dtype == torch.long and loaded.labels.tolist() == labels.tolist()
    assert dataset.classes == tuple(FashionMNIST.classes) and dataset.num_classes == 10


def _truncate(path):
    path.write_bytes(path.read_bytes()[:-5])


def _rewritten(shape, value: int = 0, magic: int | None = None):
    return lambda path: _write_idx(path, np.full(shape, value, np.uint8), magic)


BROKEN_IDX = {  # file, damage, what the error says
    "truncated data": ("train-images-idx3-ubyte", _truncate, "has 4715 bytes, not the 4720 its header promises"),
    "truncated header": ("t10k-labels-idx1-ubyte", _truncate, "is truncated \\(6 bytes, shorter than its 8-byte"),
    "labels as images": ("train-images-idx3-ubyte", _rewritten(6), "not an IDX file of images \\(magic 2049, not 2051"),
    "gzip not extracted": ("train-labels-idx1-ubyte", _rewritten(6, magic=0x1F8B0808), "not an IDX file of labels"),
    "wrong image shape": ("t10k-images-idx3-ubyte", _rewritten((3, 32, 32)), "images of shape \\(32, 32\\), not"),
    "fewer labels": ("t10k-labels-idx1-ubyte", _rewritten(2), "3 images but 2 labels"),
    "label out of range": ("train-labels-idx1-ubyte", _rewritten(6, value=10), "labels outside 0..9"),
    "empty file": ("train-images-idx3-ubyte", lambda path: path.write_bytes(b""), "not an IDX file of images"),
}


@pytest.mark.parametrize("case", BROKEN_IDX)
def test_broken_fashion_mnist_file_is_named_with_what_is_wrong(fashion_mnist, case):
    root, _ = fashion_mnist
    name, damage, problem = BROKEN_IDX[case]
    damage(root / "FashionMNIST" / "raw" / name)
    with _unavailable(f"Fashion-MNIST in {root / 'FashionMNIST' / 'raw'}:.*{problem}") as error:
        load_dataset("fashion-mnist", str(root))
    _one_line(error)


def test_missing_fashion_mnist_file_is_named_and_nothing_is_downloaded(fashion_mnist, monkeypatch):
    root, _ = fashion_mnist
    os.remove(root / "FashionMNIST" / "raw" / "t10k-labels-idx1-ubyte")
    monkeypatch.setattr(FashionMNIST, "download", lambda self: pytest.fail("downloaded without download=True"))
    with _unavailable("not found \\(missing t10k-labels-idx1-ubyte\\).*--download"):
        load_dataset("fashion-mnist", str(root))


def test_failed_fashion_mnist_download_says_why(tmp_path, monkeypatch):
    def offline(self):
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz:\nTried a mirror, got:\nno network\n")

    monkeypatch.setattr(FashionMNIST, "download", offline)
    with _unavailable(f"{tmp_path / 'FashionMNIST' / 'raw'}: downloading .* failed .*no network") as error:
        load_dataset("fashion-mnist", str(tmp_path), download=True)
    _one_line(error)


# ---- an image folder ---------------------------------------------------------------------

CONSTANT_COLOUR = (10, 200, 30)


@pytest.fixture
def image_folder(tmp_path):
    """train/cat: a constant 20x24 RGB image and a random 32x32 one; train/dog: a 40x40 grey
    gradient; test/cat and test/dog one image each."""
    rng = np.random.default_rng(0)
    for folder in ("train/cat", "train/dog", "test/cat", "test/dog"):
        (tmp_path / folder).mkdir(parents=True)
    Image.new("RGB", (24, 20), CONSTANT_COLOUR).save(tmp_path / "train/cat/a.png")
    random = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(random).save(tmp_path / "train/cat/b.png")
    Image.fromarray(np.tile(np.arange(0, 240, 6, dtype=np.uint8), (40, 1)), mode="L").save(tmp_path / "train/dog/c.png")
    Image.new("RGB", (40, 40), CONSTANT_COLOUR).save(tmp_path / "test/cat/x.jpg")
    Image.new("RGBA", (40, 40), (*CONSTANT_COLOUR, 128)).save(tmp_path / "test/dog/y.png")
    return tmp_path, torch.from_numpy(random).permute(2, 0, 1)


@pytest.mark.parametrize("size", [32, 16])
def test_image_folder_is_rgb_resized_once_with_classes_from_the_train_folders(image_folder, size):
    root, random = image_folder
    dataset = load_dataset("imagefolder", str(root), image_size=size)
    assert dataset.classes == ("cat", "dog")
    assert dataset.train.images.shape == (3, 3, size, size) and dataset.test.images.shape == (2, 3, size, size)
    assert dataset.train.labels.tolist() == [0, 0, 1] and dataset.test.labels.tolist() == [0, 1]
    colour = torch.tensor(CONSTANT_COLOUR, dtype=torch.uint8)[:, None, None].expand(3, size, size)
    assert torch.equal(dataset.train.images[0], colour)  # antialiased resizing keeps a flat image flat
    assert torch.equal(dataset.test.images[1], colour)  # RGBA loses its alpha
    assert (dataset.test.images[0].int() - colour.int()).abs().max() <= 2  # JPEG is lossy
    grey = dataset.train.images[2]
    assert torch.equal(grey[0], grey[1]) and torch.equal(grey[0], grey[2])
    assert (grey[0, :, 1:] >= grey[0, :, :-1]).all() and grey[0, 0, -1] > grey[0, 0, 0] + 150  # still a ramp
    if size == 32:
        assert torch.equal(dataset.train.images[1], random)  # already 32x32: untouched
    else:
        assert dataset.train.images[1].float().std() < 0.8 * random.float().std()  # averaged, not subsampled


def test_image_folder_skips_hidden_files(image_folder):
    root, _ = image_folder
    (root / "train/cat/.DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    assert len(load_dataset("imagefolder", str(root)).train) == 3


def _write(relative: str, data: bytes):
    return lambda root: (root / relative).write_bytes(data)


def _cut(relative: str):
    return lambda root: (root / relative).write_bytes((root / relative).read_bytes()[:200])


def _move(relative: str, to: str):
    return lambda root: os.rename(root / relative, root / to)


def _flatten(root):
    for image in sorted((root / "train").glob("*/*.png")):
        os.rename(image, root / "train" / f"{image.parent.name}-{image.name}")
    for folder in ("cat", "dog"):
        (root / "train" / folder).rmdir()


BROKEN_FOLDERS = {  # damage, the split the error is about, what it says
    "empty class folder": (lambda root: (root / "train/bird").mkdir(), "train", "empty class folder\\(s\\) bird"),
    "non-image file": (_write("train/dog/notes.txt", b"by hand"), "train", "notes.txt is not an image \\(expected"),
    "corrupt png": (_write("train/cat/z.png", b"not a png"), "train", "z.png is unreadable \\(UnidentifiedImageError"),
    "truncated png": (_cut("train/cat/b.png"), "train", "b.png is unreadable"),
    "test classes differ": (_move("test/dog", "test/bird"), "test", "\\(missing: \\['dog'\\], extra: \\['bird'\\]\\)"),
    "no test folder": (_move("test", "val"), "test", "not found"),
    "no class folders": (_flatten, "train", "no class folders"),
}


@pytest.mark.parametrize("case", BROKEN_FOLDERS)
def test_broken_image_folder_is_named_with_what_is_wrong(image_folder, case):
    root, _ = image_folder
    damage, split, problem = BROKEN_FOLDERS[case]
    damage(root)
    with _unavailable(f"image folder {root / split}: .*{problem}") as error:
        load_dataset("imagefolder", str(root))
    assert "pass --download" not in _one_line(error)


def test_image_folder_size_must_be_positive(image_folder):
    with pytest.raises(ValueError, match="--image-size: expected >= 1, got 0"):
        load_dataset("imagefolder", str(image_folder[0]), image_size=0)


# ---- the validation split ----------------------------------------------------------------


def _numbered(size: int) -> ImageSet:
    """Images whose labels are their own index, to tell where each sample went."""
    return ImageSet(torch.arange(size, dtype=torch.uint8).view(size, 1, 1, 1).expand(-1, 3, 2, 2), torch.arange(size))


def test_validation_split_is_disjoint_ordered_and_the_same_for_every_run_seed():
    torch.manual_seed(0)
    state = torch.get_rng_state()
    rest, validation = split_validation(_numbered(100), 15)
    assert torch.equal(torch.get_rng_state(), state)  # the run's own random stream is left alone
    torch.manual_seed(1)
    rest_again, validation_again = split_validation(_numbered(100), 15)
    assert len(rest) == 85 and len(validation) == 15
    assert torch.equal(validation.labels, validation_again.labels) and torch.equal(rest.labels, rest_again.labels)
    assert sorted(rest.labels.tolist() + validation.labels.tolist()) == list(range(100))
    assert (rest.labels.diff() > 0).all() and (validation.labels.diff() > 0).all()
    assert torch.equal(rest.images[:, 0, 0, 0].long(), rest.labels)  # images move with their labels
    assert validation.labels.max() > 50  # held out from the whole set, not its head


@pytest.mark.parametrize("size", [0, -1, 100, 101])
def test_validation_size_must_leave_training_images(size):
    with pytest.raises(ValueError, match=f"validation size: expected 1..99 .*100 training images.*got {size}"):
        split_validation(_numbered(100), size)
