"""The topology of a plastic network, apart from its modules: nodes and stages, the candidate
residual paths (i -> j), the active and probed ones, the budget of active paths, and where
each path's statistics sit. Plain Python (torch only seeds the draw of a random topology),
so any plastic network, real or fake, keeps its bookkeeping here.
"""

import contextlib
import math
import operator
from collections.abc import Iterable, Iterator, Sequence

import torch

PathId = tuple[int, int]  # (source node i, target node j) of the residual path i -> j
INITS = ("resnet", "random")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # True would count as 1


def check_int(name: str, value, minimum: int, maximum: int | None = None, note: str = "") -> int:
    """value itself; TypeError unless it is an int (a bool is not), ValueError outside [minimum, maximum]."""
    expected = f"an int >= {minimum}" if maximum is None else f"an int in [{minimum}, {maximum}]{note}"
    if not _is_int(value):
        raise TypeError(f"{name}: expected {expected}, got {type(value).__name__} {value!r}")
    if value < minimum or (maximum is not None and value > maximum):
        raise ValueError(f"{name}: expected {expected}, got {value!r}")
    return value


def check_positive_ints(name: str, values, length: int | None = None, minimum: int = 1) -> tuple[int, ...]:
    """values as a tuple; TypeError unless they are ints (no bools), ValueError unless they are a
    non-empty sequence of ints >= minimum (of `length`)."""
    values = tuple(values)
    if not all(_is_int(v) for v in values):
        raise TypeError(f"{name}: expected a non-empty sequence of ints >= {minimum}, got {values!r}")
    if not values or not all(v >= minimum for v in values):
        raise ValueError(f"{name}: expected a non-empty sequence of ints >= {minimum}, got {values!r}")
    if length is not None and len(values) != length:
        raise ValueError(f"{name}: expected {length} values (one per stage), got {len(values)}: {values!r}")
    return values


class Topology:
    """Nodes n_0 (the stem's output) .. n_D in stages, and which residual paths join them.

    Layout: stage s holds nodes_per_stage[s] nodes; the trunk position entering its first node
    has stride stage_strides[s], every other one stride 1. Node 0 belongs to no stage (-1).
    Candidates: every (i, j) with i < j, j - i <= max_span, crossing at most
    max_resolution_changes strided trunk positions, ordered by target node, then source node
    (the order of candidate_paths() and active_paths()). A path belongs to the stage of node j.
    Slots: node j's PathScores hold one slot per candidate source of j, in sources_into(j) order.
    Budget: how many paths are active (default D, the ResNet's block count); with
    budget_per_stage, how many paths each stage keeps (budget is then their sum).
    No path is active until set_active().
    """

    def __init__(
        self,
        nodes_per_stage: Sequence[int],
        stage_strides: Sequence[int] | None = None,
        *,
        max_span: int = 3,
        max_resolution_changes: int = 1,
        budget: int | None = None,
        budget_per_stage: Sequence[int] | None = None,
    ):
        self.nodes_per_stage = check_positive_ints("nodes_per_stage", nodes_per_stage)
        self.num_stages = len(self.nodes_per_stage)
        strides = (1,) * self.num_stages if stage_strides is None else stage_strides
        stage_strides = check_positive_ints("stage_strides", strides, self.num_stages)
        self.max_span = check_int("max_span", max_span, 1)
        self.max_resolution_changes = check_int("max_resolution_changes", max_resolution_changes, 0)
        self.node_stage = (-1,) + tuple(s for s, count in enumerate(self.nodes_per_stage) for _ in range(count))
        # trunk_strides[j - 1]: the stride of trunk position T_j, which enters node j
        self.trunk_strides = tuple(
            stage_strides[s] if position == 0 else 1
            for s, count in enumerate(self.nodes_per_stage)
            for position in range(count)
        )
        self.num_nodes = len(self.trunk_strides)
        self._candidates = [
            (i, j)
            for j in range(1, self.num_nodes + 1)
            for i in range(max(0, j - max_span), j)
            if sum(s != 1 for s in self.trunk_strides[i:j]) <= max_resolution_changes
        ]
        self._candidate_index = {p: k for k, p in enumerate(self._candidates)}
        self._sources_into: list[list[int]] = [[] for _ in range(self.num_nodes + 1)]
        for i, j in self._candidates:
            self._sources_into[j].append(i)
        self._budget, self._budget_per_stage = self._check_budget(budget, budget_per_stage)
        self._active: frozenset[PathId] = frozenset()
        self._active_in_order: list[PathId] = []
        self._probed: list[PathId] = []

    def _check_budget(self, budget, budget_per_stage) -> tuple[int, tuple[int, ...] | None]:
        if budget is not None:
            check_int("budget", budget, 0, len(self._candidates), " (the candidate count)")
        if budget_per_stage is None:
            return (self.num_nodes if budget is None else budget), None
        per_stage = check_positive_ints("budget_per_stage", budget_per_stage, self.num_stages, minimum=0)
        for s, (wanted, available) in enumerate(zip(per_stage, self._count_stages(self._candidates))):
            if wanted > available:
                raise ValueError(
                    f"budget_per_stage: stage {s} has {available} candidate paths, so it cannot keep {wanted} active"
                )
        if budget is not None and budget != sum(per_stage):
            raise ValueError(
                f"budget_per_stage: {per_stage} sums to {sum(per_stage)}, but budget is {budget}; "
                "give budget_per_stage alone, or a budget equal to its sum"
            )
        return sum(per_stage), per_stage

    # ---- layout ----

    def candidate_paths(self) -> list[PathId]:
        """Every path that may be active, by target node, then source node."""
        return list(self._candidates)

    def chain(self) -> list[PathId]:
        """The paths (j-1 -> j) into every node: the topology of the ordinary ResNet."""
        return [(j - 1, j) for j in range(1, self.num_nodes + 1)]

    def stage_transitions(self) -> list[PathId]:
        """The paths (j-1 -> j) into each stage's first node."""
        return [p for p in self.chain() if self.node_stage[p[1]] != self.node_stage[p[0]]]

    def stride(self, path: PathId) -> int:
        """The stride of path (i -> j): that of the trunk positions i+1 .. j it spans."""
        i, j = path
        return math.prod(self.trunk_strides[i:j])

    def stage_of(self, path: PathId) -> int:
        """The stage of the candidate path (i -> j): that of node j."""
        ((_, j),) = self.check_paths("path", [path])
        return self.node_stage[j]

    def stage_counts(self, paths: Iterable[PathId]) -> tuple[int, ...]:
        """How many of the (distinct candidate) paths belong to each stage."""
        return self._count_stages(self.check_paths("paths", paths))

    def _count_stages(self, paths: Iterable[PathId]) -> tuple[int, ...]:
        counts = [0] * self.num_stages
        for _, j in paths:
            counts[self.node_stage[j]] += 1
        return tuple(counts)

    def sources_into(self, j: int) -> list[int]:
        """The candidate sources i of node j, in the slot order of node j's PathScores."""
        if not isinstance(j, int) or not 1 <= j <= self.num_nodes:
            raise ValueError(f"j: expected a node in 1..{self.num_nodes}, got {j!r}")
        return list(self._sources_into[j])

    def site_slot(self, path: PathId) -> tuple[int, int]:
        """Where the statistics of a candidate path (i -> j) sit: site j - 1 (the PathScores of
        node j, sites counted from node 1) and the slot of source i there."""
        ((i, j),) = self.check_paths("path", [path])
        return j - 1, self._sources_into[j].index(i)

    def check_paths(self, name: str, paths: Iterable[PathId]) -> list[PathId]:
        """paths as a list of (i, j) int tuples, in their order; TypeError on anything but (i, j)
        pairs of integers (a float or bool is none, even 1.0: int() would truncate 1.7 silently),
        ValueError on non-candidates and duplicates (`name` names the argument)."""
        if isinstance(paths, (str, bytes)) or not isinstance(paths, Iterable):
            raise TypeError(f"{name}: expected an iterable of (i, j) pairs, got {type(paths).__name__}")
        checked: list[PathId] = []
        for p in paths:
            try:
                if len(p) != 2 or any(isinstance(v, bool) for v in p):
                    raise TypeError
                path = (operator.index(p[0]), operator.index(p[1]))  # ints, numpy or 0-dim integer tensors
            except TypeError:
                raise TypeError(f"{name}: expected (i, j) pairs of ints, got {p!r}") from None
            if path not in self._candidate_index:
                raise ValueError(
                    f"{name}: {path} is not a candidate path (candidates: i < j, j - i <= "
                    f"max_span={self.max_span}, crossing <= {self.max_resolution_changes} resolution "
                    f"changes, nodes 0..{self.num_nodes}; see candidate_paths())"
                )
            if path in checked:
                raise ValueError(f"{name}: {path} is listed twice")
            checked.append(path)
        return checked

    # ---- budget and active paths ----

    @property
    def budget(self) -> int:
        """How many paths set_active() keeps active."""
        return self._budget

    @property
    def budget_per_stage(self) -> tuple[int, ...] | None:
        """How many active paths set_active() keeps in each stage; None when only the total counts."""
        return self._budget_per_stage

    def active_paths(self) -> list[PathId]:
        """The active paths, in candidate_paths() order."""
        return list(self._active_in_order)

    def set_active(self, paths: Iterable[PathId], *, keep_budget: bool = True) -> None:
        """Make exactly `paths` active. They must number `budget` (and `budget_per_stage` in each
        stage, when there is one); keep_budget=False makes their numbers the new budget."""
        paths = self.check_paths("paths", paths)
        counts = self._count_stages(paths)
        if keep_budget and len(paths) != self._budget:
            raise ValueError(
                f"paths: expected {self._budget} paths (the budget), got {len(paths)}; pass "
                "keep_budget=False to change the budget"
            )
        if keep_budget and self._budget_per_stage is not None and counts != self._budget_per_stage:
            raise ValueError(
                f"paths: expected {self._budget_per_stage} paths per stage (the budget per stage), got "
                f"{counts}; pass keep_budget=False to change the budget"
            )
        self._budget = len(paths)
        if self._budget_per_stage is not None:
            self._budget_per_stage = counts
        self._active = frozenset(paths)
        self._active_in_order = [p for p in self._candidates if p in self._active]

    def initial_topology(
        self, init: str, initial_paths: Iterable[PathId] | str = (), seed: int | None = None
    ) -> list[PathId]:
        """The paths a new network starts with. init="resnet": the chain (needs budget == D, and
        budget_per_stage == nodes_per_stage when there is one). init="random": `initial_paths` (a
        list of (i, j), or "stage_transitions") plus paths drawn with `seed` (None: drawn from
        torch's global generator) up to the budget, in each stage up to its own when there is one."""
        if init not in INITS:
            raise ValueError(f"init: expected one of {list(INITS)}, got {init!r}")
        if init == "resnet":
            if self._budget_per_stage not in (None, self.nodes_per_stage):
                raise ValueError(
                    f"budget_per_stage: init='resnet' activates the paths (j-1 -> j), so it must be "
                    f"nodes_per_stage={self.nodes_per_stage}, got {self._budget_per_stage}"
                )
            if self._budget != self.num_nodes:
                raise ValueError(
                    f"budget: init='resnet' activates the {self.num_nodes} paths (j-1 -> j), so budget "
                    f"must be {self.num_nodes}, got {self._budget}"
                )
            if initial_paths:
                raise ValueError(
                    f"initial_paths: only init='random' takes initial paths, got {initial_paths!r} with init='resnet'"
                )
            return self.chain()
        if initial_paths == "stage_transitions":
            initial_paths = self.stage_transitions()
        initial = self.check_paths("initial_paths", initial_paths)
        if len(initial) > self._budget:
            raise ValueError(f"initial_paths: expected at most budget={self._budget} paths, got {len(initial)}")
        if self._budget_per_stage is None:
            groups = [(self._candidates, self._budget)]
        else:
            for s, (count, budget) in enumerate(zip(self._count_stages(initial), self._budget_per_stage)):
                if count > budget:
                    raise ValueError(
                        f"initial_paths: expected at most budget_per_stage[{s}]={budget} paths into stage {s}, "
                        f"got {count}"
                    )
            groups = [
                ([p for p in self._candidates if self.node_stage[p[1]] == s], budget)
                for s, budget in enumerate(self._budget_per_stage)
            ]
        if seed is None:
            seed = int(torch.randint(2**62, ()).item())
        generator = torch.Generator().manual_seed(seed)
        drawn = list(initial)
        for candidates, budget in groups:
            pool = [p for p in candidates if p not in initial]
            count = budget - (len(candidates) - len(pool))  # the group's initial paths count toward its budget
            drawn += [pool[k] for k in torch.randperm(len(pool), generator=generator)[:count].tolist()]
        return drawn

    # ---- probed paths ----

    @contextlib.contextmanager
    def probing(self, paths: Iterable[PathId]) -> Iterator[None]:
        """Inside the context, computed_sources() also lists the given inactive candidates."""
        if self._probed:
            # the inner context's exit would silently end the outer one's probe
            raise RuntimeError(f"probing: already probing {self._probed}; probing() contexts do not nest")
        probed = self.check_paths("paths", paths)
        active = sorted(self._active.intersection(probed))
        if active:
            raise ValueError(f"paths: expected inactive candidates to probe, got active ones {active}")
        self._probed = probed
        try:
            yield
        finally:
            self._probed = []

    def computed_sources(self, j: int) -> tuple[list[int], int]:
        """The sources i of the paths into node j that a forward computes: the active ones in
        slot order, then the probed ones; and how many of them are active."""
        active = [i for i in self.sources_into(j) if (i, j) in self._active]
        return active + [i for i, target in self._probed if target == j], len(active)
