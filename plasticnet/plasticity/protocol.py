"""PlasticModel: what the controller and the criteria need of a plastic network.

PlasticResNet has this API; so may any network (a test's fake one, say). Under
DistributedDataParallel the model is the wrapped module, not the wrapper.
"""

from collections.abc import Iterable
from contextlib import AbstractContextManager
from typing import Protocol, runtime_checkable

import torch
from torch import nn

# Declared again rather than imported from plasticnet.models.topology: plasticity depends on
# no concrete model package, only on this protocol.
PathId = tuple[int, int]  # (source node i, target node j) of the residual path i -> j


@runtime_checkable
class PlasticModel(Protocol):
    """A network of residual paths (i -> j), of which `budget` are active at any time.

    isinstance(model, PlasticModel) checks that every member exists, not their signatures.
    """

    @property
    def budget(self) -> int:
        """How many paths set_active() keeps active."""
        ...

    @property
    def budget_per_stage(self) -> tuple[int, ...] | None:
        """How many active paths each stage keeps (None: only the total counts)."""
        ...

    def active_paths(self) -> list[PathId]:
        """The active paths, in candidate_paths() order."""
        ...

    def candidate_paths(self) -> list[PathId]:
        """Every path that may be active."""
        ...

    def stage_of(self, path: PathId) -> int:
        """The stage a path belongs to (that of its target node)."""
        ...

    def gates(self) -> dict[PathId, torch.Tensor]:
        """The active paths' gates: path -> a 0-dim view of its gate."""
        ...

    def path(self, i: int, j: int) -> nn.Module:
        """The module of path (i -> j), with `.body` (its layers) and `.gate` (a 0-dim nn.Parameter)."""
        ...

    def set_active(self, paths: Iterable[PathId], *, keep_budget: bool = True) -> None:
        """Make exactly `paths` active; they must meet the budget unless keep_budget=False."""
        ...

    def reinitialize_path(self, i: int, j: int) -> None:
        """Fresh weights and gate 0 for path (i -> j), so that growing it keeps the function."""
        ...

    def path_statistics(self) -> dict[str, torch.Tensor]:
        """The statistics "taylor", "grow", "last" and "updates", aligned with candidate_paths()."""
        ...

    def reset_path_statistics(self, paths: Iterable[PathId]) -> None:
        """Forget the statistics of `paths`."""
        ...

    def probing(self, paths: Iterable[PathId]) -> AbstractContextManager:
        """A context in which forward also computes the given inactive paths with gate 0."""
        ...

    def zero_grad(self, set_to_none: bool = True) -> None:
        """nn.Module's: the probe drops its gradients with it."""
        ...
