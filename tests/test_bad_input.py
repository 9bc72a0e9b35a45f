"""Bad input to residual_aggregate raises ValueError or TypeError naming the argument, what it got and
what was expected: through the public function and through the compiled ops called directly
(no segfault, no silent broadcast). A "meta" tensor stands in for another device on CPU-only machines."""

import pytest
import torch

from plasticnet.ops import residual_aggregate


def _valid() -> dict:
    x = torch.randn(2, 3, 4)
    return {
        "x": x,
        "branches": [torch.randn_like(x), torch.randn_like(x)],
        "gates": torch.randn(2),
        "mask": torch.tensor([1.0, 0.0]),
        "activation": "relu",
    }


def _replace_branch(args, branch):
    return {"branches": [args["branches"][0], branch]}


# (id, changes to _valid()'s arguments, expected error, the argument the message must name).
# Every change keeps all operands tensors, so the compiled ops can be called with it directly.
TENSOR_CASES = [
    ("branch-shape", lambda a: _replace_branch(a, torch.randn(2, 2, 4)), ValueError, "branches[1]"),
    ("branch-broadcastable-shape", lambda a: _replace_branch(a, torch.randn(1, 3, 4)), ValueError, "branches[1]"),
    ("branch-dtype", lambda a: _replace_branch(a, a["branches"][1].double()), TypeError, "branches[1]"),
    ("branch-device", lambda a: _replace_branch(a, a["branches"][1].to("meta")), ValueError, "branches[1]"),
    ("branch-integer", lambda a: _replace_branch(a, a["branches"][1].long()), TypeError, "branches[1]"),
    ("x-integer", lambda a: {"x": a["x"].long(), "branches": [h.long() for h in a["branches"]]}, TypeError, "x"),
    (
        "x-float8",
        lambda a: {"x": a["x"].to(torch.float8_e4m3fn), "branches": [h.to(torch.float8_e4m3fn) for h in a["branches"]]},
        TypeError,
        "x",
    ),
    ("activation-unknown", lambda a: {"activation": "gelu"}, ValueError, "activation"),
] + [
    case
    for name in ("gates", "mask")
    for case in (
        (f"{name}-too-long", lambda a, name=name: {name: torch.ones(3)}, ValueError, name),
        (f"{name}-2d", lambda a, name=name: {name: torch.ones(2, 1)}, ValueError, name),
        (f"{name}-0d", lambda a, name=name: {name: torch.tensor(1.0)}, ValueError, name),
        (f"{name}-integer", lambda a, name=name: {name: torch.ones(2, dtype=torch.long)}, TypeError, name),
        (f"{name}-device", lambda a, name=name: {name: torch.ones(2, device="meta")}, ValueError, name),
    )
]

# Non-tensor operands and backends only exist for the public function: the dispatcher rejects a
# non-tensor before any kernel runs, and the ops have no backend argument.
PUBLIC_ONLY_CASES = [
    ("x-not-tensor", lambda a: {"x": a["x"].tolist()}, TypeError, "x"),
    ("branches-a-tensor", lambda a: {"branches": a["branches"][0]}, TypeError, "branches"),
    ("branch-not-tensor", lambda a: _replace_branch(a, 1.0), TypeError, "branches[1]"),
    ("gates-a-list", lambda a: {"gates": [1.0, 1.0]}, TypeError, "gates"),
    ("mask-a-float", lambda a: {"mask": 1.0}, TypeError, "mask"),
    ("backend-unknown", lambda a: {"backend": "fast"}, ValueError, "backend"),
    ("backend-unavailable", lambda a: {"backend": "cuda"}, ValueError, "backend 'cuda'"),
]


def _params(cases):
    return [pytest.param(change, error, argument, id=name) for name, change, error, argument in cases]


def _bad(change) -> dict:
    args = _valid()
    return {**args, **change(args)}


def _assert_names(excinfo, argument: str) -> None:
    """The message names the argument, what it got, and what was expected (or what is available)."""
    message = str(excinfo.value)
    assert argument in message and "got" in message and ("expected" in message or "available" in message), message


@pytest.mark.parametrize("change, error, argument", _params(TENSOR_CASES + PUBLIC_ONLY_CASES))
def test_public_function(change, error, argument):
    args = _bad(change)
    with pytest.raises(error) as excinfo:
        residual_aggregate(args.pop("x"), args.pop("branches"), args.pop("gates"), args.pop("mask"), **args)
    _assert_names(excinfo, argument)


@pytest.mark.parametrize("change, error, argument", _params(TENSOR_CASES))
def test_forward_op(change, error, argument):
    a = _bad(change)
    with pytest.raises(error) as excinfo:
        torch.ops.plasticnet.residual_aggregate(a["x"], a["branches"], a["gates"], a["mask"], a["activation"])
    _assert_names(excinfo, argument)


# The backward op holds out (the forward's result) to the same contract as x, and grad_out to out's.
BACKWARD_CASES = [
    (name, change, error, "out" if argument == "x" else argument) for name, change, error, argument in TENSOR_CASES
] + [
    ("grad_out-shape", lambda a: {"grad_out": torch.randn(3, 4)}, ValueError, "grad_out"),
    ("grad_out-dtype", lambda a: {"grad_out": a["x"].double()}, TypeError, "grad_out"),
    # Without branches (no contribution wanted) the gates give K, so they must be one-dimensional.
    ("no-branches-gates-2d", lambda a: {"branches": [], "gates": torch.ones(2, 1)}, ValueError, "gates"),
    ("no-branches-mask-too-long", lambda a: {"branches": [], "mask": torch.ones(3)}, ValueError, "mask"),
]


@pytest.mark.parametrize("change, error, argument", _params(BACKWARD_CASES))
def test_backward_op(change, error, argument):
    args = _valid()
    a = {**args, "grad_out": torch.randn_like(args["x"]), **change(args)}
    with pytest.raises(error) as excinfo:
        torch.ops.plasticnet.residual_aggregate_backward(
            a["grad_out"], a["x"], a["branches"], a["gates"], a["mask"], a["activation"]
        )
    _assert_names(excinfo, argument)
