"""Plain-PyTorch residual aggregation: the numerical oracle every backend is tested against,
and the `reference` backend (autograd by PyTorch itself)."""

import torch


def accumulate_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp32 accumulation for every input dtype but float64."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def relu_backward(grad: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """The gradient through torch.relu given its output: the function torch's own relu derivative
    calls, so grad passes wherever out is not <= 0, NaN included. Differentiable."""
    return torch.ops.aten.threshold_backward(grad, out, 0)


def residual_aggregate_reference(x, branches, gates, mask, activation: str = "relu"):
    """y = act(x + sum_k mask[k]*gates[k]*branches[k]), accumulated in fp32 (fp64 for fp64).

    The sum is rounded to x's dtype before the activation, as eager PyTorch applies relu to a
    tensor of that dtype: the value is the same (rounding keeps signs), and relu' comes from
    torch.relu's autograd at the rounded value, so a tiny positive sum that rounds to 0 passes
    no gradient."""
    acc = accumulate_dtype(x.dtype)
    scales = mask.to(acc) * gates.to(acc)
    z = x.to(acc)
    for k, h in enumerate(branches):
        z = z + scales[k] * h.to(acc)
    z = z.to(x.dtype)
    return torch.relu(z) if activation == "relu" else z


def residual_aggregate_backward_reference(grad_out, out, branches, gates, mask, activation: str = "relu"):
    """(grad_x, grad_branches, contributions) exactly as the backward kernels define them: K (gates'
    length) branch gradients; contributions from `branches`, none when it is empty (none wanted)."""
    acc = accumulate_dtype(out.dtype)
    dz = (relu_backward(grad_out, out) if activation == "relu" else grad_out).to(acc)
    scales = mask.to(acc) * gates.to(acc)
    grad_branches = [(scales[k] * dz).to(out.dtype) for k in range(gates.shape[0])]
    contributions = torch.stack([(dz * h.to(acc)).sum() for h in branches]) if branches else dz.new_zeros(0)
    return dz.to(out.dtype), grad_branches, contributions
