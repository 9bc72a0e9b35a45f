"""When to rewire and how much: RigL's cosine-decayed drop fraction (Evci et al., 2020)."""

import math
from dataclasses import dataclass


def cosine_drop_fraction(step: int, *, fraction: float, end_step: float) -> float:
    """fraction * (1 + cos(pi * step / end_step)) / 2 before `end_step`, 0 from it on."""
    if step >= end_step:
        return 0.0
    return fraction * (1.0 + math.cos(math.pi * step / end_step)) / 2.0


@dataclass(frozen=True)
class RewireSchedule:
    """Rewire every `interval` optimizer steps while step < end_fraction * total_steps.

    Steps count from 1 (the first optimizer.step() is step 1), so step 0 never rewires.
    """

    fraction: float
    interval: int
    total_steps: int
    end_fraction: float

    def __post_init__(self) -> None:
        if (
            isinstance(self.fraction, bool)
            or not isinstance(self.fraction, (int, float))
            or not 0.0 < self.fraction <= 1.0
        ):
            raise ValueError(f"fraction: expected a number in (0, 1], got {self.fraction!r}")
        for name in ("interval", "total_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: expected a positive int, got {value!r}")
        if (
            isinstance(self.end_fraction, bool)
            or not isinstance(self.end_fraction, (int, float))
            or not 0.0 < self.end_fraction <= 1.0
        ):
            raise ValueError(f"end_fraction: expected a number in (0, 1], got {self.end_fraction!r}")

    @property
    def end_step(self) -> float:
        return self.end_fraction * self.total_steps

    def is_rewire_step(self, step: int) -> bool:
        return step > 0 and step % self.interval == 0 and step < self.end_step

    def fraction_at(self, step: int) -> float:
        return cosine_drop_fraction(step, fraction=self.fraction, end_step=self.end_step)

    def drop_count(self, step: int, budget: int) -> int:
        """round(fraction_t * budget), but at least 1 while fraction_t > 0 (a rewire that
        drops nothing would only waste its probe)."""
        fraction_t = self.fraction_at(step)
        if fraction_t <= 0.0:
            return 0
        return max(1, math.floor(fraction_t * budget + 0.5))
