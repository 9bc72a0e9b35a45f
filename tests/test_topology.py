"""Topology: the candidate set, slot maps, budgets (in all and per stage), active and probed
paths, and the checks on each, without building a network; then the same through PlasticResNet."""

import itertools

import numpy as np
import pytest
import torch
from torch import nn

from plasticnet.models import PlasticResNet, Topology
from plasticnet.plasticity import PlasticModel

RESNET18 = dict(nodes_per_stage=(2, 2, 2, 2), stage_strides=(1, 2, 2, 2))
TINY = dict(base_width=8)


def resnet18(**kwargs) -> Topology:
    return Topology(**{**RESNET18, "max_span": 3, **kwargs})


@pytest.mark.parametrize("max_span, max_changes", [(1, 0), (2, 1), (3, 1), (3, 2), (5, 3)])
def test_candidates_are_every_pair_within_span_and_resolution_changes(max_span, max_changes):
    topology = resnet18(max_span=max_span, max_resolution_changes=max_changes)
    strided = {3, 5, 7}  # the trunk positions T_j with stride 2 enter nodes 3, 5 and 7
    expected = [
        (i, j)
        for j in range(1, 9)
        for i in range(j)
        if j - i <= max_span and len(strided & set(range(i + 1, j + 1))) <= max_changes
    ]
    assert topology.candidate_paths() == expected  # by target node, then source node
    assert topology.num_nodes == 8 and topology.num_stages == 4
    assert topology.node_stage == (-1, 0, 0, 1, 1, 2, 2, 3, 3)
    assert topology.trunk_strides == (1, 1, 2, 1, 2, 1, 2, 1)


def test_chain_transitions_and_strides():
    topology = resnet18()
    assert topology.chain() == [(j - 1, j) for j in range(1, 9)]
    assert topology.stage_transitions() == [(0, 1), (2, 3), (4, 5), (6, 7)]
    assert [topology.stride(p) for p in [(0, 1), (1, 3), (2, 5), (4, 7)]] == [1, 2, 4, 4]


def test_stages_of_paths_are_those_of_their_target_nodes():
    topology = resnet18()
    assert [topology.stage_of(p) for p in [(0, 1), (0, 2), (1, 3), (2, 3), (4, 6), (5, 8)]] == [0, 0, 1, 1, 2, 3]
    assert topology.stage_counts(topology.chain()) == (2, 2, 2, 2)
    assert topology.stage_counts([(1, 3), (2, 3), (5, 8)]) == (0, 2, 0, 1)
    assert sum(topology.stage_counts(topology.candidate_paths())) == len(topology.candidate_paths())
    with pytest.raises(ValueError, match="not a candidate"):
        topology.stage_of((0, 5))


def test_slots_follow_the_sources_of_each_node():
    topology = resnet18()
    seen = {}
    for i, j in topology.candidate_paths():
        site, slot = topology.site_slot((i, j))
        assert site == j - 1 and topology.sources_into(j)[slot] == i
        seen.setdefault(site, []).append(slot)
    # every site's slots are 0..n-1, one per candidate source, in ascending source order
    assert all(slots == list(range(len(slots))) for slots in seen.values())
    assert all(topology.sources_into(j) == sorted(topology.sources_into(j)) for j in range(1, 9))
    with pytest.raises(ValueError, match=r"a node in 1..8"):
        topology.sources_into(0)


@pytest.mark.parametrize(
    "paths, error, match",
    [
        ([(0, 1), (0, 1)], ValueError, "listed twice"),
        ([(0, 5)], ValueError, "not a candidate"),
        ([(2, 1)], ValueError, "not a candidate"),
        ([(0, "x")], TypeError, "pairs of ints"),
        ([(0,)], TypeError, "pairs of ints"),
        ([(0, 1, 2)], TypeError, "pairs of ints"),
        ([(1.7, 2)], TypeError, r"pairs of ints, got \(1.7, 2\)"),  # int() would make it (1, 2)
        ([(0.0, 1)], TypeError, "pairs of ints"),
        ([(False, True)], TypeError, "pairs of ints"),
        (["01"], TypeError, "pairs of ints"),
        ("0_1", TypeError, "iterable of"),
        (7, TypeError, "iterable of"),
    ],
)
def test_check_paths_rejects_bad_paths(paths, error, match):
    with pytest.raises(error, match=match):
        resnet18().check_paths("paths", paths)


def test_check_paths_keeps_the_order_and_normalises_to_int_pairs():
    checked = resnet18().check_paths("paths", [[2, 3], (np.int64(0), torch.tensor(1))])
    assert checked == [(2, 3), (0, 1)] and all(type(v) is int for path in checked for v in path)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(nodes_per_stage=()), "nodes_per_stage: expected a non-empty sequence"),
        (dict(nodes_per_stage=(2, 0)), "nodes_per_stage"),
        (dict(stage_strides=(1, 2)), "stage_strides: expected 4 values"),
        (dict(max_span=0), "max_span: expected an int >= 1"),
        (dict(max_resolution_changes=-1), "max_resolution_changes: expected an int >= 0"),
        (dict(budget=20), r"budget: expected an int in \[0, 19\]"),
        (dict(budget=-1), r"budget: expected an int in \[0, 19\]"),
        (dict(budget_per_stage=(2, 2, 2)), "budget_per_stage: expected 4 values"),
        (dict(budget_per_stage=(2, 2, -1, 2)), "budget_per_stage: expected a non-empty sequence of ints >= 0"),
        (dict(budget_per_stage=(4, 2, 2, 2)), "stage 0 has 3 candidate paths, so it cannot keep 4"),
        (dict(budget=9, budget_per_stage=(2, 2, 2, 2)), r"sums to 8, but budget is 9"),
    ],
)
def test_constructor_rejects_bad_layouts_and_budgets(kwargs, match):
    with pytest.raises(ValueError, match=match):
        resnet18(**kwargs)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(budget=True), r"budget: expected an int in \[0, 19\] \(the candidate count\), got bool True"),
        (dict(budget=8.0), "budget: expected an int in .* got float 8.0"),
        (dict(max_span=True), "max_span: expected an int >= 1, got bool True"),
        (dict(max_resolution_changes=1.0), "max_resolution_changes: expected an int >= 0, got float"),
        (dict(budget_per_stage=(True, 2, 2, 2)), "budget_per_stage: expected a non-empty sequence of ints"),
        (dict(nodes_per_stage=(2, 2.0)), "nodes_per_stage: expected a non-empty sequence of ints"),
    ],
)
def test_constructor_rejects_counts_that_are_not_ints(kwargs, match):
    # A bool is an int to Python: True would silently be a budget of 1.
    with pytest.raises(TypeError, match=match):
        resnet18(**kwargs)


def test_budgets_default_to_the_node_count_and_sum_per_stage():
    assert resnet18().budget == 8 and resnet18().budget_per_stage is None
    assert resnet18(budget=5).budget == 5
    per_stage = resnet18(budget_per_stage=[1, 3, 0, 2])
    assert per_stage.budget == 6 and per_stage.budget_per_stage == (1, 3, 0, 2)
    assert resnet18(budget=6, budget_per_stage=(1, 3, 0, 2)).budget_per_stage == (1, 3, 0, 2)


def test_set_active_keeps_the_budget_or_takes_the_new_counts():
    topology = resnet18()
    assert topology.active_paths() == []
    topology.set_active(reversed(topology.chain()))
    assert topology.active_paths() == topology.chain()  # in candidate order, whatever the given order
    with pytest.raises(ValueError, match=r"expected 8 paths \(the budget\), got 2"):
        topology.set_active([(0, 1), (1, 2)])
    with pytest.raises(ValueError, match="listed twice"):
        topology.set_active([(0, 1)] * 8)
    assert topology.active_paths() == topology.chain()  # a refused call changes nothing
    topology.set_active([(0, 2), (1, 2)], keep_budget=False)
    assert topology.budget == 2 and topology.budget_per_stage is None


def test_set_active_keeps_each_stage_count_with_a_budget_per_stage():
    topology = resnet18(budget_per_stage=(2, 2, 2, 2))
    topology.set_active(topology.chain())
    moved = [p for p in topology.chain() if p != (2, 3)] + [(0, 2)]  # stage 1 -> stage 0: the total is kept
    with pytest.raises(ValueError, match=r"expected \(2, 2, 2, 2\) paths per stage .* got \(3, 1, 2, 2\)"):
        topology.set_active(moved)
    swapped = [p for p in topology.chain() if p != (2, 3)] + [(1, 3)]  # within stage 1
    topology.set_active(swapped)
    assert set(topology.active_paths()) == set(swapped)
    topology.set_active(moved, keep_budget=False)
    assert topology.budget == 8 and topology.budget_per_stage == (3, 1, 2, 2)
    topology.set_active([(0, 1)], keep_budget=False)
    assert topology.budget_per_stage == (1, 0, 0, 0)


def test_resnet_initial_topology_is_the_chain_and_needs_matching_budgets():
    assert resnet18().initial_topology("resnet") == resnet18().chain()
    assert resnet18(budget_per_stage=(2, 2, 2, 2)).initial_topology("resnet") == resnet18().chain()
    with pytest.raises(ValueError, match="budget: init='resnet' activates the 8 paths"):
        resnet18(budget=7).initial_topology("resnet")
    with pytest.raises(ValueError, match=r"budget_per_stage: init='resnet' .* nodes_per_stage=\(2, 2, 2, 2\)"):
        resnet18(budget_per_stage=(3, 1, 2, 2)).initial_topology("resnet")
    with pytest.raises(ValueError, match="only init='random' takes initial paths"):
        resnet18().initial_topology("resnet", [(0, 1)])
    with pytest.raises(ValueError, match="init: expected one of"):
        resnet18().initial_topology("rigl")


def test_random_initial_topology_is_seeded_and_keeps_the_initial_paths():
    topology = resnet18(budget=6)
    draws = {tuple(topology.initial_topology("random", seed=seed)) for seed in range(6)}
    assert len(draws) > 1 and topology.initial_topology("random", seed=2) == topology.initial_topology("random", seed=2)
    for draw in draws:
        assert len(set(draw)) == 6 and set(draw) <= set(topology.candidate_paths())
    kept = topology.initial_topology("random", [(7, 8), (0, 2)], seed=0)
    assert kept[:2] == [(7, 8), (0, 2)] and len(set(kept)) == 6
    transitions = topology.initial_topology("random", "stage_transitions", seed=0)
    assert set(topology.stage_transitions()) <= set(transitions)
    with pytest.raises(ValueError, match="at most budget=6 paths, got 7"):
        topology.initial_topology("random", topology.chain()[:7])


@pytest.mark.parametrize("seed", range(4))
def test_random_initial_topology_draws_each_stage_to_its_budget(seed):
    topology = resnet18(budget_per_stage=(1, 3, 0, 2))
    initial = [(2, 3), (6, 8)]  # one into stage 1, one into stage 3: they count toward their stages
    drawn = topology.initial_topology("random", initial, seed=seed)
    assert set(initial) <= set(drawn) and topology.stage_counts(drawn) == (1, 3, 0, 2)
    topology.set_active(drawn)  # exactly the budgets
    with pytest.raises(ValueError, match=r"at most budget_per_stage\[2\]=0 paths into stage 2, got 1"):
        topology.initial_topology("random", [(4, 5)], seed=seed)


def test_probing_lists_probed_sources_after_the_active_ones():
    topology = resnet18()
    topology.set_active(topology.chain())
    assert topology.computed_sources(2) == ([1], 1)
    with topology.probing([(0, 2), (1, 3), (0, 3)]):
        assert topology.computed_sources(2) == ([1, 0], 1)
        assert topology.computed_sources(3) == ([2, 1, 0], 1)  # probed ones in the given order
        with pytest.raises(RuntimeError, match="do not nest"):
            with topology.probing([(0, 2)]):
                pass
        assert topology.computed_sources(3) == ([2, 1, 0], 1)  # the refused inner probe ended nothing
    assert topology.computed_sources(3) == ([2], 1)
    with pytest.raises(ValueError, match=r"inactive candidates to probe, got active ones \[\(0, 1\)\]"):
        with topology.probing([(0, 1)]):
            pass
    with pytest.raises(KeyError):
        with topology.probing([(0, 2)]):
            raise KeyError("the probe's closure failed")
    assert topology.computed_sources(2) == ([1], 1)  # a failing probe still ends


def test_one_stage_without_strides_admits_every_span():
    topology = Topology((6,), max_span=3)
    assert topology.candidate_paths() == sorted(
        ((i, j) for i, j in itertools.combinations(range(7), 2) if j - i <= 3), key=lambda p: (p[1], p[0])
    )
    assert topology.budget == 6 and topology.trunk_strides == (1,) * 6


# ---- through PlasticResNet ----


def test_random_init_is_deterministic_by_seed_and_keeps_budget():
    def topology(seed, budget):
        return PlasticResNet(init="random", seed=seed, budget=budget, **TINY).active_paths()

    assert topology(3, 6) == topology(3, 6)
    draws = {tuple(topology(seed, 6)) for seed in range(4)}
    assert len(draws) > 1
    assert all(len(d) == 6 for d in draws)
    model = PlasticResNet(init="random", seed=0, budget=5, initial_paths=[(0, 2), (7, 8)], **TINY)
    assert len(model.active_paths()) == model.budget == 5
    assert {(0, 2), (7, 8)} <= set(model.active_paths()) <= set(model.candidate_paths())


def test_candidate_set_respects_span_and_resolution_changes():
    model = PlasticResNet(max_span=3, **TINY)
    for i, j in model.candidate_paths():
        assert 1 <= j - i <= 3
        assert sum(s != 1 for s in model.trunk_strides[i:j]) <= 1
    # resnet18 nodes: strided trunk positions enter nodes 3, 5 and 7
    assert (2, 5) not in model.candidate_paths() and (3, 5) in model.candidate_paths()
    assert (2, 5) in PlasticResNet(max_span=3, max_resolution_changes=2, **TINY).candidate_paths()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(budget=True), "budget: expected an int in .* got bool True"),
        (dict(init="random", budget=4.0), "budget: expected an int in .* got float 4.0"),
        (dict(num_classes=True), "num_classes: expected an int >= 1, got bool True"),
        (dict(base_width=8.0), "base_width: expected an int >= 1, got float 8.0"),
        (dict(stage_widths=(8, 16, 32, True)), "stage_widths: expected a non-empty sequence of ints"),
    ],
)
def test_plastic_resnet_rejects_counts_that_are_not_ints(kwargs, match):
    with pytest.raises(TypeError, match=match):
        PlasticResNet(**{**TINY, **kwargs})


@pytest.mark.parametrize(
    "paths, error, match",
    [
        ([(0, 1), (0, 1)], ValueError, "listed twice"),
        ([(0, 5)], ValueError, "not a candidate"),
        ([(1, 1)], ValueError, "not a candidate"),
        ([(0, "x")], TypeError, "pairs of ints"),
        ([(0, 1, 2)], TypeError, "pairs of ints"),
        ("0_1", TypeError, "iterable of"),
        ([(0, 1), (1, 2)], ValueError, r"expected 8 paths \(the budget\), got 2"),
        ([(j - 1.0, j) for j in range(1, 9)], TypeError, r"pairs of ints, got \(0.0, 1\)"),
        ([(j - 0.5, j) for j in range(1, 9)], TypeError, r"pairs of ints, got \(0.5, 1\)"),  # not truncated to 0
    ],
)
def test_set_active_rejects_bad_paths(paths, error, match):
    model = PlasticResNet(**TINY)
    before = model.active_paths()
    with pytest.raises(error, match=match):
        model.set_active(paths)
    assert model.active_paths() == before


def test_set_active_changes_the_budget_only_when_told():
    model = PlasticResNet(max_span=2, **TINY)
    model.set_active([(0, 2), (2, 3)], keep_budget=False)
    assert model.budget == 2 and model.active_paths() == [(0, 2), (2, 3)]
    with pytest.raises(ValueError, match="expected 2 paths"):
        model.set_active([(0, 1)])


def test_budget_per_stage_is_kept_and_follows_a_loaded_state():
    model = PlasticResNet(init="random", seed=0, budget_per_stage=(1, 2, 2, 1), **TINY)
    assert model.budget == 6 and model.budget_per_stage == (1, 2, 2, 1)
    assert [sum(model.stage_of(p) == s for p in model.active_paths()) for s in range(4)] == [1, 2, 2, 1]
    assert "(budget 6, per stage (1, 2, 2, 1))" in model.topology()
    stage_1 = [p for p in model.candidate_paths() if model.stage_of(p) == 1]
    inactive_1 = next(p for p in stage_1 if p not in model.active_paths())
    inactive_0 = next(p for p in model.candidate_paths() if model.stage_of(p) == 0 and p not in model.active_paths())
    swap = [p for p in model.active_paths() if p != next(q for q in model.active_paths() if q in stage_1)]
    model.set_active(swap + [inactive_1])  # a path of stage 1 for another: every count is kept
    with pytest.raises(ValueError, match="per stage"):
        model.set_active(swap + [inactive_0])
    source = PlasticResNet(init="random", seed=1, budget_per_stage=(2, 1, 1, 2), **TINY)
    model.load_state_dict(source.state_dict())
    assert model.active_paths() == source.active_paths()
    assert model.budget == 6 and model.budget_per_stage == (2, 1, 1, 2)  # a controller keeps the loaded counts
    single = PlasticResNet(**TINY)
    single.load_state_dict(source.state_dict())
    assert single.budget == 6 and single.budget_per_stage is None
    resnet = PlasticResNet(budget_per_stage=(2, 2, 2, 2), **TINY)
    assert resnet.active_paths() == [(j - 1, j) for j in range(1, 9)]


def test_plastic_resnet_is_a_plastic_model():
    assert isinstance(PlasticResNet(**TINY), PlasticModel)
    assert not isinstance(nn.Linear(2, 2), PlasticModel)


def test_topology_summary_lists_stages_and_active_gates():
    model = PlasticResNet("resnet34", **TINY)
    text = model.topology()
    assert "17 nodes" in text and "16 of" in text and "budget 16" in text
    assert "stage 2: nodes 8..13 (6)" in text
    assert text.count("+1.0000") == 16
