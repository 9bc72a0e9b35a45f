"""PlasticResNet: a ResNet whose residual paths (i -> j) between any nodes within reach are
switched on and off during training (DESIGN.md section 1).

    n_0 = stem(x)
    n_j = act( T_j(n_{j-1}) + sum over computed (i, j) of g_ij * f_ij(n_i) )      j = 1 .. D
    logits = fc(avgpool(n_D))

Every candidate path owns its parameters from the start (a path can be regrown with its
own shape at any time); only active paths, plus the probed ones inside `probing()`, are
computed. The join at node j runs through plasticnet.ops.residual_aggregate with node j's
PathScores (one slot per candidate path into j).
"""

import contextlib
import math
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from plasticnet.models.architectures import ARCHITECTURES, STEMS
from plasticnet.models.compilation import compile_each
from plasticnet.models.path import (
    BODIES,
    EXPANSION,
    GATE_POSITIONS,
    NormLayer,
    Path,
    init_resnet_weights,
    last_norm,
    make_body,
)
from plasticnet.ops import ACTIVATIONS, BACKENDS, residual_aggregate
from plasticnet.plasticity.scores import PathScores

INITS = ("resnet", "random")
PROJECTIONS = ("conv1x1", "conv3x3")
GATE_INITS = ("one", "zero", "uniform")
STATISTICS = ("taylor", "grow", "last", "updates")

Edge = tuple[int, int]


def _check_choice(name: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"{name}: expected one of {list(choices)}, got {value!r}")


def _check_positive_ints(name: str, values, length: int | None = None, minimum: int = 1) -> tuple[int, ...]:
    values = tuple(values)
    if not values or not all(isinstance(v, int) and v >= minimum for v in values):
        raise ValueError(f"{name}: expected a non-empty sequence of ints >= {minimum}, got {values!r}")
    if length is not None and len(values) != length:
        raise ValueError(f"{name}: expected {length} values (one per stage), got {len(values)}: {values!r}")
    return values


def _sync_after_load(model: "PlasticResNet", incompatible_keys) -> None:
    # a module-level function, not a lambda, so that torch.save(model) can pickle the hook
    model._sync_topology()
    # the loaded topology is the source model's, budget included: a controller on this model
    # must keep the loaded number of active paths, not the one this model was built with
    model.budget = len(model.active_paths())


@dataclass
class _JoinPlan:
    """What node j computes: the paths (key, source node), active ones first, then probed."""

    sources: list[tuple[str, int]]
    num_active: int
    slots: torch.Tensor  # slot in the site's PathScores of each computed path, on the model's device


class PlasticResNet(nn.Module):
    """A plastic ResNet (see the module docstring for the network).

    Arguments (the first row of the API is issue 4's; the rest express other networks, such as
    the original PlasticNet, through the same builder):
      arch           "resnet18" / "resnet34" (BasicBlock bodies), "resnet50" / "resnet101" /
                     "resnet152" (Bottleneck bodies): body kind and default nodes_per_stage.
      num_classes    outputs of the final fc layer.
      init           "resnet": exactly the paths (j-1 -> j) active, so with gate_init="one" the
                     model IS the ordinary ResNet; "random": `initial_paths` plus paths drawn
                     with `seed` until `budget` are active.
      budget         number of active paths; default the node count D (the matching ResNet's
                     block count). init="resnet" needs budget == D. set_active() keeps it
                     (unless told otherwise); load_state_dict() takes the loaded model's.
      max_span       candidate paths (i -> j) have j - i <= max_span.
      base_width     first-stage width; stage widths default to base_width * (1, 2, 4, 8)
                     times the body expansion (4 for Bottleneck), as torchvision's ResNet.
      stem           "cifar" (3x3 stride-1 conv, no max-pool) or "imagenet" (7x7 stride-2 conv
                     and a 3x3 max-pool of stride `stem_pool_stride`).
      seed           seeds the random topology of init="random" (None: drawn from torch's
                     global generator). Weights follow torch's global generator, as any module.
      backend        residual_aggregate backend of every join (None: fastest available).
    Options:
      nodes_per_stage        block positions (nodes) per stage, e.g. (7, 10, 16, 7).
      stage_widths           output channels of each stage's nodes, e.g. (256, 512, 1024, 2048).
      stage_strides          stride of the trunk entering each stage; default (1, 2, 2, 2);
                             (2, 2, 2, 2) makes the first stage downsample too.
      stem_width             channels of n_0 (default base_width).
      stem_pool_stride       stride of the "imagenet" stem's max-pool (default 2; 1 keeps size).
      projection             trunk projection where the shape changes: "conv1x1" (strided 1x1
                             conv + BN, torchvision's downsample) or "conv3x3" (3x3 conv + BN).
      body                   "basic" or "bottleneck": overrides the arch's body kind.
      groups, width_per_group  Bottleneck grouping as torchvision's (ResNeXt, wide ResNets).
      norm_layer             normalisation layer factory (default nn.BatchNorm2d).
      gate_init              initial gate of every path: "one", "zero" or "uniform" in [0, 1).
      gate_position          "join": branch g * f(x) (default); "after_relu": g * relu(f(x)).
      join_activation        activation after each join: "relu" (default) or "none".
      max_resolution_changes candidate paths cross at most this many strided trunk positions.
      initial_paths          with init="random": paths active from the start, a list of (i, j)
                             or "stage_transitions" (the (j-1 -> j) path into each stage's
                             first node).
      zero_init_residual     zero the last BN gamma of every body at construction.
      score_decay            EMA decay of the per-site PathScores.

    Attributes: num_nodes (D), node_channels (n_0..n_D), node_stage (-1 for n_0),
    trunk_strides (T_1..T_D), budget; modules stem, trunk (trunk[j-1] = T_j), paths
    (key "i_j"), scores (scores[j-1] = PathScores of node j), avgpool, fc; buffer `active`
    (bool per candidate path, in candidate_paths() order).
    """

    def __init__(
        self,
        arch: str = "resnet18",
        num_classes: int = 10,
        *,
        init: str = "resnet",
        budget: int | None = None,
        max_span: int = 3,
        base_width: int = 64,
        stem: str = "cifar",
        seed: int | None = None,
        backend: str | None = None,
        nodes_per_stage: Sequence[int] | None = None,
        stage_widths: Sequence[int] | None = None,
        stage_strides: Sequence[int] = (1, 2, 2, 2),
        stem_width: int | None = None,
        stem_pool_stride: int = 2,
        projection: str = "conv1x1",
        body: str | None = None,
        groups: int = 1,
        width_per_group: int = 64,
        norm_layer: NormLayer = nn.BatchNorm2d,
        gate_init: str = "one",
        gate_position: str = "join",
        join_activation: str = "relu",
        max_resolution_changes: int = 1,
        initial_paths: Iterable[Edge] | str = (),
        zero_init_residual: bool = False,
        score_decay: float = 0.95,
    ):
        super().__init__()
        _check_choice("arch", arch, ARCHITECTURES)
        _check_choice("init", init, INITS)
        _check_choice("stem", stem, STEMS)
        _check_choice("projection", projection, PROJECTIONS)
        _check_choice("gate_init", gate_init, GATE_INITS)
        _check_choice("gate_position", gate_position, GATE_POSITIONS)
        _check_choice("join_activation", join_activation, ACTIVATIONS)
        if backend is not None:
            _check_choice("backend", backend, BACKENDS)
        for name, value, minimum in (
            ("num_classes", num_classes, 1),
            ("max_span", max_span, 1),
            ("base_width", base_width, 1),
            ("stem_pool_stride", stem_pool_stride, 1),
            ("max_resolution_changes", max_resolution_changes, 0),
            ("stem_width", base_width if stem_width is None else stem_width, 1),
        ):
            if not isinstance(value, int) or value < minimum:
                raise ValueError(f"{name}: expected an int >= {minimum}, got {value!r}")
        default_body, default_nodes = ARCHITECTURES[arch]
        self.body_kind = body if body is not None else default_body
        _check_choice("body", self.body_kind, BODIES)
        if self.body_kind == "basic" and (groups != 1 or width_per_group != 64):
            raise ValueError(
                f"groups, width_per_group: basic bodies support only 1 and 64 (as torchvision's "
                f"BasicBlock), got {groups} and {width_per_group}"
            )
        nodes_per_stage = _check_positive_ints("nodes_per_stage", nodes_per_stage or default_nodes)
        num_stages = len(nodes_per_stage)
        expansion = EXPANSION[self.body_kind]
        stage_widths = _check_positive_ints(
            "stage_widths",
            stage_widths or [base_width * 2 ** min(s, 3) * expansion for s in range(num_stages)],
            num_stages,
        )
        stage_strides = _check_positive_ints("stage_strides", stage_strides, num_stages)

        self.arch, self.backend, self.join_activation = arch, backend, join_activation
        self.gate_position = gate_position
        # Node layout: channels of n_0..n_D and the stride of each trunk position T_1..T_D.
        self.node_channels = [stem_width or base_width]
        self.trunk_strides = []
        self.node_stage = [-1]  # -1: the stem
        for s, (count, width, stride) in enumerate(zip(nodes_per_stage, stage_widths, stage_strides)):
            for position in range(count):
                self.node_channels.append(width)
                self.trunk_strides.append(stride if position == 0 else 1)
                self.node_stage.append(s)
        self.num_nodes = len(self.trunk_strides)  # D
        self._candidates = self._candidate_set(max_span, max_resolution_changes)
        self._candidate_index = {p: k for k, p in enumerate(self._candidates)}
        self.max_span, self.max_resolution_changes = max_span, max_resolution_changes
        self.budget = self._check_budget(budget, init, initial_paths)

        self.stem = self._make_stem(stem, stem_pool_stride, norm_layer)
        self.trunk = nn.ModuleList(
            self._make_projection(projection, j, norm_layer) for j in range(1, self.num_nodes + 1)
        )
        gate = {"one": lambda: 1.0, "zero": lambda: 0.0, "uniform": lambda: torch.rand(()).item()}[gate_init]
        self.paths = nn.ModuleDict(
            {
                self._key(i, j): Path(
                    make_body(
                        self.body_kind,
                        self.node_channels[i],
                        self.node_channels[j],
                        self._stride(i, j),
                        groups=groups,
                        width_per_group=width_per_group,
                        norm_layer=norm_layer,
                    ),
                    gate=gate(),
                    gate_position=gate_position,
                )
                for i, j in self._candidates
            }
        )
        # sources_into[j]: the candidate sources of node j, in slot order of its PathScores
        self._sources_into = [[] for _ in range(self.num_nodes + 1)]
        for i, j in self._candidates:
            self._sources_into[j].append(i)
        self.scores = nn.ModuleList(
            PathScores(len(self._sources_into[j]), decay=score_decay) for j in range(1, self.num_nodes + 1)
        )
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(self.node_channels[-1], num_classes)
        init_resnet_weights(self)
        if zero_init_residual:
            for path in self.paths.values():
                nn.init.zeros_(last_norm(path.body).weight)

        self.register_buffer("active", torch.zeros(len(self._candidates), dtype=torch.bool))
        self._probed: list[Edge] = []
        self._plans: list[_JoinPlan] = []
        self.register_load_state_dict_post_hook(_sync_after_load)
        self.set_active(self._initial_topology(init, initial_paths, seed))

    def get_extra_state(self) -> torch.Tensor:
        # What the model computes depends on these, but no tensor shape records them: without
        # them a state would load silently into a model that computes something else. A tensor,
        # so that code treating every state_dict value as one keeps working.
        return torch.tensor(
            [GATE_POSITIONS.index(self.gate_position), ACTIVATIONS.index(self.join_activation)], dtype=torch.uint8
        )

    def set_extra_state(self, state: torch.Tensor) -> None:
        gate_position, join_activation = (int(v) for v in state)
        if (GATE_POSITIONS[gate_position], ACTIVATIONS[join_activation]) != (self.gate_position, self.join_activation):
            raise ValueError(
                f"state_dict: saved from a PlasticResNet with gate_position={GATE_POSITIONS[gate_position]!r}, "
                f"join_activation={ACTIVATIONS[join_activation]!r}, but this model has "
                f"gate_position={self.gate_position!r}, join_activation={self.join_activation!r}; "
                "build it with the same options"
            )

    # ---- construction helpers ----

    def _stride(self, i: int, j: int) -> int:
        return math.prod(self.trunk_strides[i:j])  # trunk positions i+1 .. j

    def _candidate_set(self, max_span: int, max_changes: int) -> list[Edge]:
        return [
            (i, j)
            for j in range(1, self.num_nodes + 1)
            for i in range(max(0, j - max_span), j)
            if sum(s != 1 for s in self.trunk_strides[i:j]) <= max_changes
        ]

    @staticmethod
    def _key(i: int, j: int) -> str:
        return f"{i}_{j}"

    def _make_stem(self, stem: str, pool_stride: int, norm_layer: NormLayer) -> nn.Sequential:
        width = self.node_channels[0]
        if stem == "cifar":
            conv, pool = nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.Identity()
        else:
            conv, pool = nn.Conv2d(3, width, 7, 2, 3, bias=False), nn.MaxPool2d(3, pool_stride, 1)
        return nn.Sequential(OrderedDict(conv1=conv, bn1=norm_layer(width), relu=nn.ReLU(inplace=True), maxpool=pool))

    def _make_projection(self, kind: str, j: int, norm_layer: NormLayer) -> nn.Module:
        cin, cout, stride = self.node_channels[j - 1], self.node_channels[j], self.trunk_strides[j - 1]
        if stride == 1 and cin == cout:
            return nn.Identity()
        kernel = 1 if kind == "conv1x1" else 3
        return nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False), norm_layer(cout))

    def _check_budget(self, budget, init, initial_paths) -> int:
        if budget is None:
            budget = self.num_nodes
        if not isinstance(budget, int) or not 0 <= budget <= len(self._candidates):
            raise ValueError(
                f"budget: expected an int in [0, {len(self._candidates)}] (the candidate count), got {budget!r}"
            )
        if init == "resnet" and budget != self.num_nodes:
            raise ValueError(
                f"budget: init='resnet' activates the {self.num_nodes} paths (j-1 -> j), so budget "
                f"must be {self.num_nodes}, got {budget}"
            )
        if init == "resnet" and initial_paths:
            raise ValueError(
                f"initial_paths: only init='random' takes initial paths, got {initial_paths!r} with init='resnet'"
            )
        return budget

    def _initial_topology(self, init: str, initial_paths, seed: int | None) -> list[Edge]:
        chain = [(j - 1, j) for j in range(1, self.num_nodes + 1)]
        if init == "resnet":
            return chain
        if initial_paths == "stage_transitions":
            initial_paths = [
                (j - 1, j) for j in range(1, self.num_nodes + 1) if self.node_stage[j] != self.node_stage[j - 1]
            ]
        initial = self._check_paths("initial_paths", initial_paths)
        if len(initial) > self.budget:
            raise ValueError(f"initial_paths: expected at most budget={self.budget} paths, got {len(initial)}")
        if seed is None:
            seed = int(torch.randint(2**62, ()).item())
        generator = torch.Generator().manual_seed(seed)
        pool = [p for p in self._candidates if p not in initial]
        drawn = torch.randperm(len(pool), generator=generator)[: self.budget - len(initial)].tolist()
        return initial + [pool[k] for k in drawn]

    def _check_paths(self, name: str, paths: Iterable[Edge]) -> list[Edge]:
        """paths as a list of (i, j) int tuples; ValueError on non-candidates and duplicates."""
        if isinstance(paths, (str, bytes)) or not isinstance(paths, Iterable):
            raise TypeError(f"{name}: expected an iterable of (i, j) pairs, got {type(paths).__name__}")
        checked = []
        for p in paths:
            try:
                edge = (int(p[0]), int(p[1]))
                if len(p) != 2:
                    raise ValueError
            except (TypeError, ValueError, IndexError):
                raise TypeError(f"{name}: expected (i, j) pairs of ints, got {p!r}") from None
            if edge not in self._candidate_index:
                raise ValueError(
                    f"{name}: {edge} is not a candidate path (candidates: i < j, j - i <= "
                    f"max_span={self.max_span}, crossing <= {self.max_resolution_changes} resolution "
                    f"changes, nodes 0..{self.num_nodes}; see candidate_paths())"
                )
            if edge in checked:
                raise ValueError(f"{name}: {edge} is listed twice")
            checked.append(edge)
        return checked

    # ---- topology ----

    def candidate_paths(self) -> list[Edge]:
        """Every path that may be active, sorted."""
        return list(self._candidates)

    def active_paths(self) -> list[Edge]:
        """The active paths, sorted."""
        return [p for p, on in zip(self._candidates, self.active.tolist()) if on]

    def path(self, i: int, j: int) -> Path:
        """The module of path (i -> j): `.body` and `.gate` (a 0-dim nn.Parameter)."""
        (edge,) = self._check_paths("path", [(i, j)])
        return self.paths[self._key(*edge)]

    def gates(self) -> dict[Edge, torch.Tensor]:
        """The active paths' gates: (i, j) -> a 0-dim view of the gate (no grad, follows updates)."""
        return {p: self.paths[self._key(*p)].gate.detach() for p in self.active_paths()}

    def set_active(self, paths: Iterable[Edge], *, keep_budget: bool = True) -> None:
        """Make exactly `paths` active. Active paths' parameters (body and gate) train; inactive
        ones get requires_grad=False and grad None, so optimizers and weight decay skip them.
        `paths` must number `budget` (the count a controller keeps); keep_budget=False makes
        their number the new budget."""
        paths = self._check_paths("paths", paths)
        if keep_budget and len(paths) != self.budget:
            raise ValueError(
                f"paths: expected {self.budget} paths (the budget), got {len(paths)}; pass "
                f"keep_budget=False to change the budget"
            )
        self.budget = len(paths)
        active = torch.zeros(len(self._candidates), dtype=torch.bool)
        active[torch.tensor([self._candidate_index[p] for p in paths], dtype=torch.long)] = True
        self.active.copy_(active)  # in place: the buffer keeps its device
        self._sync_topology()

    @contextlib.contextmanager
    def probing(self, paths: Iterable[Edge]):
        """Inside the context, forward also computes the given inactive candidates with gate 0:
        the output is unchanged, their parameters get no gradient, and their contribution c
        reaches the sites' PathScores ("last", "grow")."""
        if self._probed:
            # the inner context's exit would silently end the outer one's probe
            raise RuntimeError(f"probing: already probing {self._probed}; probing() contexts do not nest")
        probed = self._check_paths("paths", paths)
        active = set(self.active_paths())
        if any(p in active for p in probed):
            raise ValueError(
                f"paths: expected inactive candidates to probe, got active ones {sorted(set(probed) & active)}"
            )
        self._probed = probed
        self._sync_topology()
        try:
            yield self
        finally:
            self._probed = []
            self._sync_topology()

    def _sync_topology(self) -> None:
        """Re-derive everything that follows the `active` buffer (and the probed set): trainable
        flags, the per-node join plans, and which slots each site's PathScores updates."""
        active = set(self.active_paths())
        for p in self._candidates:
            path = self.paths[self._key(*p)]
            for param in path.parameters():
                param.requires_grad_(p in active)
                if p not in active:
                    param.grad = None
        device = self.active.device
        self._plans = []
        for j in range(1, self.num_nodes + 1):
            computed = [i for i in self._sources_into[j] if (i, j) in active] + [i for i, jj in self._probed if jj == j]
            slots = [self._sources_into[j].index(i) for i in computed]
            self.scores[j - 1].set_computed(slots)
            self._plans.append(
                _JoinPlan(
                    sources=[(self._key(i, j), i) for i in computed],
                    num_active=sum((i, j) in active for i in computed),
                    slots=torch.tensor(slots, dtype=torch.long, device=device),
                )
            )

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        self._sync_topology()  # the plans' slot tensors follow the model's device
        return self

    # ---- forward ----

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        nodes = [self.stem(x)]
        for j, plan in enumerate(self._plans, start=1):
            trunk = self.trunk[j - 1](nodes[j - 1])
            branches = [self.paths[key](nodes[i]) for key, i in plan.sources]
            # probed paths join with gate 0: computed (their c reaches the scores), function unchanged
            gates = [self.paths[key].gate for key, _ in plan.sources[: plan.num_active]] + [
                trunk.new_zeros((), dtype=torch.float32)
            ] * (len(plan.sources) - plan.num_active)
            gates = torch.stack(gates) if gates else trunk.new_zeros(0, dtype=torch.float32)
            nodes.append(
                residual_aggregate(
                    trunk,
                    branches,
                    gates,
                    torch.ones_like(gates),
                    activation=self.join_activation,
                    backend=self.backend,
                    scores=self.scores[j - 1],
                    slots=plan.slots,
                )
            )
        return self.fc(torch.flatten(self.avgpool(nodes[-1]), 1))

    # ---- parameters and statistics ----

    def num_parameters(self, active_only: bool = False, gates: bool = True) -> int:
        """Parameter count: all of them, or only those the active topology uses (stem, trunk,
        head and active paths). gates=False leaves out the one scalar gate per path, for
        comparison with a plain ResNet."""
        inactive_paths = set(self._candidates) - set(self.active_paths()) if active_only else set()
        inactive = {id(t) for p in inactive_paths for t in self.paths[self._key(*p)].parameters()}
        gate_ids = set() if gates else {id(path.gate) for path in self.paths.values()}
        return sum(t.numel() for t in self.parameters() if id(t) not in inactive and id(t) not in gate_ids)

    @torch.no_grad()
    def reinitialize_path(self, i: int, j: int, zero_init_last_bn: bool = False) -> None:
        """Fresh body weights (torchvision's initialisation, running statistics reset) and gate 0,
        so growing the path leaves the network's function unchanged. zero_init_last_bn also
        zeroes the body's last BN gamma (then the path needs its gate AND gamma to move first)."""
        path = self.path(i, j)
        init_resnet_weights(path.body)
        if zero_init_last_bn:
            last_norm(path.body).weight.zero_()
        path.gate.zero_()

    def _site_slot(self, p: Edge) -> tuple[int, int]:
        i, j = p
        return j - 1, self._sources_into[j].index(i)

    def path_statistics(self) -> dict[str, torch.Tensor]:
        """The sites' PathScores gathered into 1-D float tensors aligned with candidate_paths():
        "taylor" (EMA |g c|), "grow" (EMA |c|), "last" (latest c) and "updates" (backward count)."""
        order = [self._site_slot(p) for p in self._candidates]
        # sites are concatenated in node order; offsets turn (site, slot) into a flat index
        offsets = [0]
        for site in self.scores:
            offsets.append(offsets[-1] + site.num_slots)
        index = torch.tensor([offsets[s] + k for s, k in order], dtype=torch.long, device=self.active.device)
        return {name: torch.cat([getattr(site, name) for site in self.scores]).float()[index] for name in STATISTICS}

    def reset_path_statistics(self, paths: Iterable[Edge]) -> None:
        """Forget the PathScores statistics of `paths` (just grown or dropped)."""
        by_site: dict[int, list[int]] = {}
        for p in self._check_paths("paths", paths):
            site, slot = self._site_slot(p)
            by_site.setdefault(site, []).append(slot)
        for site, slots in by_site.items():
            self.scores[site].reset(slots)

    def compile_parts(self, **options) -> None:
        """Compile the stem, the trunk projections, every path and the head separately: the
        topology changes during training, and per-part compilation never recompiles for it."""
        compile_each((self.stem, *self.trunk, *self.paths.values(), self.fc), **options)

    def topology(self) -> str:
        """A readable summary: nodes per stage and the active paths with their gates."""
        lines = [
            f"PlasticResNet({self.arch}, {self.body_kind} bodies): {self.num_nodes + 1} nodes, "
            f"{len(self.active_paths())} of {len(self._candidates)} candidate paths active (budget {self.budget})"
        ]
        stages = sorted(set(self.node_stage[1:]))
        for s in stages:
            nodes = [j for j in range(1, self.num_nodes + 1) if self.node_stage[j] == s]
            lines.append(
                f"  stage {s}: nodes {nodes[0]}..{nodes[-1]} ({len(nodes)}), {self.node_channels[nodes[0]]} "
                f"channels, entered with stride {self.trunk_strides[nodes[0] - 1]}"
            )
        gates = self.gates()
        lines.append("  active paths (i -> j: gate):")
        lines += [f"    {i:3d} -> {j:3d}: {g.item():+.4f}" for (i, j), g in gates.items()]
        return "\n".join(lines)
