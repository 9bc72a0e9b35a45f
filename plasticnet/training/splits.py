"""The splits a run trains and evaluates on: the dataset loaded (one process downloads), the
fixed validation split carved out, the sizes asked for taken, and a synthetic set refused before
it is drawn when it would not fit in memory."""

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from plasticnet.training.config import ConfigError, TrainConfig
from plasticnet.training.datasets import ImageSet, load_dataset, split_validation
from plasticnet.training.distributed import Distributed


@dataclass
class RunData:
    """The splits a run uses, on the host: train, the validation split held out of the training
    data (None without --val-size), test; and the class names."""

    train: ImageSet
    validation: ImageSet | None
    test: ImageSet
    classes: tuple[str, ...]


def load_data(config: TrainConfig, distributed: Distributed, device: torch.device) -> RunData:
    """The run's splits. One process downloads (when allowed), the others then find the files.
    The validation split is carved from the whole training set before --train-size is taken
    from the rest, so it is the same whatever the training size or seed."""
    synthetic_sizes = (config.train_size + config.val_size, config.test_size) if config.dataset == "synthetic" else None
    if synthetic_sizes is not None:
        _check_fits_in_memory(sum(synthetic_sizes), device)

    def load(download: bool):
        return load_dataset(
            config.dataset,
            config.data_dir,
            download=download,
            image_size=config.image_size,
            synthetic_sizes=synthetic_sizes,
            seed=config.seed,
            device=device,
        )

    if distributed.rank == 0:
        dataset = load(config.download)
    if distributed.enabled:
        dist.barrier()
    if distributed.rank != 0:
        dataset = load(False)
    train, validation = dataset.train, None
    try:
        if config.val_size:
            train, validation = split_validation(train, config.val_size)
        return RunData(
            train.subset(config.train_size), validation, dataset.test.subset(config.test_size), dataset.classes
        )
    except ValueError as error:
        raise ConfigError(f"--train-size / --val-size / --test-size: {error}") from None


SYNTHETIC_BYTES_PER_IMAGE = 4096  # the uint8 image (3 KB) and the parameters drawn to render it


def _check_fits_in_memory(images: int, device: torch.device) -> None:
    """Refuse a synthetic set larger than half the device's memory before drawing any of it."""
    if device.type == "cuda":
        memory = torch.cuda.mem_get_info(device)[1]
    else:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    needed = images * SYNTHETIC_BYTES_PER_IMAGE
    if needed > memory // 2:
        raise ConfigError(
            f"--train-size / --val-size / --test-size: {images} synthetic images need {needed / 2**30:.1f} GiB, "
            f"more than half of the {memory / 2**30:.1f} GiB of {device.type} memory; ask for fewer"
        )
