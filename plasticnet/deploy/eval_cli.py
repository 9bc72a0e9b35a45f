"""`plasticnet eval RUN_DIR_OR_FILE`: test loss, accuracy and images/s of a run's checkpoint or of
an exported file, on the test split of the dataset it was trained on (or of the one given)."""

import argparse
import os
import sys
import time

import torch

from plasticnet.deploy.export_cli import USER_ERRORS
from plasticnet.deploy.formats import load_export
from plasticnet.deploy.runs import CHECKPOINTS, load_run_checkpoint
from plasticnet.training.config import DATASETS, ConfigError, TrainConfig
from plasticnet.training.data import DeviceAugmenter, EvaluationBatches
from plasticnet.training.distributed import Distributed, resolve_device
from plasticnet.training.evaluation import held_out_totals
from plasticnet.training.splits import load_data

DATA_OPTIONS = ("dataset", "data_dir", "test_size", "download")  # what may differ from the training run's


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("target", metavar="RUN_DIR_OR_FILE", help="a run directory, its best.pt/last.pt, or an export")
    parser.add_argument("--checkpoint", choices=list(CHECKPOINTS), default="best", help="of a run directory")
    parser.add_argument("--dataset", choices=DATASETS, default=None, help="default: the one the network trained on")
    parser.add_argument("--data-dir", default=None, help="default: the training run's")
    parser.add_argument("--test-size", type=int, default=None, help="test images (default: the training run's)")
    parser.add_argument("--download", action="store_true", default=None, help="let torchvision fetch a missing dataset")
    parser.add_argument("--batch-size", type=int, default=500, help="images per forward")
    parser.add_argument("--tta", action="store_true", help="average each prediction with its mirror image's")
    parser.add_argument("--device", default="auto", help="auto (cuda when visible), cpu, cuda or cuda:N")
    parser.add_argument("--threads", type=int, default=None, help="torch's intra-op threads (default: torch's)")


def _network(args: argparse.Namespace):
    """(predict, training config, mean, std, number of classes, description) of the target."""
    target, checkpoint = args.target, args.checkpoint
    if os.path.isfile(target) and os.path.basename(target) in set(CHECKPOINTS.values()):
        target, checkpoint = os.path.dirname(target) or ".", os.path.basename(target).removesuffix(".pt")
    if os.path.isdir(target):
        loaded = load_run_checkpoint(target, checkpoint)
        description = f"{loaded.path} (epoch {loaded.epoch})"
        return loaded.model, loaded.config, loaded.mean, loaded.std, loaded.num_classes, description
    exported = load_export(target)
    metadata = exported.metadata
    mean, std = (torch.tensor(metadata[key]).reshape(1, -1, 1, 1) for key in ("mean", "std"))
    config = TrainConfig.from_json(metadata["config"])
    description = f"{target} ({metadata['join']} join)"
    return exported.predict, config, mean, std, metadata["num_classes"], description


def run(args: argparse.Namespace) -> int:
    try:
        if args.batch_size < 1 or (args.threads is not None and args.threads < 1):
            raise ConfigError("--batch-size and --threads: expected positive integers")
        if args.threads is not None:
            torch.set_num_threads(args.threads)
        predict, config, mean, std, outputs, description = _network(args)
        overrides = {k: getattr(args, k) for k in DATA_OPTIONS if getattr(args, k) is not None}
        config = config.replace(**overrides, device=args.device)  # checks them as `train` does
        device = resolve_device(config.device, 0)
        if device.type != "cpu" and args.target.endswith(".onnx"):
            raise ConfigError("--device: ONNX files are evaluated on the CPU by onnxruntime; use --device cpu")
        data = load_data(config, Distributed(device.type), device)
        if outputs != len(data.classes):
            raise ConfigError(f"--dataset {config.dataset} has {len(data.classes)} classes, the network {outputs}")
        if hasattr(predict, "to"):
            predict = predict.to(device)
        normalise = DeviceAugmenter(mean.to(device), std.to(device), crop_padding=0, flip=False)
        batches = EvaluationBatches(data.test.to(device), args.batch_size, normalise)
        start = time.perf_counter()
        loss_sum, correct, count = held_out_totals(predict, batches, device, tta=args.tta).tolist()
        seconds = time.perf_counter() - start  # .tolist() waited for the device
    except USER_ERRORS as error:
        print(f"plasticnet eval: error: {error}", file=sys.stderr)
        return 2
    print(f"{description} on {config.dataset} test ({int(count)} images{', tta' if args.tta else ''}, {device}):")
    print(f"  test loss {loss_sum / count:.4f}  accuracy {correct / count:.4f}  {count / seconds:.0f} images/s")
    return 0
