"""PlasticityController: drops the weakest residual paths of a plastic network and grows
as many new ones, on RigL's schedule, keeping the budget of active paths.

The model is any PlasticModel (plasticnet.plasticity.protocol), such as a PlasticResNet; under
DistributedDataParallel pass the wrapped module, not the wrapper.
"""

import math
from collections import Counter
from dataclasses import asdict, dataclass

import torch
import torch.distributed as dist

from plasticnet.plasticity.criteria import (
    DROP_CRITERIA,
    DROP_SCORES,
    GROW_CRITERIA,
    Scored,
    below,
    probe_contributions,
    random_keys,
    strongest,
    weakest,
)
from plasticnet.plasticity.protocol import PathId, PlasticModel
from plasticnet.plasticity.schedules import RewireSchedule

_DEFAULT_THRESHOLD = 0.5
REGROW_MODES = ("fresh", "reactivate")
GROWN_GATES = ("zero", "ramp")


@dataclass(frozen=True)
class RewireEvent:
    """One rewire: the optimizer step it happened at, and the (path, score) pairs that decided it.

    Drop scores are those of the drop criterion (lower = weaker); grow scores are |c| from the
    probe, or the uniform keys of random growth.
    """

    step: int
    dropped: Scored
    grown: Scored

    @classmethod
    def from_dict(cls, state: dict) -> "RewireEvent":
        def scored(items):
            return [((int(path[0]), int(path[1])), float(score)) for path, score in items]

        return cls(int(state["step"]), scored(state["dropped"]), scored(state["grown"]))


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def _average_across_ranks(scores: torch.Tensor) -> torch.Tensor:
    if _distributed():
        dist.all_reduce(scores, op=dist.ReduceOp.SUM)  # gloo has no ReduceOp.AVG
        scores /= dist.get_world_size()
    return scores


def _verify_same_topology(active: list[PathId], when: str) -> None:
    """Raise RuntimeError naming the ranks whose active paths differ from rank 0's."""
    if not _distributed():
        return
    everyone: list = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, tuple(active))
    reference = set(everyone[0])
    differing = {rank: topology for rank, topology in enumerate(everyone) if set(topology) != reference}
    if differing:
        details = "; ".join(
            f"rank {rank} lacks {sorted(reference - set(topology))} and has {sorted(set(topology) - reference)}"
            for rank, topology in differing.items()
        )
        raise RuntimeError(f"ranks {sorted(differing)} hold different active paths than rank 0 {when}: {details}")


def _positive_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


class PlasticityController:
    """Rewires a plastic network during training.

    Call `step()` after every `optimizer.step()` and before `optimizer.zero_grad()` (the
    "gradient" criterion reads the gradients of that step). Every `interval` steps while
    step < end_fraction * total_steps it drops paths and grows as many inactive candidates:

    drop: "gate" (smallest |g|), "threshold" (every |g| below `threshold`, default 0.5; may
      drop none or many), "gradient" (smallest summed |grad W| of the path body), "taylor"
      (smallest EMA |g * c| from the model's path statistics).
    grow: "random" (uniform among inactive candidates, seeded) or "probe": `step(probe=closure)`
      runs closure() (loss on one batch + backward) with every inactive candidate computed at
      gate 0, and grows the largest |c|. The probe's gradients are set to None afterwards.
    drop_count: "fraction" drops round(fraction_t * budget) paths, at least one, with
      fraction_t = fraction * (1 + cos(pi * step / (end_fraction * total_steps))) / 2 (RigL);
      an int drops that many per rewire (the original PlasticNet dropped 1).

    protect_rewires: a grown path cannot be dropped at the next `protect_rewires` rewires (0:
      it may be dropped at the next one).
    regrow: "fresh" gives a grown path fresh weights; "reactivate" keeps the weights it had
      when it was dropped (or its initial ones).
    grown_gate: "zero" starts a grown path at gate 0 (the network's function is unchanged by
      growth); "ramp" gives it gate 1 and fades its join scale in from 0 to 1 over `interval`
      steps (the model's `start_ramp`).

    With a model whose `budget_per_stage` is set, every path dropped from a stage is replaced
    by one grown in the same stage, so each stage keeps its count; a drop that its stage has no
    inactive candidate to replace is not made. Never more paths are dropped than there are
    inactive candidates to replace them, and a path dropped at a rewire is not regrown by the
    same rewire. The optimizer state of grown and dropped paths is deleted and their
    statistics reset. Decisions and fresh weights come from a private generator
    seeded by `seed`; the global RNG is left as it was. Under torch.distributed, scores are
    averaged across ranks before deciding, and every rank's active paths are compared before
    and after each rewire (RuntimeError on a mismatch). A step that does not rewire touches no
    tensor, so it never synchronises the host. The optimizer must hold every candidate path's
    parameters, inactive ones included (ValueError otherwise): a grown path must train.
    """

    def __init__(
        self,
        model: PlasticModel,
        optimizer: torch.optim.Optimizer,
        *,
        drop: str = "taylor",
        grow: str = "probe",
        fraction: float = 0.3,
        interval: int = 100,
        total_steps: int,
        end_fraction: float = 0.75,
        seed: int = 0,
        threshold: float | None = None,
        drop_count: str | int = "fraction",
        protect_rewires: int = 1,
        regrow: str = "fresh",
        grown_gate: str = "zero",
    ):
        if not isinstance(model, PlasticModel):
            missing = [n for n in dir(PlasticModel) if not n.startswith("_") and not hasattr(model, n)]
            raise TypeError(
                f"model: expected a plastic network (PlasticResNet API), got {type(model).__name__} lacking {missing}"
            )
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"optimizer: expected a torch.optim.Optimizer, got {type(optimizer).__name__}")
        if drop not in DROP_CRITERIA:
            raise ValueError(f"drop: expected one of {list(DROP_CRITERIA)}, got {drop!r}")
        if grow not in GROW_CRITERIA:
            raise ValueError(f"grow: expected one of {list(GROW_CRITERIA)}, got {grow!r}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed: expected an int, got {type(seed).__name__}")
        if threshold is not None and drop != "threshold":
            raise ValueError(
                f"threshold: only drop='threshold' uses it, got threshold={threshold!r} with drop={drop!r}"
            )
        if threshold is not None and not _positive_number(threshold):
            raise ValueError(f"threshold: expected a positive number, got {threshold!r}")
        if drop_count != "fraction":
            if isinstance(drop_count, bool) or not isinstance(drop_count, int) or drop_count < 1:
                raise ValueError(f"drop_count: expected 'fraction' or a positive int, got {drop_count!r}")
            if drop == "threshold":
                raise ValueError(
                    f"drop_count: drop='threshold' drops every path below the threshold, "
                    f"so it takes no drop_count (got {drop_count!r})"
                )
        if isinstance(protect_rewires, bool) or not isinstance(protect_rewires, int) or protect_rewires < 0:
            raise ValueError(f"protect_rewires: expected an int >= 0, got {protect_rewires!r}")
        if regrow not in REGROW_MODES:
            raise ValueError(f"regrow: expected one of {list(REGROW_MODES)}, got {regrow!r}")
        if grown_gate not in GROWN_GATES:
            raise ValueError(f"grown_gate: expected one of {list(GROWN_GATES)}, got {grown_gate!r}")
        if grown_gate == "ramp" and not (hasattr(model, "start_ramp") and hasattr(model, "advance_ramp")):
            raise TypeError(f"grown_gate='ramp': the model ({type(model).__name__}) has no start_ramp/advance_ramp")
        held = {param for group in optimizer.param_groups for param in group["params"]}
        unheld = [
            path
            for path in model.candidate_paths()
            if any(param not in held for param in model.path(*path).parameters())
        ]
        if unheld:
            raise ValueError(
                f"optimizer: expected to hold the parameters of every candidate path, but not those "
                f"of {len(unheld)} paths, e.g. {unheld[:3]}: build it from model.parameters(), not "
                "only those that require grad (an inactive path is frozen until it grows, then it "
                "must train)"
            )
        self.model = model
        self.optimizer = optimizer
        self.drop = drop
        self.grow = grow
        self.schedule = RewireSchedule(fraction, interval, total_steps, end_fraction)
        self.threshold = _DEFAULT_THRESHOLD if threshold is None else float(threshold)
        self.drop_count = drop_count
        self.protect_rewires, self.regrow, self.grown_gate = protect_rewires, regrow, grown_gate
        self.step_count = 0
        self.history: list[RewireEvent] = []
        self._generator = torch.Generator().manual_seed(seed)
        self._protected: dict[PathId, int] = {}  # grown path -> rewires it is still safe from being dropped

    def step(self, probe=None) -> RewireEvent | None:
        """Count one optimizer step; on a rewire step, rewire and return what changed.

        probe: with grow="probe", a closure that computes the loss on one batch and calls
        backward; required on rewire steps, ignored on the others.

        A rewire step raises RuntimeError when its drop criterion has nothing to read: with
        drop="taylor", paths no backward has scored yet (e.g. step() before any backward), whose
        all-zero scores would drop paths on no evidence; with drop="gradient", no gradients.
        """
        self.step_count += 1
        if self.grown_gate == "ramp":
            self.model.advance_ramp()
        if not self.schedule.is_rewire_step(self.step_count):
            return None
        if self.grow == "probe" and probe is None:
            raise ValueError(
                f"probe: grow='probe' needs step(probe=closure) on rewire steps (step {self.step_count} "
                "is one), where closure() computes the loss on one batch and calls backward()"
            )
        event = self._rewire(probe)
        self.history.append(event)
        return event

    def _rewire(self, probe) -> RewireEvent:
        active = self.model.active_paths()
        _verify_same_topology(active, f"before the rewire at step {self.step_count}")
        growable = sorted(set(self.model.candidate_paths()) - set(active))
        droppable = [path for path in active if path not in self._protected]
        dropped = self._replaceable(self._choose_drops(droppable), growable)
        grown = self._choose_grows(growable, dropped, probe) if dropped else []
        self._rewire_to(active, [path for path, _ in dropped], [path for path, _ in grown])
        _verify_same_topology(self.model.active_paths(), f"after the rewire at step {self.step_count}")
        return RewireEvent(self.step_count, dropped, grown)

    def _choose_drops(self, droppable: list[PathId]) -> Scored:
        if not droppable:
            return []
        scored = self._scored(droppable, DROP_SCORES[self.drop](self.model, droppable))
        if self.drop == "threshold":
            return below(scored, self.threshold)
        count = (
            self.schedule.drop_count(self.step_count, self.model.budget)
            if self.drop_count == "fraction"
            else self.drop_count
        )
        return weakest(scored, count)

    def _stage_of(self, path: PathId) -> int | None:
        """The stage whose count the path belongs to; None when the model keeps one budget."""
        return self.model.stage_of(path) if self.model.budget_per_stage is not None else None

    def _replaceable(self, drops: Scored, growable: list[PathId]) -> Scored:
        """The drops, weakest first, that an inactive candidate of the same stage (any candidate
        under one budget) can replace."""
        room = Counter(self._stage_of(path) for path in growable)
        kept = []
        for path, score in drops:
            stage = self._stage_of(path)
            if room[stage] > 0:
                room[stage] -= 1
                kept.append((path, score))
        return kept

    def _choose_grows(self, growable: list[PathId], dropped: Scored, probe) -> Scored:
        """As many grows as drops, the strongest of each dropped path's stage."""
        if self.grow == "probe":
            scores = probe_contributions(self.model, growable, probe)
        else:
            # On the model's device so that all_reduce works on every backend (NCCL takes CUDA tensors only).
            device = self.model.path(*growable[0]).gate.device
            scores = random_keys(len(growable), self._generator).to(device)
        scored = self._scored(growable, scores)
        wanted = Counter(self._stage_of(path) for path, _ in dropped)
        return sorted(
            (
                item
                for stage, count in wanted.items()
                for item in strongest([(path, score) for path, score in scored if self._stage_of(path) == stage], count)
            ),
            key=lambda item: (-item[1], item[0]),
        )

    def _scored(self, paths: list[PathId], scores: torch.Tensor) -> Scored:
        values = _average_across_ranks(scores).tolist()  # the one host synchronisation of a decision
        non_finite = [path for path, value in zip(paths, values) if not math.isfinite(value)]
        if non_finite:
            raise FloatingPointError(
                f"non-finite scores for paths {non_finite} at step {self.step_count}: "
                "the training has diverged, or the model's statistics are corrupt"
            )
        return list(zip(paths, values))

    def _rewire_to(self, active: list[PathId], dropped: list[PathId], grown: list[PathId]) -> None:
        self._protected = {path: left - 1 for path, left in self._protected.items() if left > 1}
        self._protected.update({path: self.protect_rewires for path in grown if self.protect_rewires > 0})
        if not dropped:
            return
        for path in grown:
            self._prepare_growth(path)
        self.model.set_active(sorted(set(active).difference(dropped).union(grown)))
        if self.grown_gate == "ramp":
            self.model.start_ramp(grown, self.schedule.interval)
        for path in dropped + grown:
            # Momentum or Adam moments of a path's previous life would steer its fresh weights.
            for param in self.model.path(*path).parameters():
                self.optimizer.state.pop(param, None)
        self.model.reset_path_statistics(dropped + grown)

    def _prepare_growth(self, path: PathId) -> None:
        """Weights and gate of a path about to grow. Fresh weights are drawn from a seed of the
        controller's generator, in a forked global RNG: every rank draws the same weights (DDP
        broadcasts parameters only at construction), a resumed run draws them again, and the
        training's own random stream is left untouched."""
        seed = int(torch.randint(2**62, (1,), generator=self._generator))  # drawn in both modes: one stream
        if self.regrow == "fresh":
            cuda_devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
            with torch.random.fork_rng(devices=cuda_devices):
                torch.manual_seed(seed)
                self.model.reinitialize_path(*path)  # fresh body, gate 0
        with torch.no_grad():
            self.model.path(*path).gate.fill_(1.0 if self.grown_gate == "ramp" else 0.0)

    def state_dict(self) -> dict:
        """Plain Python values and one tensor: loads with torch.load(weights_only=True)."""
        return {
            "step_count": self.step_count,
            "generator": self._generator.get_state(),
            "protected": sorted([i, j, left] for (i, j), left in self._protected.items()),
            "history": [asdict(event) for event in self.history],
        }

    def load_state_dict(self, state: dict) -> None:
        """Take up a state_dict(). ValueError, changing nothing, when it is none, or protects paths
        that are no candidates of this model (a state of another network)."""
        missing = {"step_count", "generator", "protected", "history"} - set(state)
        if missing:
            raise ValueError(f"state: expected a PlasticityController state_dict, missing keys {sorted(missing)}")
        # entries [i, j, rewires left]; states saved before protection had a length hold [i, j] (1 left)
        protected = {(int(e[0]), int(e[1])): int(e[2]) if len(e) > 2 else 1 for e in state["protected"]}
        foreign = sorted(set(protected) - set(self.model.candidate_paths()))
        if foreign:
            raise ValueError(
                f"state: protects paths {foreign}, which are no candidate paths of this model; "
                "it was saved with another network"
            )
        self.step_count = int(state["step_count"])
        self._generator.set_state(state["generator"])
        self._protected = protected
        self.history = [RewireEvent.from_dict(event) for event in state["history"]]
        if self.grown_gate == "ramp" and self.history:
            # the fade-in of the last rewire's paths may be under way: take it up where it was
            last = self.history[-1]
            done = self.step_count - last.step
            if last.grown and done < self.schedule.interval:
                self.model.start_ramp([path for path, _ in last.grown], self.schedule.interval)
                self.model.advance_ramp(done)
