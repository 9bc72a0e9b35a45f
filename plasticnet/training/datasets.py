"""Every dataset the trainer can train on, loaded once into uint8 NCHW tensors on the training device.

CIFAR-10 and CIFAR-100 (torchvision's python pickles, md5-checked), Fashion-MNIST (the four raw
IDX files, padded to 32x32 and repeated to RGB), an image folder (one sub-folder per class, any
image size, resized once at load) and a procedural synthetic set. Nothing is downloaded unless
asked. Data that is missing, partial or unreadable raises DataUnavailableError with one line:
where it looked, what it expected there and how to fix it.
"""

import math
import os
import struct
import tarfile
import zlib
from dataclasses import dataclass

import PIL.Image
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from torchvision.datasets import CIFAR10, CIFAR100, FashionMNIST, ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS, is_image_file
from torchvision.datasets.utils import check_integrity

DATASETS = ("cifar10", "cifar100", "fashion-mnist", "imagefolder", "synthetic")
IMAGE_SIZE = 32  # the side of every dataset's images but an image folder's, which are resized to a chosen side
NUM_CLASSES = 10  # CIFAR-10's and the synthetic set's; any dataset's: Dataset.num_classes
SYNTHETIC_SIZES = (2560, 512)  # train and test images of the synthetic set unless told otherwise
# A fixed seed, not the run's: runs with different seeds are compared on the same validation images.
_VALIDATION_SEED = 20240601
# What a failed download raises: URLError is an OSError, torchvision raises RuntimeError on a bad md5.
_DOWNLOAD_ERRORS = (OSError, RuntimeError, tarfile.TarError, EOFError, zlib.error)
# What PIL raises on a file it cannot decode (UnidentifiedImageError and truncation are OSErrors).
_IMAGE_ERRORS = (OSError, ValueError, SyntaxError, PIL.Image.DecompressionBombError)


class DataUnavailableError(RuntimeError):
    """The requested data cannot be found, read or fetched; the one-line message says where and how to fix it."""


@dataclass
class ImageSet:
    """uint8 images (N, 3, H, W) and int64 labels (N,), on one device."""

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


@dataclass(frozen=True)
class Dataset:
    """A dataset's train and test sets and its class names (index = label)."""

    train: ImageSet
    test: ImageSet
    classes: tuple[str, ...]

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def load_dataset(
    name: str,
    data_dir: str,
    *,
    download: bool = False,
    image_size: int = IMAGE_SIZE,
    synthetic_sizes: tuple[int, int] | None = None,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> Dataset:
    """Dataset `name` (one of DATASETS) from `data_dir`, on `device`.

    Files are read on the host and then moved; the synthetic set (`synthetic_sizes` train and
    test images, SYNTHETIC_SIZES for None, drawn from `seed`) is generated on `device`.
    `image_size` is the side image-folder images are resized to; every other dataset is 32x32.
    Only `download` lets torchvision fetch CIFAR or Fashion-MNIST files that are not there.
    """
    if name not in DATASETS:
        raise ValueError(f"dataset: expected one of {', '.join(DATASETS)}, got {name!r}")
    if name != "imagefolder" and image_size != IMAGE_SIZE:
        raise ValueError(
            f"--image-size applies to imagefolder only ({name} images are {IMAGE_SIZE}x{IMAGE_SIZE}), got {image_size}"
        )
    if name == "synthetic":
        train_size, test_size = SYNTHETIC_SIZES if synthetic_sizes is None else synthetic_sizes
        if min(train_size, test_size) < 1:
            raise ValueError(f"synthetic_sizes: expected two sizes >= 1, got {synthetic_sizes}")
        train, test = synthetic_cifar(train_size, test_size, seed, device)
        return Dataset(train, test, SYNTHETIC_CLASSES)
    if name == "imagefolder":
        loaded = _load_image_folder(data_dir, image_size)
    elif name == "fashion-mnist":
        loaded = _load_fashion_mnist(data_dir, download)
    else:
        loaded = _load_cifar(CIFAR10 if name == "cifar10" else CIFAR100, data_dir, download)
    return Dataset(loaded.train.to(device), loaded.test.to(device), loaded.classes)


def split_validation(train: ImageSet, size: int) -> tuple[ImageSet, ImageSet]:
    """(the rest, a validation split of `size` images) of `train`, disjoint, both in their original order.

    The held-out images depend only on len(train), never on the run's seed, so every run on a
    dataset validates on the same images. The caller takes its training subset from the rest.
    """
    if not 1 <= size < len(train):
        raise ValueError(
            f"validation size: expected 1..{len(train) - 1} (fewer than the {len(train)} training images), got {size}"
        )
    generator = torch.Generator().manual_seed(_VALIDATION_SEED)
    held_out = torch.zeros(len(train), dtype=torch.bool)
    held_out[torch.randperm(len(train), generator=generator)[:size]] = True
    held_out = held_out.to(train.labels.device)

    def part(mask: torch.Tensor) -> ImageSet:
        return ImageSet(train.images[mask], train.labels[mask])

    return part(~held_out), part(held_out)


# ---- files on disk -------------------------------------------------------------------------


def _describe(error: BaseException) -> str:
    """An exception as one line: its type and its message (which may span several)."""
    return " ".join(f"{type(error).__name__}: {error}".split())


@dataclass(frozen=True)
class _Source:
    """Where a dataset's files should be and what they are, for the one-line errors about them."""

    place: str  # the dataset and the exact path looked at
    expected: str  # the files or folders that should be there
    holder: str  # what the --data-dir folder must hold

    def error(self, problem: str, *, suggest_download: bool = False) -> DataUnavailableError:
        fixes = ["put them there", f"pass --data-dir DIR that holds {self.holder}"]
        fixes += ["pass --download"] if suggest_download else []
        return DataUnavailableError(
            f"{self.place}: {problem}; expected {self.expected}. Fix: {', '.join(fixes)} or use --dataset synthetic"
        )

    def labelled(self, images: torch.Tensor, labels: torch.Tensor, num_classes: int) -> ImageSet:
        """ImageSet(images, labels) once the labels match the images and the classes."""
        if labels.shape != images.shape[:1]:
            raise self.error(f"{images.shape[0]} images but {labels.numel()} labels")
        if labels.numel() and not (0 <= labels.min() and labels.max() < num_classes):
            raise self.error(f"labels outside 0..{num_classes - 1}")
        return ImageSet(images, labels)


def _load_cifar(kind: type[CIFAR10], data_dir: str, download: bool) -> Dataset:
    """CIFAR-10 or CIFAR-100 (fine labels) through torchvision, which checks every file's md5."""
    folder = os.path.join(data_dir, kind.base_folder)
    files = [*kind.train_list, *kind.test_list, (kind.meta["filename"], kind.meta["md5"])]
    source = _Source(
        f"{'CIFAR-10' if kind is CIFAR10 else 'CIFAR-100'} in {folder}",
        f"{', '.join(name for name, _ in files)} (the extracted {kind.filename})",
        kind.base_folder,
    )

    def read() -> Dataset:
        try:
            splits = kind(data_dir, train=True), kind(data_dir, train=False)
            images = [torch.from_numpy(split.data).permute(0, 3, 1, 2).contiguous() for split in splits]
            labels = [torch.tensor(split.targets, dtype=torch.long) for split in splits]
        except Exception as error:  # unpickling a corrupt file can raise nearly any exception
            missing = [name for name, _ in files if not os.path.isfile(os.path.join(folder, name))]
            corrupt = [name for name, md5 in files if not check_integrity(os.path.join(folder, name), md5)]
            if missing:
                problem = f"not found (missing {', '.join(missing)})"
            elif corrupt:
                problem = f"{', '.join(corrupt)} failed the md5 check (partial or corrupt)"
            else:
                problem = f"unreadable ({_describe(error)})"
            raise source.error(problem, suggest_download=not download) from None
        classes = tuple(splits[0].classes)
        return Dataset(*(source.labelled(i, k, len(classes)) for i, k in zip(images, labels)), classes)

    try:
        return read()
    except DataUnavailableError:
        if not download:
            raise
    try:
        kind(data_dir, download=True)
    except _DOWNLOAD_ERRORS as error:
        raise source.error(f"downloading {kind.url} failed ({_describe(error)})") from None
    return read()


def _load_fashion_mnist(data_dir: str, download: bool) -> Dataset:
    """Fashion-MNIST from torchvision's raw folder: 28x28 grey, zero-padded to 32x32 and repeated to 3 channels."""
    folder = os.path.join(data_dir, FashionMNIST.__name__, "raw")
    names = [os.path.splitext(archive)[0] for archive, _ in FashionMNIST.resources]  # the .gz files, extracted
    source = _Source(f"Fashion-MNIST in {folder}", f"the IDX files {', '.join(names)}", f"{FashionMNIST.__name__}/raw")

    def missing() -> list[str]:
        return [name for name in names if not os.path.isfile(os.path.join(folder, name))]

    if missing() and download:
        try:
            FashionMNIST(data_dir, download=True)
        except _DOWNLOAD_ERRORS as error:
            raise source.error(f"downloading from {FashionMNIST.mirrors[0]} failed ({_describe(error)})") from None
    if missing():
        raise source.error(f"not found (missing {', '.join(missing())})", suggest_download=not download)

    def read(prefix: str) -> ImageSet:
        images = _read_idx(os.path.join(folder, f"{prefix}-images-idx3-ubyte"), (28, 28), source)
        labels = _read_idx(os.path.join(folder, f"{prefix}-labels-idx1-ubyte"), (), source).long()
        padding = (IMAGE_SIZE - 28) // 2
        images = F.pad(images, (padding,) * 4)[:, None].expand(-1, 3, -1, -1).contiguous()
        return source.labelled(images, labels, len(FashionMNIST.classes))

    return Dataset(read("train"), read("t10k"), tuple(FashionMNIST.classes))


def _read_idx(path: str, item_shape: tuple[int, ...], source: _Source) -> torch.Tensor:
    """A uint8 IDX file: big-endian magic 0x800 + dimensions, each dimension's size, the data.

    torchvision's reader checks the header with bare asserts and accepts a truncated label
    file; this one says what is wrong with the file.
    """
    name, what = os.path.basename(path), "images" if item_shape else "labels"
    try:
        with open(path, "rb") as file:
            data = file.read()
    except OSError as error:
        raise source.error(f"{name} is unreadable ({_describe(error)})") from None
    ndim = 1 + len(item_shape)
    magic, header = 0x800 + ndim, 4 * (1 + ndim)
    found = int.from_bytes(data[:4], "big")
    if found != magic:
        raise source.error(f"{name} is not an IDX file of {what} (magic {found}, not {magic})")
    if len(data) < header:
        raise source.error(f"{name} is truncated ({len(data)} bytes, shorter than its {header}-byte header)")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    if dims[1:] != item_shape:
        raise source.error(f"{name} holds {what} of shape {dims[1:]}, not {item_shape}")
    if len(data) != header + math.prod(dims):
        size = header + math.prod(dims)
        raise source.error(f"{name} has {len(data)} bytes, not the {size} its header promises (truncated?)")
    return torch.frombuffer(bytearray(data), dtype=torch.uint8, offset=header).view(dims)


def _load_image_folder(data_dir: str, image_size: int) -> Dataset:
    """DATA_DIR/train/<class>/* and DATA_DIR/test/<class>/*: RGB, resized (antialiased) to image_size squared.

    Hidden files (.DS_Store and the like) are skipped; any other file must be an image.
    """
    if image_size < 1:
        raise ValueError(f"--image-size: expected >= 1, got {image_size}")
    pattern = os.path.join(data_dir, "{train,test}", "<class>", "*.png|jpg")

    def read(split: str, classes: list[str] | None) -> tuple[ImageSet, list[str]]:
        root = os.path.join(data_dir, split)
        source = _Source(f"image folder {root}", f"{pattern}, the same class folders in both", "train/ and test/")
        if not os.path.isdir(root):
            raise source.error("not found")
        try:
            folder = ImageFolder(
                root, is_valid_file=lambda path: not os.path.basename(path).startswith("."), allow_empty=True
            )
        except FileNotFoundError:  # torchvision's way of saying there is no class folder
            raise source.error("no class folders") from None
        empty = sorted(set(folder.classes) - {folder.classes[label] for label in folder.targets})
        if empty:
            raise source.error(f"empty class folder(s) {', '.join(empty)}")
        if classes is not None and folder.classes != classes:
            missing, extra = sorted(set(classes) - set(folder.classes)), sorted(set(folder.classes) - set(classes))
            raise source.error(f"classes differ from the train folder's (missing: {missing}, extra: {extra})")
        images = []
        for path, _ in folder.samples:
            if not is_image_file(path):
                raise source.error(f"{path} is not an image (expected one of {', '.join(IMG_EXTENSIONS)})")
            try:
                with PIL.Image.open(path) as image:
                    pixels = TF.pil_to_tensor(image.convert("RGB"))
            except _IMAGE_ERRORS as error:
                raise source.error(f"{path} is unreadable ({_describe(error)})") from None
            images.append(TF.resize(pixels, [image_size, image_size], antialias=True))
        return ImageSet(torch.stack(images), torch.tensor(folder.targets, dtype=torch.long)), folder.classes

    train, classes = read("train", None)
    test, _ = read("test", classes)
    return Dataset(train, test, tuple(classes))


# ---- the synthetic set --------------------------------------------------------------------


def synthetic_cifar(
    train_size: int, test_size: int, seed: int, device: torch.device | str = "cpu"
) -> tuple[ImageSet, ImageSet]:
    """A CIFAR-shaped 10-class set that a ResNet has to work for (see _draw_synthetic).

    Generated on `device` by batched tensor ops (no per-sample Python); deterministic given
    `seed` and the device type (CPU and CUDA random streams differ), so every rank of a
    distributed run draws the same set.
    """
    generator = torch.Generator(device).manual_seed(seed)
    return _draw_synthetic(train_size, generator), _draw_synthetic(test_size, generator)


# Class k is texture family k % 5 at frequency level k // 5. A family is a sum of up to three
# gratings at these angles (degrees; weight 0 pads a shorter family), each set closed under
# mirroring so that flip augmentation never turns one class into another: stripes one way,
# stripes the other way, a diagonal plaid, a hexagonal plaid, a square grid.
_FAMILY_ANGLES = ((0, 0, 0), (90, 0, 0), (45, 135, 0), (0, 60, 120), (0, 90, 0))
_FAMILY_WEIGHTS = ((1, 0, 0), (1, 0, 0), (1, 1, 0), (1, 1, 1), (1, 1, 0))
_FAMILY_NAMES = ("vertical stripes", "horizontal stripes", "diagonal plaid", "hexagonal plaid", "square grid")
_CYCLES = (2.5, 4.5)  # cycles per image width of the two frequency levels
SYNTHETIC_CLASSES = tuple(f"{level} {family}" for level in ("coarse", "fine") for family in _FAMILY_NAMES)
_CHUNK = 4096  # samples rendered at once: bounds the temporaries of CIFAR-10-sized sets


def _draw_synthetic(size: int, generator: torch.Generator) -> ImageSet:
    """`size` images. Each shows its class's texture in a Gaussian window of random position,
    size, rotation (+-10 deg), frequency (+-12 %), phases and colour on a random background
    colour, a 2-5x weaker window of another class's texture (a distractor), and pixel noise.
    Colour, position and brightness say nothing about the class: only the texture does. At
    `make train`'s settings a ResNet-18 reaches 80-90 % in 3 epochs, far from both 10 % and 100 %."""
    device = generator.device

    def uniform(low: float, high: float, *shape: int) -> torch.Tensor:
        return low + (high - low) * torch.rand(*shape, generator=generator, device=device)

    labels = torch.randint(NUM_CLASSES, (size,), generator=generator, device=device)
    distractors = (labels + torch.randint(1, NUM_CLASSES, (size,), generator=generator, device=device)) % NUM_CLASSES
    classes = torch.stack([labels, distractors], 1)  # (N, 2): index 0 the labelled window, 1 the distractor
    families = classes % len(_FAMILY_ANGLES)
    angles = torch.tensor(_FAMILY_ANGLES, dtype=torch.float32, device=device).deg2rad()[families]
    angles = angles + uniform(-0.175, 0.175, size, 2, 1)  # +-10 degrees
    weights = torch.tensor(_FAMILY_WEIGHTS, dtype=torch.float32, device=device)[families]
    weights = weights / weights.sum(2, keepdim=True).sqrt()  # every family at the same contrast
    cycles = torch.tensor(_CYCLES, device=device)[classes // len(_FAMILY_ANGLES)] * uniform(0.88, 1.12, size, 2)
    frequencies = 2 * math.pi / IMAGE_SIZE * cycles
    phases = uniform(0, 2 * math.pi, size, 2, 3)
    centres = uniform(8, IMAGE_SIZE - 8, size, 2, 2)
    widths = uniform(6, 10, size, 2)
    strengths = torch.stack([torch.ones(size, device=device), uniform(0.2, 0.5, size)], 1)
    colours = (uniform(0.3, 0.5, size, 2) * strengths)[..., None] * uniform(0.4, 1, size, 2, 3)
    backgrounds = uniform(0.3, 0.7, size, 3)

    coordinate = torch.arange(IMAGE_SIZE, dtype=torch.float32, device=device)
    images = []
    for chunk in torch.arange(size, device=device).split(_CHUNK):
        # offsets from each window's centre: x is (n, 2, 1, W), y (n, 2, H, 1)
        x = coordinate[None, None, None, :] - centres[chunk, :, 0, None, None]
        y = coordinate[None, None, :, None] - centres[chunk, :, 1, None, None]
        a = angles[chunk][..., None, None]  # (n, 2, 3, 1, 1)
        along = x[:, :, None] * a.cos() + y[:, :, None] * a.sin()
        gratings = torch.sin(frequencies[chunk][..., None, None, None] * along + phases[chunk][..., None, None])
        texture = (weights[chunk][..., None, None] * gratings).sum(2)
        window = torch.exp(-(x**2 + y**2) / (2 * widths[chunk][..., None, None] ** 2))
        layers = (texture * window)[:, :, None] * colours[chunk][..., None, None]  # (n, 2, 3, H, W)
        image = backgrounds[chunk][..., None, None] + layers.sum(1)
        image = image + 0.08 * torch.randn(image.shape, generator=generator, device=device)
        images.append((image.clamp(0, 1) * 255).round().to(torch.uint8))
    return ImageSet(torch.cat(images), labels)
