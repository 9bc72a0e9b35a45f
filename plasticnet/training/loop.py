"""The training loop: one Trainer owns the model, optimizer, schedule, controller, data and run dir.

Per step the host only queues work: loss and accuracy are summed on the device and read
back every `log_every` steps for the progress bar (and once per epoch for the metrics).
"""

import gc
import math
import os
import time

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from plasticnet.training import data as datasets
from plasticnet.training.checkpoint import load_checkpoint, restore_rng_states, rng_states, save_checkpoint
from plasticnet.training.models import build_controller, build_model
from plasticnet.training.plots import plot_curves, plot_topology
from plasticnet.training.run_dir import BEST, EVENTS, LAST, METRICS, STEP_EVALS, RunDir, read_jsonl

SCHEDULES = ("cosine", "linear", "constant")
OPTIMIZERS = ("sgd", "adam")


def lr_factor(step: int, *, total_steps: int, warmup_steps: int, schedule: str) -> float:
    """Multiplier of the base lr after `step` optimizer steps: linear warm-up from 1/warmup,
    then cosine or linear decay to 0 at total_steps (one-cycle shapes), or constant."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return 0.5 * (1 + math.cos(math.pi * progress)) if schedule == "cosine" else 1.0 - progress


def _accumulate(totals: torch.Tensor, loss_sum: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor) -> None:
    """totals += (summed loss, correct predictions, samples), on the device: no host sync."""
    totals[0] += loss_sum
    totals[1] += (scores.argmax(1) == labels).sum()
    totals[2] += labels.shape[0]


class Distributed:
    """This process's place in a torchrun job (rank 0 of 1 when not launched by torchrun)."""

    def __init__(self, device_type: str):
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if self.world_size > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if device_type == "cuda" else "gloo")

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def all_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.enabled:
            dist.all_reduce(tensor)
        return tensor

    def average_batch_norm_statistics(self, model: nn.Module) -> None:
        """Each rank's BN running statistics drift apart (buffers are not broadcast, see
        Trainer._wrap): average them so evaluation and checkpoints see one model."""
        if self.enabled:
            for module in model.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.running_mean is not None:
                    for buffer in (module.running_mean, module.running_var):
                        dist.all_reduce(buffer)
                        buffer.div_(self.world_size)


def device_type(name: str) -> str:
    """ "cpu" or "cuda" for a --device value ("auto": cuda when visible)."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        return torch.device(name).type
    except RuntimeError:
        raise ValueError(f"--device: expected auto, cpu, cuda or cuda:N, got {name!r}") from None


def resolve_device(name: str, local_rank: int) -> torch.device:
    """The torch.device this process trains on (cuda:LOCAL_RANK under torchrun)."""
    device = torch.device(device_type(name) if name == "auto" else name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("--device cuda: no CUDA device is visible (use --device cpu)")
        if device.index is None:
            device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    return device


def load_data(
    config: dict, distributed: Distributed, device: torch.device
) -> tuple[datasets.ImageSet, datasets.ImageSet]:
    """The train and test sets (synthetic ones are generated on `device`; CIFAR-10 is read on the host)."""
    if config["dataset"] == "synthetic":
        return datasets.synthetic_cifar(config["train_size"], config["test_size"], config["seed"], device)
    if distributed.rank == 0:  # one process downloads, the others then find the files
        train, test = datasets.load_cifar10(config["data_dir"], config["download"])
    if distributed.enabled:
        dist.barrier()
    if distributed.rank != 0:
        train, test = datasets.load_cifar10(config["data_dir"], download=False)
    return train.subset(config["train_size"]), test.subset(config["test_size"])


class Trainer:
    """Train `config` (the resolved CLI options) into `config["out"]`; with resume=True,
    continue from its last.pt (the caller has put the saved config in `config`)."""

    def __init__(self, config: dict, *, resume: bool = False):
        self.config = config
        self.distributed = Distributed(device_type(config["device"]))
        self.device = resolve_device(config["device"], self.distributed.local_rank)
        self.on_cuda = self.device.type == "cuda"
        torch.manual_seed(config["seed"])  # the same initial weights on every rank

        train, test = load_data(config, self.distributed, self.device)
        self.run_dir = RunDir(config["out"], writer=self.distributed.rank == 0)  # after the data: no empty run dirs
        self.train_set, self.test_set = train.to(self.device), test.to(self.device)
        mean, std = datasets.channel_statistics(self.train_set.images)
        self.augmenter = datasets.DeviceAugmenter(
            mean, std, crop_padding=4 if config["augment"] else 0, flip=config["augment"], cutout=config["cutout"]
        )
        # one shuffling stream shared by all ranks (they must agree on the permutation),
        # one augmentation stream per rank (each rank's samples get their own crops)
        self.generators = {
            "shuffle": torch.Generator(self.device).manual_seed(config["seed"]),
            "augment": torch.Generator(self.device).manual_seed(config["seed"] + 1 + self.distributed.rank),
        }
        per_rank = len(self.train_set) // self.distributed.world_size
        self.steps_per_epoch = per_rank // config["batch_size"]
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"--batch-size: expected at most {per_rank} (training samples per process), got {config['batch_size']}"
            )
        self.total_steps = self.steps_per_epoch * config["epochs"]

        self.model = build_model(config, datasets.NUM_CLASSES).to(self.device)
        if self.on_cuda:
            self.model = self.model.to(memory_format=torch.channels_last)
        if config["compile"]:
            # per part, never the whole plastic model: its topology changes at every rewire,
            # and a whole-model graph would be recompiled each time
            self.model.compile_parts()
        self.optimizer = self._make_optimizer()
        warmup_steps = round(config["warmup_epochs"] * self.steps_per_epoch)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            lambda step: lr_factor(
                step, total_steps=self.total_steps, warmup_steps=warmup_steps, schedule=config["schedule"]
            ),
        )
        self.controller = build_controller(config, self.model, self.optimizer, self.total_steps)
        self.criterion = nn.CrossEntropyLoss(label_smoothing=config["label_smoothing"])
        self._wrap(first=True)

        self.epoch = 0
        self.step = 0
        self.best_accuracy = -1.0
        if resume:
            self._restore()
        else:
            self.run_dir.write_config(config)
        if self.controller is not None:
            self.run_dir.create(EVENTS)  # a plastic run's rewire log exists even before (or without) a rewire

    # ---- construction -------------------------------------------------------------------

    def _make_optimizer(self) -> torch.optim.Optimizer:
        config = self.config
        parameters = self.model.parameters()  # inactive paths' parameters get no grad, so no update
        if config["optimizer"] == "adam":
            return torch.optim.Adam(parameters, lr=config["lr"], weight_decay=config["weight_decay"])
        return torch.optim.SGD(
            parameters, lr=config["lr"], momentum=config["momentum"], nesterov=True, weight_decay=config["weight_decay"]
        )

    def _wrap(self, first: bool = False) -> None:
        """(Re)build the DDP wrapper. DDP fixes its parameter set and gradient buckets when
        built; inactive paths have requires_grad=False, so it never searches for unused
        parameters (no find_unused_parameters), but after every rewire the set changes and the
        wrapper must be built anew. Buffers are never synchronised by DDP: the PathScores
        buffers hold each rank's own contribution statistics, which the controller averages
        across ranks when it decides; overwriting them with rank 0's (at every forward, or at a
        rebuild) would throw the other ranks' away. Only the first build broadcasts rank 0's
        state; later ones need not, since every rank applies the same updates and rewires."""
        if self.distributed.enabled:
            self.ddp_model = DistributedDataParallel(
                self.model,
                device_ids=[self.device.index] if self.on_cuda else None,
                init_sync=first,
                forward_sync_buffers=False,
            )
        else:
            self.ddp_model = self.model

    def _restore(self) -> None:
        state = load_checkpoint(self.run_dir.file(LAST), map_location=self.device)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.controller is not None:
            self.controller.load_state_dict(state["controller"])
        restore_rng_states(state["rng"], self.generators)
        self.epoch, self.step, self.best_accuracy = state["epoch"], state["step"], state["best_accuracy"]
        self._wrap()  # the restored topology may differ from the freshly built one
        self.run_dir.truncate_after(METRICS, "epoch", self.epoch)
        self.run_dir.truncate_after(EVENTS, "step", self.step)
        self.run_dir.truncate_after(STEP_EVALS, "step", self.step)
        self.run_dir.write_config(self.config)

    # ---- training ---------------------------------------------------------------------

    def _autocast(self):
        return torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.on_cuda)

    def _inputs(self, images: torch.Tensor, augment: bool) -> torch.Tensor:
        x = self.augmenter(images, self.generators["augment"]) if augment else self.augmenter.normalise(images)
        return x.contiguous(memory_format=torch.channels_last) if self.on_cuda else x

    def _train_step(self, indices: torch.Tensor, totals: torch.Tensor) -> dict | None:
        inputs = self._inputs(self.train_set.images[indices], augment=True)
        labels = self.train_set.labels[indices]
        self.model.train()
        with self._autocast():
            logits = self.ddp_model(inputs)
            loss = self.criterion(logits.float(), labels)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        with torch.no_grad():
            _accumulate(totals, loss.detach() * labels.shape[0], logits, labels)
        if self.controller is None:
            return None

        def probe() -> None:
            # the bare model, not the DDP wrapper: the probe's gradients feed only the local
            # PathScores, which the controller averages across ranks itself
            with self._autocast():
                probe_loss = self.criterion(self.model(inputs).float(), labels)
            probe_loss.backward()

        event = self.controller.step(probe=probe)
        if event is None:
            return None
        self._wrap()
        return {
            "step": event.step,
            "epoch": self.epoch + 1,
            "dropped": [{"path": list(path), "score": score} for path, score in event.dropped],
            "grown": [{"path": list(path), "score": score} for path, score in event.grown],
            "active_paths": self._active_paths(),
        }

    def _active_paths(self) -> list[list[int]]:
        return [list(p) for p in self.model.active_paths()]

    @torch.no_grad()
    def evaluate(self) -> tuple[float, float]:
        """Test loss and accuracy over the whole test set (each rank takes a shard)."""
        self.model.eval()
        rank, world = self.distributed.rank, self.distributed.world_size
        totals = torch.zeros(3, dtype=torch.float64, device=self.device)
        for indices in torch.arange(rank, len(self.test_set), world, device=self.device).split(
            self.config["eval_batch_size"]
        ):
            inputs = self._inputs(self.test_set.images[indices], augment=False)
            labels = self.test_set.labels[indices]
            with self._autocast():
                probabilities = self.model(inputs).float().softmax(1)
                if self.config["tta"]:  # average with the mirrored image's prediction
                    probabilities = (probabilities + self.model(inputs.flip(3)).float().softmax(1)) / 2
            loss = nn.functional.nll_loss(probabilities.clamp_min(1e-12).log(), labels, reduction="sum")
            _accumulate(totals, loss, probabilities, labels)
        loss_sum, correct, count = self.distributed.all_sum(totals).tolist()
        return loss_sum / count, correct / count

    def _evaluate_at_step(self) -> None:
        self.distributed.average_batch_norm_statistics(self.model)
        test_loss, test_accuracy = self.evaluate()
        self.run_dir.append(
            STEP_EVALS, {"step": self.step, "epoch": self.epoch + 1, "test_loss": test_loss, "test_acc": test_accuracy}
        )

    def fit(self, until_epoch: int | None = None) -> list[dict]:
        """Train to `until_epoch` (default: config["epochs"]); returns metrics.jsonl's records.

        Stopping early and calling fit again (or resuming the run dir) gives the same result
        as one uninterrupted call."""
        until_epoch = self.config["epochs"] if until_epoch is None else min(until_epoch, self.config["epochs"])
        log_every, eval_every = self.config["log_every"], self.config["eval_every_steps"]
        while self.epoch < until_epoch:
            batches = datasets.shuffled_batches(
                len(self.train_set),
                self.config["batch_size"],
                self.generators["shuffle"],
                rank=self.distributed.rank,
                world_size=self.distributed.world_size,
            )
            totals = torch.zeros(3, dtype=torch.float64, device=self.device)
            bar = tqdm(
                batches,
                desc=f"epoch {self.epoch + 1}/{self.config['epochs']}",
                unit="step",
                leave=False,
                disable=not (self.config["progress"] and self.run_dir.writer),
            )
            start = time.perf_counter()
            for i, indices in enumerate(bar, 1):
                event = self._train_step(indices, totals)
                if event is not None:
                    self.run_dir.append(EVENTS, event)
                if eval_every and self.step % eval_every == 0:
                    self._evaluate_at_step()
                if not bar.disable and (i % log_every == 0 or i == len(batches)):
                    loss_sum, correct, count = totals.tolist()  # the only per-N-steps host sync
                    images_per_s = count * self.distributed.world_size / (time.perf_counter() - start)
                    bar.set_postfix(
                        {
                            "loss": f"{loss_sum / count:.3f}",
                            "acc": f"{correct / count:.3f}",
                            "images/s": f"{images_per_s:.0f}",
                        }
                    )
            self._end_epoch(totals, start)
        return read_jsonl(self.run_dir.file(METRICS))

    def _end_epoch(self, totals: torch.Tensor, start: float) -> None:
        self.epoch += 1
        loss_sum, correct, count = self.distributed.all_sum(totals).tolist()
        seconds = time.perf_counter() - start  # after that sync: the device has finished the epoch's steps
        self.distributed.average_batch_norm_statistics(self.model)
        test_loss, test_accuracy = self.evaluate()
        record = {
            "epoch": self.epoch,
            "step": self.step,
            "train_loss": loss_sum / count,
            "train_acc": correct / count,
            "test_loss": test_loss,
            "test_acc": test_accuracy,
            "lr": self.scheduler.get_last_lr()[0],
            "images_per_s": count / seconds,
            "active_paths": self._active_paths(),
        }
        is_best = test_accuracy > self.best_accuracy
        self.best_accuracy = max(self.best_accuracy, test_accuracy)
        if self.run_dir.writer:
            # checkpoint first: a crash between the two leaves a checkpoint whose epoch has no
            # metrics line, which resume tolerates; the reverse would duplicate the line
            state = self._state()
            save_checkpoint(self.run_dir.file(LAST), state)
            if is_best:
                save_checkpoint(self.run_dir.file(BEST), state)
            self.run_dir.append(METRICS, record)
            metrics = read_jsonl(self.run_dir.file(METRICS))
            plot_curves(metrics, self.run_dir.file("curves.png"))
            plot_topology(metrics, read_jsonl(self.run_dir.file(EVENTS)), self.run_dir.file("topology.png"))
            tqdm.write(
                f"epoch {self.epoch}: train loss {record['train_loss']:.3f} acc {record['train_acc']:.3f} | "
                f"test loss {test_loss:.3f} acc {test_accuracy:.3f} | {record['images_per_s']:.0f} img/s"
            )

    def _state(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "controller": self.controller.state_dict() if self.controller is not None else None,
            "rng": rng_states(self.generators),
            "epoch": self.epoch,
            "step": self.step,
            "best_accuracy": self.best_accuracy,
            "config": self.config,
        }

    def close(self) -> None:
        """Leave the process group. Every DDP wrapper (rewires leave old ones in reference
        cycles) must be freed first: one collected after the group is gone, at interpreter
        exit, aborts the process ("terminate called without an active exception")."""
        if self.distributed.enabled:
            dist.barrier()  # the other ranks wait for rank 0's last checkpoint and plots
            self.ddp_model = None
            gc.collect()
            dist.destroy_process_group()
