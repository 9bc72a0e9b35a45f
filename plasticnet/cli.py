"""`plasticnet` command line: info, train, sweep, report, export, eval, bench."""

import argparse
import importlib
import platform
import sys

# subcommand -> module with add_arguments(parser) and run(args) -> exit code
_COMMANDS = {
    "info": ("plasticnet.cli", "versions, whether the CUDA kernels are compiled in, backends per device"),
    "train": ("plasticnet.training.cli", "train a plastic or static ResNet on CIFAR-10 or synthetic data"),
    "bench": ("plasticnet.bench", "benchmark residual_aggregate against eager and torch.compile"),
    "sweep": ("plasticnet.training.sweep", "train every (model, budget, seed) of a grid, resumably, one run dir each"),
    "report": ("plasticnet.training.report", "t-intervals over seeds of one or more sweeps; plastic - static"),
    "export": ("plasticnet.deploy.export_cli", "a run's network as a compact static model: pt2, ONNX or state_dict"),
    "eval": ("plasticnet.deploy.eval_cli", "test loss, accuracy, images/s of a run's checkpoint or an exported file"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`info` takes no options."""


def run(args: argparse.Namespace) -> int:
    import torch

    from plasticnet import __version__, _extension
    from plasticnet.ops import available_backends

    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = "not installed"
    print(f"plasticnet   {__version__}")
    print(f"python       {platform.python_version()}")
    print(f"torch        {torch.__version__} (CUDA {torch.version.cuda or 'none'})")
    print(f"triton       {triton_version}")
    if _extension.loaded:
        info = _extension.build_info
        print(f"extension    loaded, built against torch {info['torch']}")
        cuda = f"compiled in (CUDA {info['cuda']}, arch {info['cuda_arch_list']})"
        print(f"CUDA kernels {cuda if _extension.with_cuda() else 'not compiled in'}")
    else:
        print(f"extension    not loaded: {_extension.unavailable_reason}")
    print(f"GPU          {torch.cuda.get_device_name() if torch.cuda.is_available() else 'none visible'}")
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        print(f"backends on {device:4s} {', '.join(available_backends(device))}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="plasticnet", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module, help_text) in _COMMANDS.items():
        command = sub.add_parser(
            name, help=help_text, description=help_text, formatter_class=argparse.ArgumentDefaultsHelpFormatter
        )
        command.set_defaults(_module=module)
        importlib.import_module(module).add_arguments(command)
    args = parser.parse_args(argv)
    return importlib.import_module(args._module).run(args)


if __name__ == "__main__":
    sys.exit(main())
