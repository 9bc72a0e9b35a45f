"""Training checkpoints: written atomically, read with weights_only=True, checked for origin.

A checkpoint is a dict of tensors and plain Python values only (state_dicts, RNG states), so
`torch.load(weights_only=True)` reads it without unpickling arbitrary code. It carries the
SHA-256 of everything in it, checked on load: a bit flipped inside tensor data passes torch.load
but not the checksum.
"""

import hashlib
import os
import tempfile

import torch

FORMAT = "plasticnet-train-checkpoint"
VERSION = 2  # 2 adds the checksum; version 1 files (written before it) still load, unverified
CHECKSUM = "sha256"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable, or not one this trainer wrote."""


def atomic_write(path: str, write) -> None:
    """Call write(file) on a temporary file beside `path`, then rename it onto `path`.

    os.replace is atomic on one filesystem: a reader (or a crash) sees the old file or the
    new one, never half of one.
    """
    directory = os.path.dirname(os.path.abspath(path))
    descriptor, temporary = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "wb") as file:
            os.fchmod(file.fileno(), 0o666 & ~_umask())  # mkstemp's file is private (0600); open() would not be
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


def _umask() -> int:
    umask = os.umask(0)  # the only way to read it is to set it
    os.umask(umask)
    return umask


def with_checksum(state: dict) -> dict:
    """`state` as save_checkpoint writes it: tagged with the format and carrying its SHA-256."""
    state = {"format": FORMAT, "version": VERSION, **{k: v for k, v in state.items() if k != CHECKSUM}}
    return {**state, CHECKSUM: checksum(state)}


def save_checkpoint(path: str, state: dict) -> None:
    write_checkpoint(path, with_checksum(state))


def write_checkpoint(path: str, tagged: dict) -> None:
    """Write a state that with_checksum() returned, atomically (one hash for several files)."""
    atomic_write(path, lambda file: torch.save(tagged, file))


def checksum(value) -> str:
    """SHA-256 over a nest of dicts, lists and tensors: keys, types, shapes, dtypes and bytes."""
    digest = hashlib.sha256()

    def visit(item) -> None:
        if isinstance(item, torch.Tensor):
            item = item.detach().cpu().contiguous()
            digest.update(f"tensor {item.dtype} {tuple(item.shape)};".encode())
            digest.update(item.reshape(-1).view(torch.uint8).numpy().tobytes())
        elif isinstance(item, dict):
            digest.update(f"dict {len(item)};".encode())
            for key in sorted(item, key=repr):
                digest.update(f"{key!r}:".encode())
                visit(item[key])
        elif isinstance(item, (list, tuple)):
            digest.update(f"{type(item).__name__} {len(item)};".encode())
            for element in item:
                visit(element)
        else:
            digest.update(f"{type(item).__name__} {item!r};".encode())

    visit(value)
    return digest.hexdigest()


def load_checkpoint(path: str, map_location=None) -> dict:
    """The state saved by save_checkpoint; CheckpointError naming the file otherwise."""
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path}: no such file")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch raises many types for a damaged file (pickle, zip, unpickler errors)
        raise CheckpointError(
            f"checkpoint {path} is unreadable: corrupt, not a torch file, or holding objects "
            f"that torch.load(weights_only=True) refuses ({_essence(error)})"
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path} was not written by `plasticnet train` (expected format {FORMAT!r})")
    if state.get("version") not in (1, VERSION):
        raise CheckpointError(
            f"checkpoint {path} has format version {state.get('version')}; "
            f"this plasticnet reads versions 1 and {VERSION}"
        )
    saved = state.pop(CHECKSUM, None)
    if state["version"] == VERSION and saved != checksum(state):
        best = os.path.join(os.path.dirname(path), "best.pt")
        fallback = f"; {best} may be intact: copy it over {path} to resume from it" if path != best else ""
        raise CheckpointError(f"checkpoint {path} is damaged: its contents do not match its SHA-256{fallback}")
    return state


def _essence(error: Exception) -> str:
    """The cause in a torch.load error: weights_only errors bury it after advice to load
    unsafely, on the line after "WeightsUnpickler error:" or on the same one."""
    text = str(error)
    _, marker, cause = text.partition("WeightsUnpickler error:")
    lines = [line.strip() for line in (cause if marker else text).splitlines() if line.strip()]
    detail = lines[0].split(". ")[0] if lines else "no detail"  # the first sentence
    return f"{type(error).__name__}: {detail}"


def rng_states(generators: dict[str, torch.Generator]) -> dict:
    """Every random state a run depends on: torch's CPU and CUDA defaults and the named generators."""
    states = {"torch": torch.get_rng_state(), "generators": {name: g.get_state() for name, g in generators.items()}}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict, generators: dict[str, torch.Generator]) -> None:
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    for name, generator in generators.items():
        generator.set_state(states["generators"][name])
