"""What a run writes besides its checkpoints' contents: the jsonl logs, the plots and the
checkpoint files, on rank 0 only, each file replaced atomically or appended a line at a time."""

from tqdm import tqdm

from plasticnet.training.checkpoint import save_checkpoint
from plasticnet.training.config import TrainConfig
from plasticnet.training.plots import plot_curves, plot_topology
from plasticnet.training.run_dir import BEST, EVENTS, LAST, METRICS, STEP_EVALS, RunDir, read_jsonl


class RunLogger:
    """The run directory of one run, seen from the training loop."""

    def __init__(self, path: str, writer: bool):
        self.run_dir = RunDir(path, writer=writer)

    @property
    def writer(self) -> bool:
        return self.run_dir.writer

    def start(self, config: TrainConfig, *, plastic: bool, resumed_from: dict | None) -> None:
        """Write config.json. On resume (`resumed_from`: the checkpoint) first cut the logs back
        to the checkpoint's epoch and step, so that lines written after it (by a run that died
        before its next checkpoint) are not duplicated, and restore the checkpoint's own metrics
        line when a run died between writing the checkpoint and that line. A plastic run's
        rewire log exists even before its first rewire."""
        if resumed_from is not None and self.writer:
            epoch, step = resumed_from["epoch"], resumed_from["step"]
            self.run_dir.truncate_after(METRICS, "epoch", epoch)
            self.run_dir.truncate_after(EVENTS, "step", step)
            self.run_dir.truncate_after(STEP_EVALS, "step", step)
            record = resumed_from.get("metrics")
            if record is not None and all(m["epoch"] != epoch for m in self.metrics()):
                self.run_dir.append(METRICS, record)
        self.run_dir.write_config(config.to_json())
        if plastic:
            self.run_dir.create(EVENTS)

    def rewire(self, record: dict) -> None:
        self.run_dir.append(EVENTS, record)

    def step_evaluation(self, record: dict) -> None:
        self.run_dir.append(STEP_EVALS, record)

    def end_epoch(self, record: dict, state: dict, is_best: bool) -> None:
        """Checkpoint first, holding the epoch's metrics line: a crash between the two leaves a
        checkpoint whose line resume writes; the reverse order would duplicate the line."""
        if not self.writer:
            return
        state = {**state, "metrics": record}
        save_checkpoint(self.run_dir.file(LAST), state)
        if is_best:
            save_checkpoint(self.run_dir.file(BEST), state)
        self.run_dir.append(METRICS, record)
        metrics = read_jsonl(self.run_dir.file(METRICS))
        plot_curves(metrics, self.run_dir.file("curves.png"))
        plot_topology(metrics, read_jsonl(self.run_dir.file(EVENTS)), self.run_dir.file("topology.png"))
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
