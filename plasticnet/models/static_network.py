"""The network a plastic run found, as a compact plain module: only the active paths' bodies,
the trunk projections, the stem and the head, with no inactive parameter, score or controller.

    n_0 = stem(x)
    n_j = act( T_j(n_{j-1}) + sum over active (i, j) of s_ij * b_ij(n_i) )
    logits = fc(avgpool(n_D))

b_ij is the path's body (followed by a ReLU with gate_position="after_relu") and s_ij = m_ij * g_ij
its join scale times its gate. With fold_gates=True, s_ij is multiplied into the body's last
affine normalisation layer (weight and bias), so no scale remains; where that would change the
function (a ReLU after the body and s < 0, or a last layer without affine parameters) it stays
an explicit constant scale.
"""

import copy

import torch
from torch import nn

from plasticnet.models.path import last_norm
from plasticnet.ops import residual_aggregate

JOINS = ("fused", "reference")


class StaticNode(nn.Module):
    """Node j: its trunk projection and the active paths into it, joined.

    join="fused" runs plasticnet's residual_aggregate op; join="reference" is plain PyTorch
    (additions and a ReLU), for exports that must run where plasticnet is not installed.
    `gates` holds s per path: an nn.Parameter without folding (the plastic model's gates, still
    trainable), else a buffer of the scales that could not be folded (1 for the folded ones).
    """

    def __init__(
        self,
        trunk: nn.Module,
        bodies: list[nn.Module],
        sources: list[int],
        scales: list[float],
        *,
        after_relu: bool,
        activation: str,
        join: str,
        trainable_gates: bool,
        backend: str | None = None,
    ):
        super().__init__()
        self.trunk, self.bodies, self.sources = trunk, nn.ModuleList(bodies), tuple(sources)
        self.after_relu, self.activation, self.join, self.backend = after_relu, activation, join, backend
        gates = torch.tensor(scales, dtype=torch.float32)
        if trainable_gates:
            self.gates = nn.Parameter(gates)
        else:
            self.register_buffer("gates", gates)
        self.register_buffer("mask", torch.ones(len(bodies)), persistent=False)
        # the reference join multiplies only where a scale is left
        self.scaled = trainable_gates or any(s != 1.0 for s in scales)

    def forward(self, nodes: list[torch.Tensor]) -> torch.Tensor:
        trunk = self.trunk(nodes[-1])
        branches = [body(nodes[i]) for body, i in zip(self.bodies, self.sources)]
        if self.after_relu:
            branches = [torch.relu(h) for h in branches]
        if self.join == "fused":
            return residual_aggregate(
                trunk, branches, self.gates, self.mask, activation=self.activation, backend=self.backend
            )
        z = trunk
        for k, h in enumerate(branches):
            z = z + (self.gates[k].to(h.dtype) * h if self.scaled else h)
        return torch.relu(z) if self.activation == "relu" else z

    def extra_repr(self) -> str:
        return f"sources={self.sources}, join={self.join!r}, activation={self.activation!r}"


class StaticNetwork(nn.Module):
    """The compact network of PlasticResNet.to_static(): stem, nodes (nodes[j-1] makes n_j), avgpool, fc.

    Attributes: active_paths (the (i, j) it computes, in the plastic model's order), folded
    (the paths whose scale went into their body), join.
    """

    def __init__(self, stem, nodes: list[StaticNode], avgpool, fc, active_paths, folded, join: str):
        super().__init__()
        self.stem, self.nodes, self.avgpool, self.fc = stem, nn.ModuleList(nodes), avgpool, fc
        self.active_paths, self.folded, self.join = list(active_paths), list(folded), join

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outputs = [self.stem(x)]
        for node in self.nodes:
            outputs.append(node(outputs))
        return self.fc(torch.flatten(self.avgpool(outputs[-1]), 1))

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def _foldable(norm: nn.Module, scale: float, after_relu: bool) -> bool:
    affine = getattr(norm, "weight", None) is not None and getattr(norm, "bias", None) is not None
    # relu(s * z) = s * relu(z) only for s >= 0
    return affine and not (after_relu and scale < 0)


@torch.no_grad()
def to_static(model, fold_gates: bool = True, join: str = "fused") -> StaticNetwork:
    """PlasticResNet `model`'s active network as a StaticNetwork (its modules copied, the plastic
    model untouched), in eval mode. Without folding the gates stay parameters, so num_parameters()
    equals model.num_parameters(active_only=True); with folding it equals gates=False's count."""
    if join not in JOINS:
        raise ValueError(f"join: expected one of {list(JOINS)}, got {join!r}")
    if not isinstance(fold_gates, bool):
        raise TypeError(f"fold_gates: expected a bool, got {type(fold_gates).__name__}")
    candidates, active = model.candidate_paths(), model.active_paths()
    after_relu = model.gate_position == "after_relu"
    nodes, folded = [], []
    for j in range(1, model.num_nodes + 1):
        into = [(i, jj) for i, jj in active if jj == j]
        bodies, scales = [], []
        for path in into:
            plastic_path = model.paths[model._key(*path)]
            scale = (model.join_scale[candidates.index(path)] * plastic_path.gate).item()
            body = copy.deepcopy(plastic_path.body)
            if fold_gates and _foldable(last_norm(body), scale, after_relu):
                norm = last_norm(body)
                norm.weight.mul_(scale)
                norm.bias.mul_(scale)
                scale = 1.0
                folded.append(path)
            bodies.append(body)
            scales.append(scale)
        node = StaticNode(
            copy.deepcopy(model.trunk[j - 1]),
            bodies,
            [i for i, _ in into],
            scales,
            after_relu=after_relu,
            activation=model.join_activation,
            join=join,
            trainable_gates=not fold_gates,
            backend=model.backend,
        )
        nodes.append(node)
    static = StaticNetwork(
        copy.deepcopy(model.stem), nodes, copy.deepcopy(model.avgpool), copy.deepcopy(model.fc), active, folded, join
    )
    reference = next((t for t in (*model.parameters(), *model.buffers()) if t.is_floating_point()), None)
    if reference is not None:  # the gates and masks follow the model's device, kept in fp32 as the op asks
        static.to(reference.device)
    return static.eval()
