"""The training loop. `Trainer` puts the parts together (data, model, optimizer, controller,
checkpointable state, run logger) and runs the epochs.

Per step the host only queues work: loss and accuracy are summed on the device and read back
every `log_every` steps for the progress bar (and once per epoch for the metrics).
"""

import contextlib
import gc
import math
import os
import time

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from plasticnet.models.compute import active_parameters, forward_macs
from plasticnet.training import data as batching
from plasticnet.training.builders import build_controller, build_model, build_optimizer, build_scheduler
from plasticnet.training.checkpoint import load_checkpoint
from plasticnet.training.config import ConfigError, TrainConfig
from plasticnet.training.distributed import Distributed, device_type, resolve_device
from plasticnet.training.evaluation import accumulate, held_out_totals
from plasticnet.training.logger import RunLogger
from plasticnet.training.run_dir import LAST
from plasticnet.training.splits import load_data
from plasticnet.training.state import TrainingState


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite: the run stops before checkpointing the damaged weights."""


@contextlib.contextmanager
def frozen_batch_norm_statistics(model: nn.Module):
    """BatchNorm layers normalise with batch statistics as usual but leave their running
    statistics as they were (momentum 0), e.g. for a probe's extra forward."""
    layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    momenta = [m.momentum for m in layers]
    for m in layers:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, momentum in zip(layers, momenta):
            m.momentum = momentum


class Trainer:
    """Train `config` into `config.out`; with resume=True, continue from its last.pt (the
    caller passes the saved config)."""

    def __init__(self, config: TrainConfig, *, resume: bool = False, overwrite: bool = False):
        if config.versions is None:  # built in Python, not by the CLI: fill in what the CLI would
            config = config.resolved()
        if resume and overwrite:
            raise ConfigError("--resume and --overwrite exclude each other: continue the run, or start it again")
        self.config = config
        if config.threads is not None:
            torch.set_num_threads(config.threads)
        self.distributed = Distributed(device_type(config.device))
        self.device = resolve_device(config.device, self.distributed.local_rank)
        self.on_cuda = self.device.type == "cuda"
        mode = "resume" if resume else "overwrite" if overwrite else "new"
        self.logger = RunLogger(config.out, writer=self.distributed.rank == 0, mode=mode)  # first: claim the dir
        try:
            self._build(config, resume)
        except BaseException:
            self.logger.run_dir.release(remove_if_unused=True)
            raise

    def _build(self, config: TrainConfig, resume: bool) -> None:
        torch.manual_seed(config.seed)  # the same initial weights on every rank
        data = load_data(config, self.distributed, self.device)
        self.train_set, self.test_set = data.train.to(self.device), data.test.to(self.device)
        self.validation_set = data.validation.to(self.device) if data.validation is not None else None
        self.classes = data.classes
        mean, std = batching.channel_statistics(self.train_set.images)
        self.augmenter = batching.DeviceAugmenter(
            mean, std, crop_padding=4 if config.augment else 0, flip=config.augment, cutout=config.cutout
        )
        # one shuffling stream shared by all ranks (they must agree on the permutation),
        # one augmentation stream per rank (each rank's samples get their own crops)
        generators = {
            "shuffle": torch.Generator(self.device).manual_seed(config.seed),
            "augment": torch.Generator(self.device).manual_seed(config.seed + 1 + self.distributed.rank),
        }
        rank, world = self.distributed.rank, self.distributed.world_size
        try:
            self.batches = batching.TrainBatches(
                self.train_set,
                config.batch_size,
                self.augmenter,
                shuffle=generators["shuffle"],
                augment=generators["augment"],
                rank=rank,
                world_size=world,
                channels_last=self.on_cuda,
            )
        except ValueError as error:
            raise ConfigError(f"--batch-size: {error}") from None
        self.held_out = {
            name: batching.EvaluationBatches(
                split, config.eval_batch_size, self.augmenter, rank=rank, world_size=world, channels_last=self.on_cuda
            )
            for name, split in (("validation", self.validation_set), ("test", self.test_set))
            if split is not None
        }
        self.steps_per_epoch = len(self.batches)
        self.total_steps = self.steps_per_epoch * config.epochs

        self.model = build_model(config, len(self.classes)).to(self.device)
        if self.on_cuda:
            self.model = self.model.to(memory_format=torch.channels_last)
        if config.compile:
            # per part, never the whole plastic model: its topology changes at every rewire,
            # and a whole-model graph would be recompiled each time
            self.model.compile_parts()
        optimizer = build_optimizer(config, self.model)
        scheduler = build_scheduler(config, optimizer, self.steps_per_epoch, self.total_steps)
        controller = build_controller(config, self.model, optimizer, self.total_steps)
        statistics = (mean.cpu(), std.cpu())
        self.state = TrainingState(
            self.model, optimizer, scheduler, controller, generators, input_statistics=statistics
        )
        self.criterion = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
        self._input_shape = tuple(self.train_set.images.shape[1:])
        last = self.logger.run_dir.file(LAST)
        # a run killed before its first checkpoint resumes from scratch
        checkpoint = load_checkpoint(last, map_location=self.device) if resume and os.path.exists(last) else None
        if checkpoint is not None:
            self.state.load_state_dict(checkpoint, source=last)
        self._wrap(first=True)
        self._compute = self.compute()  # the network's cost changes only when a rewire changes it
        self.logger.start(config, plastic=controller is not None, resume=resume, checkpoint=checkpoint)

    # the parts, by the names a user of the loop knows them
    @property
    def optimizer(self) -> torch.optim.Optimizer:
        return self.state.optimizer

    @property
    def controller(self):
        return self.state.controller

    @property
    def run_dir(self):
        return self.logger.run_dir

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

    def compute(self) -> dict:
        """Active parameters and forward MACs per image of the network as it is now."""
        return {"active_parameters": active_parameters(self.model), "macs": forward_macs(self.model, self._input_shape)}

    # ---- training ---------------------------------------------------------------------

    def _autocast(self):
        return torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.on_cuda)

    def _train_step(self, inputs: torch.Tensor, labels: torch.Tensor, totals: torch.Tensor) -> dict | None:
        state = self.state
        self.model.train()
        with self._autocast():
            logits = self.ddp_model(inputs)
            loss = self.criterion(logits.float(), labels)
        state.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        state.optimizer.step()
        state.scheduler.step()
        state.step += 1
        with torch.no_grad():
            accumulate(totals, loss.detach() * labels.shape[0], logits, labels)
        if state.controller is None:
            return None

        def probe() -> None:
            # the bare model, not the DDP wrapper: the probe's gradients feed only the local
            # PathScores, which the controller averages across ranks itself
            freeze = self.config.probe_batch_norm == "frozen"
            with self._autocast(), frozen_batch_norm_statistics(self.model) if freeze else contextlib.nullcontext():
                probe_loss = self.criterion(self.model(inputs).float(), labels)
            probe_loss.backward()

        try:
            event = state.controller.step(probe=probe)
        except FloatingPointError as error:  # non-finite scores: the loss diverged within the epoch
            raise self._diverged(str(error)) from None
        if event is None:
            return None
        self._wrap()
        self._compute = self.compute()
        return {
            "step": event.step,
            "epoch": state.epoch + 1,
            "dropped": [{"path": list(path), "score": score} for path, score in event.dropped],
            "grown": [{"path": list(path), "score": score} for path, score in event.grown],
            "active_paths": self._active_paths(),
            **self._compute,
        }

    def _active_paths(self) -> list[list[int]]:
        return [list(p) for p in self.model.active_paths()]

    def evaluate(self, split: str = "test") -> tuple[float, float]:
        """Loss and accuracy over the whole "test" or "validation" split (each rank takes a shard)."""
        self.model.eval()
        batches = self.held_out[split]
        totals = held_out_totals(self.model, batches, self.device, tta=self.config.tta, autocast=self._autocast)
        loss_sum, correct, count = self.distributed.all_sum(totals).tolist()
        return loss_sum / count, correct / count

    def _held_out(self) -> dict:
        """Validation (when the run has a split) and test loss and accuracy, BN statistics averaged first."""
        self.distributed.average_batch_norm_statistics(self.model)
        record = {}
        if self.validation_set is not None:
            record["val_loss"], record["val_acc"] = self.evaluate("validation")
        record["test_loss"], record["test_acc"] = self.evaluate("test")
        return record

    def fit(self, until_epoch: int | None = None) -> list[dict]:
        """Train to `until_epoch` (default: config.epochs); returns metrics.jsonl's records.

        Stopping early and calling fit again (or resuming the run dir) gives the same result
        as one uninterrupted call."""
        config, state = self.config, self.state
        until_epoch = config.epochs if until_epoch is None else min(until_epoch, config.epochs)
        while state.epoch < until_epoch:
            totals = torch.zeros(3, dtype=torch.float64, device=self.device)
            bar = tqdm(
                self.batches,
                desc=f"epoch {state.epoch + 1}/{config.epochs}",
                unit="step",
                leave=False,
                disable=not (config.progress and self.logger.writer),
            )
            start = time.perf_counter()
            for i, (inputs, labels) in enumerate(bar, 1):
                event = self._train_step(inputs, labels, totals)
                if event is not None:
                    self.logger.rewire(event)
                if config.eval_every_steps and state.step % config.eval_every_steps == 0:
                    self.logger.step_evaluation({"step": state.step, "epoch": state.epoch + 1, **self._held_out()})
                if not bar.disable and (i % config.log_every == 0 or i == len(self.batches)):
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
        return self.logger.metrics()

    def _end_epoch(self, totals: torch.Tensor, start: float) -> None:
        state = self.state
        state.epoch += 1
        loss_sum, correct, count = self.distributed.all_sum(totals).tolist()
        seconds = time.perf_counter() - start  # after that sync: the device has finished the epoch's steps
        held_out = self._held_out()
        record = {
            "epoch": state.epoch,
            "step": state.step,
            "train_loss": loss_sum / count,
            "train_acc": correct / count,
            **held_out,
            "lr": state.scheduler.get_last_lr()[0],
            "images_per_s": count / seconds,
            "active_paths": self._active_paths(),
            **self._compute,
        }
        if not all(math.isfinite(value) for value in (record["train_loss"], *held_out.values())):
            raise self._diverged(
                f"the loss became non-finite in epoch {state.epoch} (train loss {record['train_loss']})"
            )
        score = held_out["val_acc"] if self.validation_set is not None else held_out["test_acc"]
        is_best = score > state.best_score
        state.best_score = max(state.best_score, score)
        if self.logger.writer:
            self.logger.end_epoch(record, state.state_dict(self.config), is_best)

    def _diverged(self, what: str) -> TrainingDiverged:
        return TrainingDiverged(
            f"{what}; the checkpoints in {self.logger.run_dir.path} hold the last good epoch, if any: "
            "lower --lr or raise --warmup-epochs"
        )

    def close(self) -> None:
        """Give up the run directory and leave the process group. Every DDP wrapper (rewires
        leave old ones in reference cycles) must be freed first: one collected after the group is
        gone, at interpreter exit, aborts the process ("terminate called without an active exception")."""
        self.logger.run_dir.release()
        if self.distributed.enabled:
            dist.barrier()  # the other ranks wait for rank 0's last checkpoint and plots
            self.ddp_model = None
            gc.collect()
            dist.destroy_process_group()
