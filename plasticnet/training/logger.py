"""What a run writes besides its checkpoints' contents: the jsonl logs, the plots and the
checkpoint files, on rank 0 only, each file replaced atomically or appended a line at a time."""

import os

from tqdm import tqdm

from plasticnet.training.checkpoint import load_checkpoint, save_checkpoint, with_checksum, write_checkpoint
from plasticnet.training.config import TrainConfig
from plasticnet.training.plots import plot_curves, plot_topology
from plasticnet.training.run_dir import (
    BEST,
    CURVES,
    EVENTS,
    LAST,
    METRICS,
    STEP_EVALS,
    TOPOLOGY,
    RunDir,
    RunDirError,
    read_jsonl,
)


class RunLogger:
    """The run directory of one run, seen from the training loop."""

    def __init__(self, path: str, writer: bool, mode: str = "new"):
        self.run_dir = RunDir(path, writer=writer, mode=mode)

    @property
    def writer(self) -> bool:
        return self.run_dir.writer

    def start(self, config: TrainConfig, *, plastic: bool, resume: bool, checkpoint: dict | None) -> None:
        """Write config.json. On resume first cut the logs back to the checkpoint's epoch and step
        (to nothing when the run died before its first checkpoint), so that lines written after it
        are not duplicated; restore the checkpoint's own metrics line, and best.pt, when the run
        died between writing the checkpoint and them. A plastic run's rewire log exists even
        before its first rewire."""
        if resume and self.writer:
            epoch, step = (checkpoint["epoch"], checkpoint["step"]) if checkpoint is not None else (0, 0)
            self.run_dir.truncate_after(METRICS, "epoch", epoch)
            self.run_dir.truncate_after(EVENTS, "step", step)
            self.run_dir.truncate_after(STEP_EVALS, "step", step)
            if checkpoint is not None:
                self._restore_epoch_end(checkpoint)
        self.run_dir.write_config(config.to_json())
        if plastic:
            self.run_dir.create(EVENTS)

    def _restore_epoch_end(self, checkpoint: dict) -> None:
        record = checkpoint.get("metrics")
        if record is not None and all(m["epoch"] != checkpoint["epoch"] for m in self.metrics()):
            self.run_dir.append(METRICS, record)
        best = self.run_dir.file(BEST)
        if checkpoint.get("is_best") and (
            not os.path.exists(best) or load_checkpoint(best, map_location="cpu")["epoch"] != checkpoint["epoch"]
        ):
            save_checkpoint(best, checkpoint)

    def rewire(self, record: dict) -> None:
        self.run_dir.append(EVENTS, record)

    def step_evaluation(self, record: dict) -> None:
        self.run_dir.append(STEP_EVALS, record)

    def end_epoch(self, record: dict, state: dict, is_best: bool) -> None:
        """Checkpoint first, holding the epoch's metrics line and whether it is the best: a crash
        before that line or best.pt leaves a checkpoint from which resume writes them; the
        reverse order would duplicate the line."""
        if not self.writer:
            return
        state = {**state, "metrics": record, "is_best": is_best}
        try:
            state = with_checksum(state)  # hashed once for last.pt and best.pt
            write_checkpoint(self.run_dir.file(LAST), state)
            if is_best:
                write_checkpoint(self.run_dir.file(BEST), state)
            self.run_dir.append(METRICS, record)
            metrics = read_jsonl(self.run_dir.file(METRICS))
            plot_curves(metrics, self.run_dir.file(CURVES))
            plot_topology(metrics, read_jsonl(self.run_dir.file(EVENTS)), self.run_dir.file(TOPOLOGY))
        except OSError as error:  # a full disk, a directory made read-only under the run
            raise RunDirError(
                f"cannot write into {self.run_dir.path}: {error.strerror}; its last complete checkpoint is "
                "intact, and --resume continues from it once there is room"
            ) from None
        held_out = "".join(
            f" | {split} loss {record[f'{split}_loss']:.3f} acc {record[f'{split}_acc']:.3f}"
            for split in ("val", "test")
            if f"{split}_acc" in record
        )
        tqdm.write(
            f"epoch {record['epoch']}: train loss {record['train_loss']:.3f} acc {record['train_acc']:.3f}"
            f"{held_out} | {record['images_per_s']:.0f} img/s"
        )

    def metrics(self) -> list[dict]:
        return read_jsonl(self.run_dir.file(METRICS))
