"""The run directory: config.json, metrics.jsonl (one line per epoch), events.jsonl (one line
per rewire), step_evals.jsonl (test accuracy every N steps, when asked), plots and checkpoints.

Every file is either replaced atomically or appended one complete line at a time, so the
directory is never half-written; on resume the logs are cut back to the checkpoint so that
lines written after it (by a run that died before its next checkpoint) are not duplicated.

A run directory belongs to one run: its writer holds an exclusive lock on RUN_DIR/.lock for its
whole life (the kernel releases it when the process dies, kill -9 included), a fresh run refuses
a directory that holds another run's files, and the temporary files of a killed writer are
removed when the next one starts.
"""

import errno
import fcntl
import glob
import json
import os

from plasticnet.training.checkpoint import atomic_write

CONFIG = "config.json"
METRICS = "metrics.jsonl"
EVENTS = "events.jsonl"
STEP_EVALS = "step_evals.jsonl"
LAST = "last.pt"
BEST = "best.pt"
CURVES, TOPOLOGY = PLOTS = ("curves.png", "topology.png")
RUN_FILES = (CONFIG, METRICS, EVENTS, STEP_EVALS, LAST, BEST, *PLOTS)  # what --overwrite removes
LOCK = ".lock"


class RunDirError(ValueError):
    """The run directory cannot be used as asked: another run's, locked, or not writable."""


class RunDir:
    """Writes a run's files under `path`; every method is a no-op unless `writer` (rank 0).

    `mode` is what the run does with the directory: "new" refuses one holding a run, "resume"
    continues the run in it, "overwrite" removes the files of the run in it first."""

    def __init__(self, path: str, writer: bool = True, mode: str = "new"):
        self.path = path
        self.writer = writer
        self._lock = None
        self._created = False
        if writer:
            self._claim(mode)

    def _claim(self, mode: str) -> None:
        if os.path.exists(self.path) and not os.path.isdir(self.path):
            raise RunDirError(f"--out {self.path} is a file, not a directory; name a directory")
        try:
            self._created = not os.path.exists(self.path)
            os.makedirs(self.path, exist_ok=True)
            self._lock = open(self.file(LOCK), "a")
        except OSError as error:
            raise RunDirError(f"cannot create the run directory {self.path}: {error.strerror}") from None
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            self._lock.close()
            if error.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            raise RunDirError(
                f"{self.path} is in use by another `plasticnet train` (it holds {self.file(LOCK)}); "
                "wait for it to end, or train into another --out"
            ) from None
        present = [name for name in RUN_FILES if os.path.exists(self.file(name))]
        if mode == "new" and present:
            self.release()
            raise RunDirError(
                f"{self.path} holds a run already ({', '.join(present)}): continue it with --resume {self.path}, "
                "start it again with --overwrite (its checkpoints and logs are deleted), or choose another --out"
            )
        doomed = glob.glob(os.path.join(glob.escape(self.path), ".*.tmp"))  # a killed writer's
        if mode == "overwrite":
            doomed += [self.file(name) for name in present]
        for path in doomed:
            os.remove(path)

    def release(self, remove_if_unused: bool = False) -> None:
        """Give the directory up; `remove_if_unused` also deletes it when this run created it and
        wrote nothing (a run that failed before its first file leaves no empty directory)."""
        if self._lock is None:
            return
        self._lock.close()
        self._lock = None
        if remove_if_unused and self._created and os.listdir(self.path) == [LOCK]:
            os.remove(self.file(LOCK))
            os.rmdir(self.path)

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
                f.write(json.dumps(record, allow_nan=False) + "\n")  # strict JSON: a NaN is a bug upstream

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
