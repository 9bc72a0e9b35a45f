"""Fading a grown path in: its join scale m (the fused op's mask m_k) goes from 0 to 1 over a
number of steps, so a new branch enters the network gradually instead of at full strength."""

from collections.abc import Iterable, Sequence

import torch

from plasticnet.models.topology import PathId


class FadeIn:
    """The join scales of the paths being faded in; every other path's scale is 1."""

    def __init__(self) -> None:
        self._progress: dict[PathId, tuple[int, int]] = {}  # path -> (steps done, steps in all)

    def __contains__(self, path: PathId) -> bool:
        return path in self._progress

    def __bool__(self) -> bool:
        return bool(self._progress)

    def start(self, paths: Iterable[PathId], steps: int) -> None:
        """Fade `paths` in from scale 0 to 1 over `steps` advance()s (a path already fading restarts)."""
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps: expected a positive int, got {steps!r}")
        self._progress.update({path: (0, steps) for path in paths})

    def advance(self) -> None:
        """One step of every fade in progress. A fade that reaches scale 1 is forgotten at once: its
        path is then an ordinary one, and a join with no fade in progress needs no mask."""
        self._progress = {p: (done + 1, steps) for p, (done, steps) in self._progress.items() if done + 1 < steps}

    def progress(self, candidates: Sequence[PathId]) -> tuple[torch.Tensor, torch.Tensor]:
        """(steps done, steps in all) per candidate path, in the given order; (1, 1) for a path
        not fading. The model keeps them on its device and advances them there, so a step of a
        fade needs no host-to-device copy: m = min(done / steps, 1)."""
        pairs = [self._progress.get(p, (1, 1)) for p in candidates]
        return torch.tensor([d for d, _ in pairs], dtype=torch.float32), torch.tensor(
            [s for _, s in pairs], dtype=torch.float32
        )

    def scales(self, candidates: Sequence[PathId]) -> torch.Tensor:
        """m per candidate path, in the given order."""
        done, steps = self.progress(candidates)
        return (done / steps).clamp(max=1.0)
