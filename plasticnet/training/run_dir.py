"""The run directory: config.json, metrics.jsonl (one line per epoch), events.jsonl (one line
per rewire), step_evals.jsonl (test accuracy every N steps, when asked), plots and checkpoints.

Every file is either replaced atomically or appended one complete line at a time, so the
directory is never half-written; on resume the logs are cut back to the checkpoint so that
lines written after it (by a run that died before its next checkpoint) are not duplicated.
"""

import json
import os

from plasticnet.training.checkpoint import atomic_write

CONFIG = "config.json"
METRICS = "metrics.jsonl"
EVENTS = "events.jsonl"
STEP_EVALS = "step_evals.jsonl"
LAST = "last.pt"
BEST = "best.pt"


class RunDir:
    """Writes a run's files under `path`; every method is a no-op unless `writer` (rank 0)."""

    def __init__(self, path: str, writer: bool = True):
        self.path = path
        self.writer = writer
        if writer:
            os.makedirs(path, exist_ok=True)

    def file(self, name: str) -> str:
        return os.path.join(self.path, name)

    def write_config(self, config: dict) -> None:
        if self.writer:
            text = json.dumps(config, indent=2, sort_keys=True) + "\n"
            atomic_write(self.file(CONFIG), lambda f: f.write(text.encode()))

    def create(self, name: str) -> None:
        """Make sure the log `name` exists, keeping any lines it has."""
        if self.writer:
            open(self.file(name), "a").close()

    def append(self, name: str, record: dict) -> None:
        if self.writer:
            with open(self.file(name), "a") as f:
                f.write(json.dumps(record) + "\n")

    def truncate_after(self, name: str, key: str, last: int) -> None:
        """Keep only the lines of `name` whose `key` is at most `last`."""
        if self.writer and os.path.exists(self.file(name)):
            kept = [r for r in read_jsonl(self.file(name)) if r[key] <= last]
            text = "".join(json.dumps(r) + "\n" for r in kept)
            atomic_write(self.file(name), lambda f: f.write(text.encode()))


def read_jsonl(path: str) -> list[dict]:
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]
