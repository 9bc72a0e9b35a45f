"""Benchmarks of residual_aggregate and of the training step (`plasticnet bench`).

The cases, their inputs and the timed steps live here once; the CLI (command.py) and the
pytest-benchmark files in benchmarks/ both use them.
"""

from plasticnet.bench.command import add_arguments, run

__all__ = ["add_arguments", "run"]
