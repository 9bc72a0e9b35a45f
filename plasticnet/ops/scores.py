"""Per-site running statistics of path contributions, updated on the device after every
backward with no host synchronisation.

How c_k reaches the scores: `tap(gates)` returns gates * (1 + t0) + t1 for a zero leaf
tensor t = (t0, t1) that this object owns. Its value is unchanged, and autograd delivers
d t0 = gates*mask*c (the Taylor estimate of the loss change from dropping the path) and
d t1 = mask*c (the grow signal of a candidate probed with gate 0). A post-accumulate-grad
hook on t folds them into the running statistics, one small vectorised update per site:
no Python loop over slots, and identical for every backend, since every backend returns
the same grad gates.
"""

from collections.abc import Sequence

import torch
from torch import nn


class PathScores(nn.Module):
    """Running contribution statistics for `num_slots` paths that join at one site.

    Buffers (all on the site's device):
      taylor   EMA of |g_k * c_k|: what an active path contributes (drop criterion).
      grow     EMA of |c_k|: the grow signal of a path probed with gate 0.
      last     c_k of the latest backward that computed the slot (signed).
      updates  how many backwards have updated each slot.
    Only slots marked computed (`set_computed`) are updated; the others keep their values.
    """

    def __init__(self, num_slots: int, decay: float = 0.95, device=None):
        super().__init__()
        if num_slots < 0:
            raise ValueError(f"num_slots: expected >= 0, got {num_slots}")
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay: expected a value in [0, 1), got {decay}")
        self.num_slots = num_slots
        self.decay = decay
        for name in ("taylor", "grow", "last"):
            self.register_buffer(name, torch.zeros(num_slots, device=device))
        self.register_buffer("updates", torch.zeros(num_slots, dtype=torch.long, device=device))
        self.register_buffer("computed", torch.ones(num_slots, dtype=torch.bool, device=device), persistent=False)
        self._make_tap()

    def _make_tap(self) -> None:
        self._tap = torch.zeros(2, self.num_slots, device=self.taylor.device, requires_grad=True)
        self._tap.register_post_accumulate_grad_hook(self._accumulate)
        self._indices: dict[tuple[int, ...], torch.Tensor] = {}  # checked slots -> their index on the device

    def __setstate__(self, state):
        super().__setstate__(state)
        self._make_tap()  # a copied tap (deepcopy, pickle) loses its hook: make it anew

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        self._make_tap()  # the tap is no buffer (it must stay a leaf): make it anew on the new device
        return self

    def tap(self, gates: torch.Tensor, slots: Sequence[int] | None = None) -> torch.Tensor:
        """gates, unchanged in value, wired so that this site's backward reaches the scores.

        slots: the slot of each gate (default: gate k feeds slot k), distinct ints in
        [0, num_slots). Host values, not a tensor: each distinct sequence is checked and copied to
        the device once, so a forward neither reads the device nor copies to it."""
        t = self._tap if slots is None else self._tap[:, self._index(slots)]
        if t.shape[1] != gates.shape[0]:
            raise ValueError(
                f"slots: expected one slot per gate ({gates.shape[0]}), got {t.shape[1]} "
                f"(this PathScores has {self.num_slots} slots)"
            )
        return gates * (1 + t[0]) + t[1]

    def _index(self, slots: Sequence[int]) -> torch.Tensor:
        if not isinstance(slots, (list, tuple)):
            raise TypeError(f"slots: expected a list or tuple of ints, got {type(slots).__name__}")
        key = tuple(slots)
        index = self._indices.get(key)
        if index is None:
            if not all(isinstance(s, int) and not isinstance(s, bool) for s in key):
                raise TypeError(f"slots: expected ints, got {list(key)!r}")
            if not all(0 <= s < self.num_slots for s in key) or len(set(key)) != len(key):
                # a negative slot would index from the end, a repeated one would feed one slot twice
                raise ValueError(f"slots: expected distinct slots in [0, {self.num_slots}), got {list(key)}")
            index = self._indices[key] = torch.tensor(key, dtype=torch.long, device=self.taylor.device)
        return index

    def set_computed(self, slots) -> None:
        """Which slots the site computes (active paths, plus probed ones on a probe step)."""
        self.computed.zero_()
        self.computed[torch.as_tensor(slots, dtype=torch.long, device=self.computed.device)] = True

    @torch.no_grad()
    def _accumulate(self, tap: torch.Tensor) -> None:
        taylor, grow = tap.grad[0].abs(), tap.grad[1]
        rate = torch.where(self.updates == 0, 1.0, 1.0 - self.decay)  # the first value is taken as is
        self.taylor.copy_(torch.where(self.computed, self.taylor + rate * (taylor - self.taylor), self.taylor))
        self.grow.copy_(torch.where(self.computed, self.grow + rate * (grow.abs() - self.grow), self.grow))
        self.last.copy_(torch.where(self.computed, grow, self.last))
        self.updates.add_(self.computed.long())
        tap.grad = None

    @torch.no_grad()
    def reset(self, slots) -> None:
        """Forget the statistics of `slots` (a path just grown or dropped)."""
        index = torch.as_tensor(slots, dtype=torch.long, device=self.taylor.device)
        for buffer in (self.taylor, self.grow, self.last, self.updates):
            buffer[index] = 0
