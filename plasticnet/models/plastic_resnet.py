"""PlasticResNet: a ResNet whose residual paths (i -> j) between any nodes within reach are
switched on and off during training.

    n_0 = stem(x)
    n_j = act( T_j(n_{j-1}) + sum over computed (i, j) of g_ij * f_ij(n_i) )      j = 1 .. D
    logits = fc(avgpool(n_D))

Every candidate path owns its parameters from the start (a path can be regrown with its own shape at any
time); only active paths, plus the probed ones inside `probing()`, are computed. The join at node j runs
through plasticnet.ops.residual_aggregate with node j's PathScores (one slot per candidate path into j).
Which paths exist, are active or probed, and the budget they keep, is the model's Topology.
"""

import contextlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from plasticnet.models.architectures import ARCHITECTURES
from plasticnet.models.compilation import compile_each
from plasticnet.models.fade_in import FadeIn
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
from plasticnet.models.static_network import StaticNetwork, to_static
from plasticnet.models.summary import describe
from plasticnet.models.topology import INITS, PathId, Topology, check_int, check_positive_ints
from plasticnet.models.trunk import make_projection, make_stem
from plasticnet.ops import ACTIVATIONS, BACKENDS, PathScores, residual_aggregate

GATE_INITS = ("one", "zero", "uniform")
STATISTICS = ("taylor", "grow", "last", "updates")


def _sync_after_load(model: "PlasticResNet", incompatible_keys) -> None:
    # A module-level function, not a lambda, so that torch.save(model) can pickle the hook. The
    # loaded topology is the source model's, budgets included: a controller keeps the loaded counts.
    loaded = [p for p, on in zip(model.candidate_paths(), model.active.tolist()) if on]
    model._topology.set_active(loaded, keep_budget=False)
    model._sync_topology()


@dataclass
class _JoinPlan:
    """What node j computes: the paths (key, source node), active ones first, then probed."""

    sources: list[tuple[str, int]]
    num_active: int
    slots: tuple[int, ...]  # slot in the site's PathScores of each computed path
    scaled: torch.Tensor | None  # candidate index of each computed path while one of them is faded in, else None


class PlasticResNet(nn.Module):
    """A plastic ResNet (see the module docstring for the network).

    Arguments (torchvision's ResNets; the options express others, e.g. the original PlasticNet):
      arch           "resnet18" / "resnet34" (BasicBlock bodies), "resnet50" / "resnet101" /
                     "resnet152" (Bottleneck bodies): body kind and default nodes_per_stage.
      num_classes    outputs of the final fc layer.
      init           "resnet": exactly the paths (j-1 -> j) active, so with gate_init="one" the
                     model IS the ordinary ResNet; "random": `initial_paths` plus paths drawn
                     with `seed` (None: from torch's global generator) up to the budget.
      budget, budget_per_stage  active paths in all (default D, the ResNet's block count) and
                     per stage (None: only the total counts). set_active() keeps them unless
                     told otherwise; load_state_dict() takes the loaded model's.
      max_span       candidate paths (i -> j) have j - i <= max_span.
      base_width     first-stage width; stage widths default to base_width * (1, 2, 4, 8)
                     times the body expansion (4 for Bottleneck), as torchvision's ResNet.
      stem           "cifar" (3x3 stride-1 conv, no max-pool) or "imagenet" (7x7 stride-2 conv
                     and a 3x3 max-pool of stride `stem_pool_stride`, default 2).
      backend        residual_aggregate backend of every join (None: fastest available).
    Options:
      nodes_per_stage, stage_widths, stage_strides  per stage: its nodes, their channels, the
                     stride entering it (default (1, 2, 2, 2)); stem_width, stem_pool_stride:
                     channels of n_0 (default base_width), the max-pool's stride.
      projection     trunk projection where the shape changes: "conv1x1" (strided 1x1 conv +
                     BN, torchvision's downsample) or "conv3x3" (3x3 conv + BN).
      body, groups, width_per_group, norm_layer  body kind (overriding the arch's), Bottleneck
                     grouping as torchvision's (ResNeXt, wide ResNets), normalisation factory.
      gate_init      initial gate of every path: "one", "zero" or "uniform" in [0, 1).
      gate_position  "join": branch g * f(x) (default); "after_relu": g * relu(f(x)).
      join_activation  activation after each join: "relu" (default) or "none".
      max_resolution_changes  candidate paths cross at most this many strided trunk positions.
      initial_paths  with init="random": paths active from the start, a list of (i, j) or
                     "stage_transitions" (the (j-1 -> j) into each stage's first node).
      zero_init_residual  zero the last BN gamma of every body at construction.
      score_decay    EMA decay of the per-site PathScores.
    The topology options are those of plasticnet.models.topology.Topology, which checks them.

    Attributes: num_nodes (D), node_channels (n_0..n_D), node_stage (-1 for n_0), trunk_strides
    (T_1..T_D), max_span, max_resolution_changes; modules stem, trunk (trunk[j-1] = T_j), paths
    (key "i_j"), scores (scores[j-1] = PathScores of node j), avgpool, fc; buffers `active` (bool
    per candidate path, in candidate_paths() order) and `join_scale` (m per candidate, see start_ramp).
    """

    def __init__(
        self,
        arch: str = "resnet18",
        num_classes: int = 10,
        *,
        init: str = "resnet",
        budget: int | None = None,
        budget_per_stage: Sequence[int] | None = None,
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
        initial_paths: Iterable[PathId] | str = (),
        zero_init_residual: bool = False,
        score_decay: float = 0.95,
    ):
        super().__init__()
        for name, value, choices in (
            ("arch", arch, ARCHITECTURES),
            ("init", init, INITS),
            ("gate_init", gate_init, GATE_INITS),
            ("gate_position", gate_position, GATE_POSITIONS),
            ("join_activation", join_activation, ACTIVATIONS),
            ("backend", backend, (None, *BACKENDS)),
        ):
            if value not in choices:
                raise ValueError(f"{name}: expected one of {[c for c in choices if c is not None]}, got {value!r}")
        stem_width = base_width if stem_width is None else stem_width
        positive = {"num_classes": num_classes, "base_width": base_width, "stem_pool_stride": stem_pool_stride}
        for name, value in {**positive, "stem_width": stem_width}.items():
            check_int(name, value, 1)
        default_body, default_nodes = ARCHITECTURES[arch]
        self.body_kind = body if body is not None else default_body
        if self.body_kind not in BODIES:
            raise ValueError(f"body: expected one of {list(BODIES)}, got {self.body_kind!r}")
        if self.body_kind == "basic" and (groups != 1 or width_per_group != 64):
            raise ValueError(
                f"groups, width_per_group: basic bodies support only 1 and 64 (as torchvision's "
                f"BasicBlock), got {groups} and {width_per_group}"
            )
        limits = dict(max_span=max_span, max_resolution_changes=max_resolution_changes)
        budgets = dict(budget=budget, budget_per_stage=budget_per_stage)
        self._topology = topology = Topology(nodes_per_stage or default_nodes, stage_strides, **limits, **budgets)
        default_widths = [base_width * 2 ** min(s, 3) * EXPANSION[self.body_kind] for s in range(topology.num_stages)]
        stage_widths = check_positive_ints("stage_widths", stage_widths or default_widths, topology.num_stages)

        self.arch, self.backend, self.join_activation = arch, backend, join_activation
        self.gate_position = gate_position
        self.num_nodes, self.node_stage = topology.num_nodes, topology.node_stage
        self.trunk_strides = topology.trunk_strides
        self.max_span, self.max_resolution_changes = max_span, max_resolution_changes
        self.node_channels = [stem_width] + [stage_widths[s] for s in self.node_stage[1:]]

        self.stem = make_stem(stem, stem_width, stem_pool_stride, norm_layer)
        self.trunk = nn.ModuleList(
            make_projection(projection, self.node_channels[j - 1], self.node_channels[j], stride, norm_layer)
            for j, stride in enumerate(self.trunk_strides, start=1)
        )
        gate = {"one": lambda: 1.0, "zero": lambda: 0.0, "uniform": lambda: torch.rand(()).item()}[gate_init]
        self.paths = nn.ModuleDict()
        body_options = dict(groups=groups, width_per_group=width_per_group, norm_layer=norm_layer)
        for i, j in topology.candidate_paths():
            shape = (self.node_channels[i], self.node_channels[j], topology.stride((i, j)))
            body = make_body(self.body_kind, *shape, **body_options)
            self.paths[self._key(i, j)] = Path(body, gate=gate(), gate_position=gate_position)
        self.scores = nn.ModuleList(
            PathScores(len(topology.sources_into(j)), decay=score_decay) for j in range(1, self.num_nodes + 1)
        )
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(self.node_channels[-1], num_classes)
        init_resnet_weights(self)
        if zero_init_residual:
            for path in self.paths.values():
                nn.init.zeros_(last_norm(path.body).weight)

        self.register_buffer("active", torch.zeros(len(topology.candidate_paths()), dtype=torch.bool))
        # m_k of the fused join per candidate: 1 except for paths being faded in (start_ramp)
        for name in ("join_scale", "join_done", "join_steps"):  # m = min(done / steps, 1), see start_ramp
            self.register_buffer(name, torch.ones(len(topology.candidate_paths())), persistent=False)
        self._fade_in = FadeIn()
        self._plans: list[_JoinPlan] = []
        self.register_load_state_dict_post_hook(_sync_after_load)
        self.set_active(topology.initial_topology(init, initial_paths, seed))

    def get_extra_state(self) -> torch.Tensor:
        # What the model computes depends on these, but no tensor shape records them: without them a state
        # would load silently into a model that computes something else. A tensor, as state_dict values are.
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

    @staticmethod
    def _key(i: int, j: int) -> str:
        return f"{i}_{j}"

    # ---- topology ----

    budget = property(lambda self: self._topology.budget, doc="Number of active paths that set_active() keeps.")
    budget_per_stage = property(lambda self: self._topology.budget_per_stage, doc="Per stage; None: only the total.")

    def stage_of(self, path: PathId) -> int:
        """The stage of the candidate path (i -> j): that of node j."""
        return self._topology.stage_of(path)

    def candidate_paths(self) -> list[PathId]:
        """Every path that may be active, by target node, then source node."""
        return self._topology.candidate_paths()

    def active_paths(self) -> list[PathId]:
        """The active paths, in candidate_paths() order."""
        return self._topology.active_paths()

    def path(self, i: int, j: int) -> Path:
        """The module of path (i -> j): `.body` and `.gate` (a 0-dim nn.Parameter)."""
        ((i, j),) = self._topology.check_paths("path", [(i, j)])
        return self.paths[self._key(i, j)]

    def gates(self) -> dict[PathId, torch.Tensor]:
        """The active paths' gates: (i, j) -> a 0-dim view of the gate (no grad, follows updates)."""
        return {p: self.paths[self._key(*p)].gate.detach() for p in self.active_paths()}

    def set_active(self, paths: Iterable[PathId], *, keep_budget: bool = True) -> None:
        """Make exactly `paths` active. Active paths' parameters (body and gate) train; inactive
        ones get requires_grad=False and grad None, so optimizers and weight decay skip them.
        `paths` must number `budget` (and `budget_per_stage` in each stage, when set): the counts
        a controller keeps; keep_budget=False makes their numbers the new budget."""
        self._topology.set_active(paths, keep_budget=keep_budget)
        active = set(self.active_paths())
        # in place: the buffer keeps its device
        self.active.copy_(torch.tensor([p in active for p in self.candidate_paths()], dtype=torch.bool))
        self._sync_topology()

    @contextlib.contextmanager
    def probing(self, paths: Iterable[PathId]):
        """Inside the context, forward also computes the given inactive candidates with gate 0:
        the output is unchanged, their parameters get no gradient, and their contribution c
        reaches the sites' PathScores ("last", "grow")."""
        try:
            with self._topology.probing(paths):
                self._sync_topology()
                yield self
        finally:
            self._sync_topology()

    def _sync_topology(self) -> None:
        """Re-derive everything that follows the topology's active and probed paths: trainable
        flags, the per-node join plans, and which slots each site's PathScores updates."""
        active = set(self.active_paths())
        for p in self.candidate_paths():
            for param in self.paths[self._key(*p)].parameters():
                param.requires_grad_(p in active)
                if p not in active:
                    param.grad = None
        device, candidates = self.active.device, self.candidate_paths()
        self._plans = []
        for j in range(1, self.num_nodes + 1):
            computed, num_active = self._topology.computed_sources(j)
            slots = tuple(self._topology.site_slot((i, j))[1] for i in computed)
            self.scores[j - 1].set_computed(slots)
            scaled = None  # the candidate index of each computed path, while one of them fades in
            if any((i, j) in self._fade_in for i in computed):
                scaled = torch.tensor([candidates.index((i, j)) for i in computed], device=device)
            sources = [(self._key(i, j), i) for i in computed]
            self._plans.append(_JoinPlan(sources, num_active, slots, scaled))

    def start_ramp(self, paths: Iterable[PathId], steps: int) -> None:
        """Fade `paths` in: their join scale m (the op's mask) goes 0 -> 1 over `steps` advance_ramp()s."""
        self._fade_in.start(self._topology.check_paths("paths", paths), steps)
        for buffer, values in zip((self.join_done, self.join_steps), self._fade_in.progress(self.candidate_paths())):
            buffer.copy_(values)  # a rewire step's one host-to-device copy
        self.advance_ramp(steps=0)
        self._sync_topology()

    def advance_ramp(self, steps: int = 1) -> None:
        """One step of every fade-in in progress (no tensor touched when none is)."""
        if not self._fade_in:
            return
        for _ in range(steps):
            self._fade_in.advance()
        self.join_done.add_(steps)  # on the device: a step of a fade never synchronises the host
        torch.clamp(self.join_done / self.join_steps, max=1.0, out=self.join_scale)
        for j, plan in enumerate(self._plans, start=1):  # a join whose fades are over needs no mask
            if plan.scaled is not None and not any((i, j) in self._fade_in for _, i in plan.sources):
                plan.scaled = None

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        self._sync_topology()  # the plans' index tensors follow the model's device
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
            mask = torch.ones_like(gates) if plan.scaled is None else self.join_scale.index_select(0, plan.scaled)
            nodes.append(
                residual_aggregate(
                    trunk,
                    branches,
                    gates,
                    mask,
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
        inactive_paths = set(self.candidate_paths()) - set(self.active_paths()) if active_only else set()
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

    def path_statistics(self) -> dict[str, torch.Tensor]:
        """The sites' PathScores gathered into 1-D float tensors aligned with candidate_paths():
        "taylor" (EMA |g c|), "grow" (EMA |c|), "last" (latest c) and "updates" (backward count)."""
        order = [self._topology.site_slot(p) for p in self.candidate_paths()]
        # sites are concatenated in node order; offsets turn (site, slot) into a flat index
        offsets = [0]
        for site in self.scores:
            offsets.append(offsets[-1] + site.num_slots)
        index = torch.tensor([offsets[s] + k for s, k in order], dtype=torch.long, device=self.active.device)
        return {name: torch.cat([getattr(site, name) for site in self.scores]).float()[index] for name in STATISTICS}

    def reset_path_statistics(self, paths: Iterable[PathId]) -> None:
        """Forget the PathScores statistics of `paths` (just grown or dropped)."""
        by_site: dict[int, list[int]] = {}
        for p in self._topology.check_paths("paths", paths):
            site, slot = self._topology.site_slot(p)
            by_site.setdefault(site, []).append(slot)
        for site, slots in by_site.items():
            self.scores[site].reset(slots)

    def compile_parts(self, **options) -> None:
        """Compile stem, trunk projections, paths and head apart: a rewire then recompiles nothing."""
        compile_each((self.stem, *self.trunk, *self.paths.values(), self.fc), **options)

    def to_static(self, fold_gates: bool = True, join: str = "fused") -> StaticNetwork:
        """The active network alone, as a compact plain module (see plasticnet.models.static_network)."""
        return to_static(self, fold_gates=fold_gates, join=join)

    def topology(self) -> str:
        """A readable summary: nodes per stage and the active paths with their gates."""
        return describe(self)
