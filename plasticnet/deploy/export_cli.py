"""`plasticnet export RUN_DIR`: the network a run found, as a compact static model in a standard
format, with its costs against the plastic checkpoint's and its active paths."""

import argparse
import os
import sys

import torch

from plasticnet.deploy.formats import FORMATS, ExportError, write_export
from plasticnet.deploy.network import deployable, join_scales
from plasticnet.deploy.runs import CHECKPOINTS, RunCheckpoint, load_run_checkpoint
from plasticnet.models import PlasticResNet
from plasticnet.models.compute import forward_macs
from plasticnet.models.static_network import JOINS
from plasticnet.training.checkpoint import CheckpointError
from plasticnet.training.config import ConfigError
from plasticnet.training.datasets import DataUnavailableError

USER_ERRORS = (ConfigError, CheckpointError, ExportError, DataUnavailableError, OSError)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a `plasticnet train` run directory")
    parser.add_argument("--checkpoint", choices=list(CHECKPOINTS), default="best", help="which checkpoint to export")
    parser.add_argument("--format", choices=list(FORMATS), default="pt2", help="torch.export program, ONNX, state_dict")
    parser.add_argument(
        "--join", choices=list(JOINS), default="fused", help="fused: plasticnet's op; reference: plain PyTorch only"
    )
    parser.add_argument(
        "--no-fold-gates", dest="fold_gates", action="store_false", help="keep each gate as a parameter"
    )
    parser.add_argument("--out", default=None, help="the file to write (default: RUN_DIR/CHECKPOINT-static-JOIN.EXT)")


def metadata_of(loaded: RunCheckpoint, network: torch.nn.Module, *, join: str, fold_gates: bool) -> dict:
    """What every export file records about its network (see plasticnet.deploy.formats)."""
    plastic = isinstance(loaded.model, PlasticResNet)
    return {
        "plasticnet_export": 1,
        "source": os.path.abspath(loaded.path),
        "epoch": loaded.epoch,
        "model": loaded.config.model,
        "dataset": loaded.config.dataset,
        "num_classes": loaded.num_classes,
        "input_shape": list(loaded.input_shape),
        "mean": loaded.mean.flatten().tolist(),
        "std": loaded.std.flatten().tolist(),
        "join": join,
        "fold_gates": fold_gates,
        "active_paths": [list(p) for p in loaded.model.active_paths()] if plastic else None,
        "scales": join_scales(network) if plastic else None,
        "parameters": sum(p.numel() for p in network.parameters()),
        "macs": forward_macs(network, loaded.input_shape),
        "config": loaded.config.to_json(),  # how it was trained, and on what: eval finds its test split
    }


def run(args: argparse.Namespace) -> int:
    out = args.out or os.path.join(args.run_dir, f"{args.checkpoint}-static-{args.join}{FORMATS[args.format]}")
    try:
        loaded = load_run_checkpoint(args.run_dir, args.checkpoint)
        network = deployable(loaded.model, fold_gates=args.fold_gates, join=args.join)
        metadata = metadata_of(loaded, network, join=args.join, fold_gates=args.fold_gates)
        if os.path.isdir(out):
            raise ExportError(f"--out {out} is a directory; give a file name")
        write_export(network, metadata, args.format, out)
    except USER_ERRORS as error:
        message = f"cannot write {out}: {error.strerror or error}" if isinstance(error, OSError) else error
        print(f"plasticnet export: error: {message}", file=sys.stderr)
        return 2
    model, macs = loaded.model, forward_macs(loaded.model, loaded.input_shape)
    rows = [("checkpoint", sum(p.numel() for p in model.parameters()), macs)]
    if isinstance(model, PlasticResNet):
        rows += [("checkpoint, active", model.num_parameters(active_only=True), macs)]
    rows += [("exported", metadata["parameters"], metadata["macs"])]
    print(f"{loaded.path} (epoch {loaded.epoch}) -> {out} ({args.format}, {args.join} join)")
    print(f"  {'':20s} {'parameters':>12s} {'MACs/image':>14s}")
    for name, parameters, row_macs in rows:
        print(f"  {name:20s} {parameters:12,d} {row_macs:14,d}")
    if isinstance(model, PlasticResNet):
        paths = ", ".join(f"{i}->{j}" for i, j in model.active_paths())
        print(f"  active paths ({len(model.active_paths())}): {paths}")
        print(f"  gates folded into their bodies: {len(network.folded)} of {len(model.active_paths())}")
    return 0
