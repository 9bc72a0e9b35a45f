"""The controller tests' plastic networks and helpers: a tiny fake plastic network (the
PlasticResNet API over Linear bodies, joined through the real residual_aggregate and
PathScores, its bookkeeping kept by a Topology), the real PlasticResNet at tiny width, and the
training loop and score setters the tests share. Test modules take the `net` fixture with
`net = controller_fakes.net` (an imported fixture would read as unused to the linter)."""

import contextlib

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from plasticnet.models import PlasticResNet, Topology
from plasticnet.ops import PathScores, residual_aggregate
from plasticnet.plasticity.controller import PlasticityController

FEATURES, CLASSES = 4, 3


class TinyPath(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(width, width), nn.Tanh())
        self.gate = nn.Parameter(torch.tensor(1.0))


class TinyPlasticNet(nn.Module):
    """The PlasticResNet API on vectors, its bookkeeping kept by a Topology: nodes 0..depth (one
    stage, or nodes_per_stage), candidates (i, j) with j - i <= max_span, node j = n_{j-1} + sum
    of the gated active paths into j (probed ones with gate 0). It starts as the chain (j-1 -> j),
    or with budget_per_stage from a random topology of those counts."""

    def __init__(
        self, depth: int = 6, width: int = 5, max_span: int = 3, *, nodes_per_stage=None, budget_per_stage=None
    ):
        super().__init__()
        self._topology = Topology(nodes_per_stage or (depth,), max_span=max_span, budget_per_stage=budget_per_stage)
        self.stem = nn.Linear(FEATURES, width)
        self.head = nn.Linear(width, CLASSES)
        self.paths = nn.ModuleDict({f"{i}_{j}": TinyPath(width) for i, j in self.candidate_paths()})
        nodes = range(1, self._topology.num_nodes + 1)
        self.scores = nn.ModuleList(PathScores(len(self._topology.sources_into(j))) for j in nodes)
        init = "resnet" if budget_per_stage is None else "random"
        self.set_active(self._topology.initial_topology(init, seed=0))

    budget = property(lambda self: self._topology.budget)
    budget_per_stage = property(lambda self: self._topology.budget_per_stage)

    def stage_of(self, path):
        return self._topology.stage_of(path)

    def candidate_paths(self):
        return self._topology.candidate_paths()

    def active_paths(self):
        return self._topology.active_paths()

    def path(self, i, j):
        return self.paths[f"{i}_{j}"]

    def gates(self):
        return {p: self.path(*p).gate.detach() for p in self.active_paths()}

    def _slots(self, j, sources):
        return [self._topology.site_slot((i, j))[1] for i in sources]

    def _sync(self):
        active = set(self.active_paths())
        for p in self.candidate_paths():
            self.path(*p).requires_grad_(p in active)
        for j, site in enumerate(self.scores, start=1):
            site.set_computed(self._slots(j, self._topology.computed_sources(j)[0]))

    def set_active(self, paths, *, keep_budget=True):
        self._topology.set_active(paths, keep_budget=keep_budget)  # the controller must keep the budget
        self._sync()

    @contextlib.contextmanager
    def probing(self, paths):
        try:
            with self._topology.probing(paths):
                self._sync()
                yield self
        finally:
            self._sync()

    @torch.no_grad()
    def reinitialize_path(self, i, j):
        self.path(i, j).body[0].reset_parameters()
        self.path(i, j).gate.zero_()

    def path_statistics(self):
        where = [self._topology.site_slot(p) for p in self.candidate_paths()]
        return {
            name: torch.stack([getattr(self.scores[site], name)[slot] for site, slot in where])
            for name in ("taylor", "grow", "last", "updates")
        }

    def reset_path_statistics(self, paths):
        for p in paths:
            site, slot = self._topology.site_slot(p)
            self.scores[site].reset([slot])

    def forward(self, x):
        nodes = [self.stem(x)]
        for j, site in enumerate(self.scores, start=1):
            sources, num_active = self._topology.computed_sources(j)
            gates = [self.path(i, j).gate for i in sources[:num_active]] + [x.new_zeros(())] * (
                len(sources) - num_active
            )
            gates = torch.stack(gates) if gates else x.new_zeros(0)
            nodes.append(
                residual_aggregate(
                    nodes[-1],
                    [self.path(i, j).body(nodes[i]) for i in sources],
                    gates,
                    torch.ones_like(gates),
                    activation="none",
                    scores=site,
                    slots=self._slots(j, sources),
                )
            )
        return self.head(nodes[-1])


def tiny_batch(generator):
    return torch.randn(8, FEATURES, generator=generator), torch.randint(CLASSES, (8,), generator=generator)


def resnet_batch(generator):
    return torch.randn(2, 3, 8, 8, generator=generator), torch.randint(10, (2,), generator=generator)


NETS = {
    "tiny": (TinyPlasticNet, tiny_batch),
    "resnet": (lambda: PlasticResNet("resnet18", base_width=8, max_span=2), resnet_batch),
}


@pytest.fixture(params=sorted(NETS))
def net(request):
    """(model, a function generator -> batch) for the fake and the real plastic network."""
    make_model, make_batch = NETS[request.param]
    return make_model(), make_batch


def loss_on(model, batch):
    inputs, targets = batch
    return F.cross_entropy(model(inputs), targets)


def clone(model):
    """A model of the same kind with the same weights, statistics and topology."""
    twin = (
        TinyPlasticNet() if isinstance(model, TinyPlasticNet) else PlasticResNet("resnet18", base_width=8, max_span=2)
    )
    twin.to(next(model.parameters()).dtype).load_state_dict(model.state_dict())
    twin.set_active(model.active_paths())
    return twin


def controller_for(model, optimizer=None, **kwargs):
    optimizer = optimizer or torch.optim.SGD(model.parameters(), lr=0.01)
    kwargs = {"drop": "gate", "grow": "random", "interval": 1, "total_steps": 1000, **kwargs}
    return PlasticityController(model, optimizer, **kwargs)


def train(model, optimizer, controller, batches):
    """The loop of a user: backward, optimizer step, controller step (probe on one batch), zero_grad."""
    events = []
    for batch in batches:
        loss_on(model, batch).backward()
        optimizer.step()
        events.append(controller.step(probe=lambda batch=batch: loss_on(model, batch).backward()))
        optimizer.zero_grad()
    return events


def batches_from(make_batch, count, seed):
    generator = torch.Generator().manual_seed(seed)
    return [make_batch(generator) for _ in range(count)]


def paths_of(scored):
    return [path for path, _ in scored]


def set_gate(model, path, value):
    with torch.no_grad():
        model.path(*path).gate.fill_(value)


def set_taylor(model, path, value):
    site, slot = model._topology.site_slot(path)
    model.scores[site].taylor[slot] = value
    model.scores[site].updates[slot] += 1  # a measurement, as a backward's: drop="taylor" reads only measured paths
