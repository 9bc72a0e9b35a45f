"""The readable summary of a PlasticResNet's topology (PlasticResNet.topology())."""


def describe(model) -> str:
    """A PlasticResNet's topology, readable: nodes per stage and the active paths with their gates."""
    per_stage = "" if model.budget_per_stage is None else f", per stage {model.budget_per_stage}"
    lines = [
        f"PlasticResNet({model.arch}, {model.body_kind} bodies): {model.num_nodes + 1} nodes, "
        f"{len(model.active_paths())} of {len(model.candidate_paths())} candidate paths active "
        f"(budget {model.budget}{per_stage})"
    ]
    first = 1  # the stage's first node
    for s, count in enumerate(model._topology.nodes_per_stage):
        lines.append(
            f"  stage {s}: nodes {first}..{first + count - 1} ({count}), {model.node_channels[first]} "
            f"channels, entered with stride {model.trunk_strides[first - 1]}"
        )
        first += count
    gates = model.gates()
    lines.append("  active paths (i -> j: gate):")
    lines += [f"    {i:3d} -> {j:3d}: {g.item():+.4f}" for (i, j), g in gates.items()]
    return "\n".join(lines)
