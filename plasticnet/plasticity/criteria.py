"""Drop and grow criteria: per-path scores, computed on the model's device, and the
selections the controller makes from them once they are on the host.

Every score function takes the model (the PlasticResNet API: gates(), path(i, j),
path_statistics(), candidate_paths(), probing()) and the paths to score, and returns a 1-D
float32 tensor aligned with those paths. Drop scores: lower is weaker. Grow scores: higher
is stronger.
"""

from collections.abc import Callable, Sequence

import torch

from plasticnet.plasticity.protocol import PathId

Scored = list[tuple[PathId, float]]


def path_statistic(model, name: str, paths: Sequence[PathId]) -> torch.Tensor:
    """One of model.path_statistics() ("taylor", "grow", "last", "updates") for `paths`."""
    statistic = model.path_statistics()[name]
    position = {path: k for k, path in enumerate(model.candidate_paths())}
    index = torch.tensor([position[path] for path in paths], dtype=torch.long, device=statistic.device)
    return statistic.index_select(0, index).float()


def gate_magnitudes(model, paths: Sequence[PathId]) -> torch.Tensor:
    """|g|: the original PlasticNet's "lowest" criterion (and the "threshold" one)."""
    gates = model.gates()
    return torch.stack([gates[path].detach().abs().float() for path in paths])


def gradient_magnitudes(model, paths: Sequence[PathId]) -> torch.Tensor:
    """Summed |grad W| over each path's body parameters, as left by the latest backward."""
    sums = []
    for path in paths:
        params = [p for p in model.path(*path).body.parameters() if p.requires_grad]
        if not params or any(p.grad is None for p in params):
            raise RuntimeError(
                f"drop='gradient': path {path} has no gradient to read; call controller.step() after "
                "optimizer.step() and before optimizer.zero_grad()"
            )
        sums.append(torch.stack([p.grad.detach().abs().sum(dtype=torch.float32) for p in params]).sum())
    return torch.stack(sums)


def taylor_scores(model, paths: Sequence[PathId]) -> torch.Tensor:
    """EMA of |g * c|: the first-order estimate of the loss change from dropping the path.

    RuntimeError when a path's statistics hold no backward yet (step() before any backward):
    their zeros are no measurement, and dropping the "weakest" of them would be arbitrary."""
    unmeasured = path_statistic(model, "updates", paths) == 0
    if bool(unmeasured.any()):
        missing = [path for path, none in zip(paths, unmeasured.tolist()) if none]
        raise RuntimeError(
            f"drop='taylor': no backward has measured paths {missing} yet, so their scores are no measurement; "
            "call controller.step() after loss.backward() and optimizer.step()"
        )
    return path_statistic(model, "taylor", paths)


DROP_SCORES: dict[str, Callable[..., torch.Tensor]] = {
    "gate": gate_magnitudes,
    "threshold": gate_magnitudes,
    "gradient": gradient_magnitudes,
    "taylor": taylor_scores,
}
DROP_CRITERIA = tuple(DROP_SCORES)
GROW_CRITERIA = ("random", "probe")


def probe_contributions(model, paths: Sequence[PathId], closure: Callable[[], object]) -> torch.Tensor:
    """|c| of each inactive candidate in `paths` from one forward/backward (run by `closure`)
    that computes them with gate 0, so the loss is that of the current network.

    The probe's gradients are set to None afterwards: they belong to no optimizer step.
    """
    updates_before = path_statistic(model, "updates", paths)
    with torch.enable_grad(), model.probing(paths):
        closure()
    model.zero_grad(set_to_none=True)
    if not bool((path_statistic(model, "updates", paths) > updates_before).all()):
        raise RuntimeError(
            "probe: the closure must compute the loss on one batch and call backward() on it; "
            "the probed paths received no contribution"
        )
    return path_statistic(model, "last", paths).abs()


def random_keys(count: int, generator: torch.Generator) -> torch.Tensor:
    """Independent uniform keys: the `k` largest are a uniformly random k-subset (SET's regrowth)."""
    return torch.rand(count, generator=generator)


def weakest(scored: Scored, count: int) -> Scored:
    """The `count` lowest-scored paths; ties go to the earlier path, so the choice is deterministic."""
    return sorted(scored, key=lambda item: (item[1], item[0]))[:count]


def strongest(scored: Scored, count: int) -> Scored:
    """The `count` highest-scored paths; ties go to the earlier path."""
    return sorted(scored, key=lambda item: (-item[1], item[0]))[:count]


def below(scored: Scored, threshold: float) -> Scored:
    """Every path scored below `threshold`, weakest first."""
    return [item for item in weakest(scored, len(scored)) if item[1] < threshold]
