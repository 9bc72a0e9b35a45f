"""PlasticityController: determinism, its state_dict and resumption, no host synchronisation on
steps that do not rewire, and torch.distributed (averaged scores, verified topologies)."""

import json

import controller_fakes
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from controller_fakes import (
    TinyPlasticNet,
    batches_from,
    clone,
    controller_for,
    loss_on,
    paths_of,
    set_gate,
    set_taylor,
    tiny_batch,
    train,
)

net = controller_fakes.net


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


def test_load_state_dict_rejects_protected_paths_the_model_lacks():
    controller = controller_for(TinyPlasticNet())
    state = {**controller.state_dict(), "step_count": 5, "protected": [[0, 1, 1], [0, 9, 2], [3, 2, 1]]}
    with pytest.raises(ValueError, match=r"protects paths \[\(0, 9\), \(3, 2\)\], which are no candidate paths"):
        controller.load_state_dict(state)
    assert controller.step_count == 0 and controller.state_dict()["protected"] == []  # nothing was taken


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
