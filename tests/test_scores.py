"""PathScores: the running contribution statistics fed by every backward, on every backend."""

import pytest
import torch

from plasticnet.ops import PathScores, available_backends, residual_aggregate, residual_aggregate_backward_reference

BACKENDS = available_backends("cpu")


def _inputs(k, shape=(3, 5, 7)):
    x = torch.randn(shape, dtype=torch.float64)
    branches = [torch.randn(shape, dtype=torch.float64, requires_grad=True) for _ in range(k)]
    gates = torch.randn(k, dtype=torch.float64, requires_grad=True)
    mask = torch.ones(k, dtype=torch.float64)
    return x, branches, gates, mask


def _expected_contributions(x, branches, gates, mask, grad_out, activation="relu"):
    from plasticnet.ops import residual_aggregate_reference

    with torch.no_grad():
        out = residual_aggregate_reference(x, branches, gates, mask, activation)
        return residual_aggregate_backward_reference(grad_out, out, branches, gates, mask, activation)[2]


@pytest.mark.parametrize("backend", BACKENDS)
def test_scores_follow_reference_ema_over_backwards(backend):
    decay, k = 0.8, 3
    scores = PathScores(k, decay=decay)
    expected_taylor = expected_grow = None
    for step in range(3):
        x, branches, gates, mask = _inputs(k)
        grad_out = torch.randn_like(x)
        y = residual_aggregate(x, branches, gates, mask, backend=backend, scores=scores)
        y.backward(grad_out)
        c = _expected_contributions(x, branches, gates, mask, grad_out).float()
        taylor, grow = (gates.detach().float() * c).abs(), c.abs()
        if step == 0:
            expected_taylor, expected_grow = taylor, grow
        else:
            expected_taylor = decay * expected_taylor + (1 - decay) * taylor
            expected_grow = decay * expected_grow + (1 - decay) * grow
        torch.testing.assert_close(scores.taylor, expected_taylor, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(scores.grow, expected_grow, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(scores.last, c, rtol=1e-5, atol=1e-6)
    assert scores.updates.tolist() == [3] * k
    assert scores._tap.grad is None, "the hook must consume the tap's gradient"


def test_scores_are_identical_across_backends():
    x, branches, gates, mask = _inputs(4, shape=(2, 3, 11, 13))
    grad_out = torch.randn_like(x)
    results = {}
    for backend in BACKENDS:
        scores = PathScores(4)
        residual_aggregate(x, branches, gates, mask, backend=backend, scores=scores).backward(grad_out)
        results[backend] = scores.state_dict()
    for backend, state in results.items():
        for name, value in state.items():
            torch.testing.assert_close(value, results["reference"][name], msg=f"{backend}: {name}")


def test_only_computed_slots_are_updated_and_slots_map_branches():
    scores = PathScores(5)
    scores.set_computed([1, 3])
    x, branches, gates, mask = _inputs(2)
    grad_out = torch.randn_like(x)
    residual_aggregate(x, branches, gates, mask, scores=scores, slots=[3, 1]).backward(grad_out)
    c = _expected_contributions(x, branches, gates, mask, grad_out).float()
    assert scores.updates.tolist() == [0, 1, 0, 1, 0]
    torch.testing.assert_close(scores.last[[3, 1]], c)
    assert scores.last[[0, 2, 4]].eq(0).all()


def test_probed_slot_with_zero_gate_records_grow_signal_but_no_taylor():
    scores = PathScores(2)
    x, branches, _, mask = _inputs(2)
    gates = torch.tensor([1.5, 0.0], dtype=torch.float64)  # slot 1: a candidate probed with gate 0
    grad_out = torch.randn_like(x)
    y = residual_aggregate(x, branches, gates, mask, scores=scores)
    y.backward(grad_out)
    c = _expected_contributions(x, branches, gates, mask, grad_out).float()
    assert scores.taylor[1] == 0 and scores.grow[1] == c[1].abs() and c[1] != 0
    assert branches[1].grad.eq(0).all(), "a probed branch must receive no gradient"


def test_reset_forgets_and_state_dict_round_trips():
    scores = PathScores(3)
    x, branches, gates, mask = _inputs(3)
    residual_aggregate(x, branches, gates, mask, scores=scores).sum().backward()
    scores.reset([0, 2])
    assert scores.updates.tolist() == [0, 1, 0] and scores.taylor[[0, 2]].eq(0).all()
    restored = PathScores(3)
    restored.load_state_dict(scores.state_dict())
    for name, value in scores.state_dict().items():
        assert torch.equal(restored.state_dict()[name], value)


def test_tap_follows_module_moves_and_stays_a_leaf():
    scores = PathScores(2).double()
    assert scores._tap.is_leaf and scores._tap.requires_grad
    x, branches, gates, mask = _inputs(2)
    residual_aggregate(x, branches, gates, mask, scores=scores).sum().backward()
    assert scores.updates.tolist() == [1, 1]


def test_scores_update_under_torch_compile():
    scores = PathScores(2)
    x, branches, gates, mask = _inputs(2)
    grad_out = torch.randn_like(x)

    @torch.compile(fullgraph=True)
    def join(x, h0, h1, gates, mask):
        return residual_aggregate(x, [h0, h1], gates, mask, scores=scores)

    join(x, *branches, gates, mask).backward(grad_out)
    c = _expected_contributions(x, branches, gates, mask, grad_out).float()
    torch.testing.assert_close(scores.last, c)


@pytest.mark.parametrize("kwargs, error", [({"num_slots": -1}, "num_slots"), ({"num_slots": 2, "decay": 1.0}, "decay")])
def test_bad_arguments(kwargs, error):
    with pytest.raises(ValueError, match=error):
        PathScores(**kwargs)


@pytest.mark.parametrize(
    "slots, error, match",
    [
        ([0, 1, 2], ValueError, r"slots: expected one slot per gate \(2\), got 3"),
        ([-1, 2], ValueError, r"slots: expected distinct slots in \[0, 4\), got \[-1, 2\]"),
        ([1, 1], ValueError, r"slots: expected distinct slots in \[0, 4\), got \[1, 1\]"),
        ([0, 4], ValueError, r"slots: expected distinct slots in \[0, 4\), got \[0, 4\]"),
        ([0, 1.0], TypeError, r"slots: expected ints, got \[0, 1.0\]"),
        ([True, 0], TypeError, "slots: expected ints"),
        (torch.tensor([0, 1]), TypeError, "slots: expected a list or tuple of ints, got Tensor"),
    ],
)
def test_bad_slots_are_a_clear_error(slots, error, match):
    scores = PathScores(4)
    x, branches, gates, mask = _inputs(2)
    with pytest.raises(error, match=match):
        residual_aggregate(x, branches, gates, mask, scores=scores, slots=slots)


@pytest.mark.parametrize("backend", BACKENDS)
def test_slots_without_scores_are_refused(backend):
    x, branches, gates, mask = _inputs(2)
    with pytest.raises(ValueError, match="slots: given without scores"):
        residual_aggregate(x, branches, gates, mask, backend=backend, slots=[0, 1])


def test_slots_are_checked_and_copied_once_per_sequence():
    scores = PathScores(4)
    x, branches, gates, mask = _inputs(2)
    residual_aggregate(x, branches, gates, mask, scores=scores, slots=[2, 0]).sum().backward()
    index = scores._indices[(2, 0)]
    for slots in ((2, 0), [1, 3]):
        residual_aggregate(x, branches, gates, mask, scores=scores, slots=slots).sum().backward()
    assert list(scores._indices) == [(2, 0), (1, 3)] and scores._indices[(2, 0)] is index


def test_deepcopy_keeps_scores_updating():
    import copy

    scores = copy.deepcopy(PathScores(2))
    x, branches, gates, mask = _inputs(2)
    residual_aggregate(x, branches, gates, mask, scores=scores).sum().backward()
    assert scores.updates.tolist() == [1, 1]
