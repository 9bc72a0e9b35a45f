"""torchvision's ResNet layouts and the stems the networks of plasticnet.models offer."""

# arch -> (body kind, blocks per stage), torchvision's layouts
ARCHITECTURES = {
    "resnet18": ("basic", (2, 2, 2, 2)),
    "resnet34": ("basic", (3, 4, 6, 3)),
    "resnet50": ("bottleneck", (3, 4, 6, 3)),
    "resnet101": ("bottleneck", (3, 4, 23, 3)),
    "resnet152": ("bottleneck", (3, 8, 36, 3)),
}
# "cifar": 3x3 stride-1 conv, no max-pool; "imagenet": 7x7 stride-2 conv and a 3x3 max-pool
STEMS = ("cifar", "imagenet")


def blocks_for_budget(budget: int, num_stages: int = 4) -> tuple[int, ...]:
    """Blocks per stage of a static ResNet with `budget` blocks: budget // num_stages in every
    stage, and the remainder one block each to the stages from the outside in (first, last,
    second, second-to-last, ...), so 6 blocks give (2, 1, 1, 2) and 7 give (2, 2, 1, 2).
    Every stage needs at least one block, so budget >= num_stages.
    """
    for name, value in (("budget", budget), ("num_stages", num_stages)):
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"{name}: expected an int, got {type(value).__name__}")
    if num_stages < 1:
        raise ValueError(f"num_stages: expected an int >= 1, got {num_stages}")
    if budget < num_stages:
        raise ValueError(
            f"budget: expected at least num_stages={num_stages} blocks (every stage needs one), got {budget}"
        )
    base, extra = divmod(budget, num_stages)
    # stage s sits min(s, last - s) stages from the outside; of two at one depth the first half goes first
    last = num_stages - 1
    outside_in = sorted(range(num_stages), key=lambda s: (min(s, last - s), s > last - s))
    blocks = [base] * num_stages
    for stage in outside_in[:extra]:
        blocks[stage] += 1
    return tuple(blocks)
