"""PlasticityController, its criteria and its schedule, on a tiny fake plastic network (the
PlasticResNet API over Linear bodies, joined through the real residual_aggregate and
PathScores) and on the real PlasticResNet at tiny width."""

import contextlib
import json
import math

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from plasticnet.models import PlasticResNet, Topology
from plasticnet.ops import PathScores, residual_aggregate
from plasticnet.plasticity.controller import PlasticityController
from plasticnet.plasticity.criteria import strongest, weakest
from plasticnet.plasticity.schedules import RewireSchedule, cosine_drop_fraction

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
                    slots=torch.tensor(self._slots(j, sources), dtype=torch.long),
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


# ---- schedule ----


def test_cosine_fraction_follows_rigl_schedule():
    fraction, end_step = 0.3, 750.0
    assert cosine_drop_fraction(0, fraction=fraction, end_step=end_step) == pytest.approx(fraction)
    assert cosine_drop_fraction(375, fraction=fraction, end_step=end_step) == pytest.approx(fraction / 2)
    assert cosine_drop_fraction(750, fraction=fraction, end_step=end_step) == 0.0
    values = [cosine_drop_fraction(t, fraction=fraction, end_step=end_step) for t in range(0, 751, 50)]
    assert all(a > b for a, b in zip(values, values[1:])), "the fraction decays monotonically to the end step"


def test_schedule_rewire_steps_and_counts():
    schedule = RewireSchedule(fraction=0.3, interval=100, total_steps=1000, end_fraction=0.75)
    assert [t for t in range(1001) if schedule.is_rewire_step(t)] == [100, 200, 300, 400, 500, 600, 700]
    budget = 16
    for t in (100, 400, 700):
        expected = max(1, math.floor(schedule.fraction_at(t) * budget + 0.5))
        assert schedule.drop_count(t, budget) == expected
    # close to the end fraction_t * budget rounds to 0, but a rewire still drops one path
    assert schedule.fraction_at(700) * budget < 0.5 and schedule.drop_count(700, budget) == 1
    assert schedule.drop_count(750, budget) == 0


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"fraction": 0.0}, "fraction"),
        ({"fraction": 1.5}, "fraction"),
        ({"interval": 0}, "interval"),
        ({"interval": 2.5}, "interval"),
        ({"total_steps": -1}, "total_steps"),
        ({"end_fraction": 0}, "end_fraction"),
    ],
)
def test_schedule_rejects_bad_arguments(kwargs, message):
    arguments = {"fraction": 0.3, "interval": 100, "total_steps": 1000, "end_fraction": 0.75, **kwargs}
    with pytest.raises(ValueError, match=message):
        RewireSchedule(**arguments)


# ---- arguments ----


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"drop": "smallest"}, ValueError, "drop: expected one of"),
        ({"grow": "gradient"}, ValueError, "grow: expected one of"),
        ({"seed": 1.5}, TypeError, "seed"),
        ({"threshold": 0.3}, ValueError, "only drop='threshold'"),
        ({"drop": "threshold", "threshold": -1.0}, ValueError, "positive number"),
        ({"drop_count": 0}, ValueError, "drop_count"),
        ({"drop_count": "all"}, ValueError, "drop_count"),
        ({"drop": "threshold", "drop_count": 1}, ValueError, "takes no drop_count"),
    ],
)
def test_controller_rejects_bad_arguments(kwargs, error, message):
    with pytest.raises(error, match=message):
        controller_for(TinyPlasticNet(), **kwargs)


def test_controller_rejects_non_plastic_model_and_non_optimizer():
    plain = nn.Linear(2, 2)
    with pytest.raises(TypeError, match="model: expected a plastic network"):
        PlasticityController(plain, torch.optim.SGD(plain.parameters(), lr=0.1), total_steps=10)
    with pytest.raises(TypeError, match="optimizer: expected a torch.optim.Optimizer"):
        PlasticityController(TinyPlasticNet(), object(), total_steps=10)


def test_controller_rejects_an_optimizer_without_the_inactive_paths(net):
    model, _ = net
    # a common idiom, wrong here: a grown path's parameters would never train
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    with pytest.raises(ValueError, match="optimizer: expected to hold the parameters of every candidate path"):
        controller_for(model, optimizer)


# ---- drop criteria ----


def set_gate(model, path, value):
    with torch.no_grad():
        model.path(*path).gate.fill_(value)


def set_gradient_sum(model, path, value):
    params = list(model.path(*path).body.parameters())
    for param in params:
        param.grad = torch.zeros_like(param)
    params[0].grad.view(-1)[0] = -value  # the sign must not matter: the criterion sums |grad|


def set_taylor(model, path, value):
    site, slot = model._topology.site_slot(path)
    model.scores[site].taylor[slot] = value


@pytest.mark.parametrize(
    "drop, construct", [("gate", set_gate), ("gradient", set_gradient_sum), ("taylor", set_taylor)]
)
@pytest.mark.parametrize("drop_count", ["fraction", 1])
def test_drop_criterion_drops_the_weakest_paths(drop, construct, drop_count):
    model = TinyPlasticNet()
    active = model.active_paths()
    values = (torch.rand(len(active)) + 0.1).tolist()
    for path, value in zip(active, values):
        construct(model, path, value)
    controller = controller_for(model, drop=drop, drop_count=drop_count)
    event = controller.step()
    count = controller.schedule.drop_count(1, model.budget) if drop_count == "fraction" else drop_count
    expected = sorted(zip(active, values), key=lambda item: item[1])[:count]
    assert paths_of(event.dropped) == paths_of(expected)
    assert [score for _, score in event.dropped] == pytest.approx([value for _, value in expected])
    assert len(event.grown) == count and len(model.active_paths()) == model.budget


def test_ties_go_to_the_earlier_path():
    model = TinyPlasticNet()  # every gate 1: a tie among all active paths
    event = controller_for(model, drop="gate", drop_count=2).step()
    assert paths_of(event.dropped) == [(0, 1), (1, 2)]
    scored = [((2, 3), 1.0), ((0, 1), 1.0), ((1, 2), 0.5), ((0, 2), 0.5)]
    assert paths_of(weakest(scored, 3)) == [(0, 2), (1, 2), (0, 1)]
    assert paths_of(strongest(scored, 3)) == [(0, 1), (2, 3), (0, 2)]


def test_gradient_drop_without_gradients_names_the_call_order():
    model = TinyPlasticNet()
    with pytest.raises(RuntimeError, match="before optimizer.zero_grad"):
        controller_for(model, drop="gradient").step()


@pytest.mark.parametrize("threshold", [None, 0.8])
def test_threshold_drops_every_gate_below_it_and_regrows_to_budget(threshold):
    model = TinyPlasticNet()
    active = model.active_paths()
    gates = [0.1, 0.9, -0.3, 0.6, 0.75, 1.2]
    for path, gate in zip(active, gates):
        set_gate(model, path, gate)
    limit = 0.5 if threshold is None else threshold
    event = controller_for(model, drop="threshold", threshold=threshold).step()
    assert sorted(paths_of(event.dropped)) == [p for p, g in zip(active, gates) if abs(g) < limit]
    assert len(event.grown) == len(event.dropped)
    assert len(model.active_paths()) == model.budget
    assert set(paths_of(event.grown)).isdisjoint(active)


def test_threshold_with_no_gate_below_it_changes_nothing():
    model = TinyPlasticNet()
    before = model.active_paths()
    event = controller_for(model, drop="threshold").step()
    assert event.dropped == [] and event.grown == [] and model.active_paths() == before


# ---- grow criteria ----


def expected_contributions(model, batch, probed):
    """c of each probed path, computed independently: activate it with gate 0 in a twin model
    and read d loss / d gate (= c, the op's contract)."""
    twin = clone(model)
    for path in probed:
        set_gate(twin, path, 0.0)
    twin.set_active(model.active_paths() + probed, keep_budget=False)
    loss_on(twin, batch).backward()
    return {path: twin.path(*path).gate.grad.item() for path in probed}


def test_probe_grows_the_largest_contributions(net):
    model, make_batch = net
    model = model.double()
    batch = tuple(t.double() if t.is_floating_point() else t for t in make_batch(torch.Generator().manual_seed(1)))
    inactive = sorted(set(model.candidate_paths()) - set(model.active_paths()))
    contributions = expected_contributions(model, batch, inactive)
    controller = controller_for(model, grow="probe", drop_count=2)
    event = controller.step(probe=lambda: loss_on(model, batch).backward())
    expected = sorted(inactive, key=lambda p: -abs(contributions[p]))[:2]
    assert paths_of(event.grown) == expected
    assert [score for _, score in event.grown] == pytest.approx([abs(contributions[p]) for p in expected])
    assert all(param.grad is None for param in model.parameters()), "the probe's gradients are cleared"


def test_probe_is_required_on_rewire_steps_only():
    controller = controller_for(TinyPlasticNet(), grow="probe", interval=2)
    assert controller.step() is None
    with pytest.raises(ValueError, match="probe: grow='probe' needs step"):
        controller.step()


def test_probe_closure_without_backward_is_an_error():
    model = TinyPlasticNet()
    batch = tiny_batch(torch.Generator().manual_seed(0))
    with pytest.raises(RuntimeError, match="call backward"):
        controller_for(model, grow="probe").step(probe=lambda: loss_on(model, batch))


# ---- what a rewire does to the model and the optimizer ----


def test_grown_paths_start_at_gate_zero_and_leave_the_function_unchanged(net):
    model, make_batch = net
    model.eval()  # batch norm on running statistics, so both forwards see the same function
    inputs, _ = make_batch(torch.Generator().manual_seed(2))
    before = clone(model)
    event = controller_for(model, drop_count=2).step()
    dropped, grown = paths_of(event.dropped), paths_of(event.grown)
    assert all(model.path(*p).gate.item() == 0.0 for p in grown)
    before.set_active(sorted(set(before.active_paths()) - set(dropped)), keep_budget=False)  # the drop alone
    before.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(inputs), before(inputs))


@pytest.mark.parametrize(
    "make_optimizer",
    [
        lambda params: torch.optim.SGD(params, lr=0.01, momentum=0.9),
        lambda params: torch.optim.Adam(params, lr=1e-3),
    ],
    ids=["sgd-momentum", "adam"],
)
def test_optimizer_state_of_grown_and_dropped_paths_is_reset(net, make_optimizer):
    model, make_batch = net
    optimizer = make_optimizer(model.parameters())
    controller = controller_for(model, optimizer, interval=3, drop_count=2)
    batches = batches_from(make_batch, 3, seed=3)
    train(model, optimizer, controller, batches[:2])
    # give every inactive path a stale state, as if it had been trained in an earlier life
    inactive = set(model.candidate_paths()) - set(model.active_paths())
    for path in inactive:
        for param in model.path(*path).parameters():
            optimizer.state[param] = {"stale": torch.ones(())}
    kept_state = {param: optimizer.state[param] for param in model.parameters() if param in optimizer.state}
    (event,) = train(model, optimizer, controller, batches[2:])[-1:]
    changed = set(paths_of(event.dropped)) | set(paths_of(event.grown))
    assert len(changed) == 4
    changed_params = {param for path in changed for param in model.path(*path).parameters()}
    assert all(param not in optimizer.state for param in changed_params)
    survivors = [param for param in kept_state if param not in changed_params]
    assert survivors and all(optimizer.state[param] is kept_state[param] for param in survivors)
    train(model, optimizer, controller, batches_from(make_batch, 1, seed=4))  # the optimizer runs on


def test_budget_is_kept_over_many_rewires(net):
    model, make_batch = net
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    controller = controller_for(model, optimizer, drop="taylor", grow="probe", total_steps=16, end_fraction=1.0)
    candidates = set(model.candidate_paths())
    previous = model.active_paths()
    for batch in batches_from(make_batch, 16, seed=5):
        (event,) = train(model, optimizer, controller, [batch])
        active = model.active_paths()
        assert len(active) == len(set(active)) == model.budget and set(active) <= candidates
        if event is not None:
            assert set(paths_of(event.dropped)) <= set(previous)
            assert set(paths_of(event.grown)).isdisjoint(previous)
            assert len(event.dropped) == len(event.grown) >= 1
        previous = active
    assert len(controller.history) == 15, "a rewire on every step before total_steps"


def test_just_grown_paths_are_not_dropped_at_the_next_rewire():
    model = TinyPlasticNet()
    controller = controller_for(model, drop="gate", drop_count=2)
    first = paths_of(controller.step().grown)
    # grown gates are 0, the smallest there is: only the protection keeps them
    second = controller.step()
    assert set(paths_of(second.dropped)).isdisjoint(first)
    third = controller.step()
    assert set(paths_of(third.dropped)) & set(first), "the protection lasts one rewire"


def test_rewire_without_inactive_candidates_changes_nothing():
    model = PlasticResNet("resnet18", base_width=8, max_span=1)  # every candidate is active
    before = {name: value.clone() for name, value in model.state_dict().items()}
    probes = []
    event = controller_for(model, grow="probe").step(probe=lambda: probes.append(1))
    assert event.dropped == [] and event.grown == [] and probes == [], "nothing to grow: no probe, no drop"
    assert all(torch.equal(value, before[name]) for name, value in model.state_dict().items())


def test_model_converted_after_the_controller_was_built(net):
    model, make_batch = net
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    controller = controller_for(model, optimizer, drop="taylor", grow="probe", interval=2, drop_count=2)
    batches = batches_from(make_batch, 3, seed=8)  # step 2 rewires, step 3 trains the grown paths
    train(model, optimizer, controller, batches[:1])
    model.double()  # the same Parameter objects, so the optimizer and the controller still hold them
    double = [tuple(t.double() if t.is_floating_point() else t for t in batch) for batch in batches[1:]]
    (event,) = [e for e in train(model, optimizer, controller, double) if e]
    grown = paths_of(event.grown)
    assert len(grown) == 2 and all(model.path(*p).gate.dtype == torch.float64 for p in grown)
    assert all(model.path(*p).gate.item() != 0.0 for p in grown), "the grown paths train after the rewire"


def test_no_rewire_after_end_fraction_of_training():
    model = TinyPlasticNet()
    controller = controller_for(model, interval=2, total_steps=20, end_fraction=0.5)
    events = [controller.step() for _ in range(20)]
    assert [t for t, event in enumerate(events, start=1) if event is not None] == [2, 4, 6, 8]


# ---- determinism and resumption ----


def random_rewires(seed, global_seed):
    """The rewires of 8 steps and the resulting weights; checks the global RNG is left alone."""
    torch.manual_seed(0)  # the same initial model
    model = TinyPlasticNet()
    controller = controller_for(model, seed=seed, drop_count=2)
    torch.manual_seed(global_seed)  # neither decisions nor fresh weights may follow the global generator
    global_state = torch.get_rng_state()
    events = [controller.step() for _ in range(8)]
    assert torch.equal(torch.get_rng_state(), global_state)
    return events, model.state_dict()


def test_rewiring_is_deterministic_given_the_seed():
    events, weights = random_rewires(seed=7, global_seed=1)
    same_events, same_weights = random_rewires(seed=7, global_seed=2)
    assert same_events == events
    assert all(torch.equal(weights[name], same_weights[name]) for name in weights)
    other_events, _ = random_rewires(seed=8, global_seed=1)
    assert other_events != events


def test_never_drops_more_than_can_be_regrown():
    model = TinyPlasticNet(depth=4, max_span=2)  # 7 candidates, budget 4: 3 can be grown
    active = model.active_paths()
    gates = [0.4, 0.1, 0.3, 0.2]
    for path, gate in zip(active, gates):
        set_gate(model, path, gate)
    event = controller_for(model, drop="threshold").step()
    assert paths_of(event.dropped) == [active[1], active[3], active[2]]  # the weakest three, weakest first
    assert len(event.grown) == 3 and len(model.active_paths()) == model.budget


@pytest.mark.parametrize("grow", ["random", "probe"])
def test_state_dict_round_trip_reproduces_the_following_rewires(net, grow, tmp_path):
    model, make_batch = net
    batches = batches_from(make_batch, 8, seed=6)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    controller = controller_for(model, optimizer, drop="taylor", grow=grow, interval=2, drop_count=2, seed=3)
    train(model, optimizer, controller, batches[:4])
    # a checkpoint on disk, as a resumed run sees it (in memory the optimizers would share tensors)
    torch.save({"optimizer": optimizer.state_dict(), "controller": controller.state_dict()}, tmp_path / "ckpt.pt")
    checkpoint = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    resumed_model = clone(model)
    resumed_optimizer = torch.optim.Adam(resumed_model.parameters(), lr=1e-3)
    resumed_optimizer.load_state_dict(checkpoint["optimizer"])
    resumed = controller_for(
        resumed_model, resumed_optimizer, drop="taylor", grow=grow, interval=2, drop_count=2, seed=99
    )  # the loaded state overrides the seed
    resumed.load_state_dict(checkpoint["controller"])
    assert resumed.history == controller.history
    original_events = train(model, optimizer, controller, batches[4:])
    resumed_events = train(resumed_model, resumed_optimizer, resumed, batches[4:])
    assert [e for e in original_events if e] and resumed_events == original_events
    assert resumed_model.active_paths() == model.active_paths()


def test_load_state_dict_rejects_foreign_state():
    with pytest.raises(ValueError, match="missing keys"):
        controller_for(TinyPlasticNet()).load_state_dict({"step_count": 3})


# ---- no host synchronisation on non-rewire steps ----


class Tripwire:
    """Fails on any use: stands in for the model and optimizer on steps that must not touch them."""

    def __getattr__(self, name):
        raise AssertionError(f"a non-rewire step touched .{name}")


def test_non_rewire_steps_touch_neither_model_nor_optimizer():
    controller = controller_for(TinyPlasticNet(), interval=5)
    controller.model, controller.optimizer = Tripwire(), Tripwire()
    assert [controller.step() for _ in range(4)] == [None] * 4
    with pytest.raises(AssertionError, match="touched"):
        controller.step()  # the fifth step rewires: the wire is live


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_non_rewire_steps_do_not_synchronise_cuda():
    model = TinyPlasticNet().cuda()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    controller = controller_for(model, optimizer, interval=10)
    inputs, targets = tiny_batch(torch.Generator().manual_seed(0))
    for _ in range(9):
        loss_on(model, (inputs.cuda(), targets.cuda())).backward()
        optimizer.step()
        torch.cuda.set_sync_debug_mode("error")
        try:
            assert controller.step() is None
        finally:
            torch.cuda.set_sync_debug_mode("default")
        optimizer.zero_grad()


# ---- torch.distributed ----


def set_rank_taylor(model, rank):
    """Per-rank Taylor scores whose average ranks differently from either rank alone."""
    active = model.active_paths()
    values = {active[0]: (0.1, 5.0), active[1]: (5.0, 0.1), active[2]: (1.0, 1.0)}
    for path in active:
        set_taylor(model, path, values.get(path, (10.0, 10.0))[rank])


def distributed_worker(rank, world_size, init_file, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        torch.manual_seed(0)
        model = TinyPlasticNet()
        set_rank_taylor(model, rank)
        expected_drop = model.active_paths()[2]
        controller = controller_for(model, drop="taylor", drop_count=1)
        torch.manual_seed(rank)  # ranks whose global generators differ must still grow identical weights
        event = controller.step()
        result = {
            "dropped": paths_of(event.dropped),
            "grown": paths_of(event.grown),
            "scores": [score for _, score in event.dropped],
            "expected_drop": expected_drop,
            "grown_weights": [model.path(*p).body[0].weight.sum().item() for p in paths_of(event.grown)],
        }
        if rank == 1:  # a rank whose model silently activates something else than it was told
            faithful = model.set_active

            def unfaithful(paths):
                paths = sorted(paths)
                faithful(paths[1:] + [next(p for p in model.candidate_paths() if p not in paths)])

            model.set_active = unfaithful
        try:
            controller.step()
        except RuntimeError as error:
            result["mismatch"] = str(error)
        (out_dir / f"rank{rank}.json").write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


def test_distributed_scores_are_averaged_and_topologies_verified(tmp_path):
    mp.spawn(distributed_worker, args=(2, tmp_path / "init", tmp_path), nprocs=2, join=True)
    results = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in range(2)]
    for result in results:
        assert result["dropped"] == [result["expected_drop"]], "the average, not either rank, decides"
        assert result["scores"] == pytest.approx([1.0])
        assert "ranks [1] hold different active paths than rank 0 after the rewire" in result["mismatch"]
    assert results[0]["grown"] == results[1]["grown"]
    assert results[0]["grown_weights"] == results[1]["grown_weights"]
