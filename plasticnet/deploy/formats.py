"""Export files of a run's network, and loading them back for `plasticnet eval`.

Every file carries the same metadata (JSON): where it came from, the input it expects (shape, and
the per-channel mean and std to normalise [0, 1] images with), classes, active paths and costs.

- pt2: torch.export's ExportedProgram (batch dimension dynamic), metadata as the extra file
  `plasticnet.json`. With join="reference" it loads with plain torch; the fused join is the
  registered op plasticnet::residual_aggregate, which importing plasticnet provides.
- onnx: torch.onnx's dynamo exporter (reference join only: ONNX has no plasticnet op), metadata
  in the model's metadata_props under "plasticnet", run by onnxruntime.
- state_dict: the static module's state_dict beside the metadata, read with weights_only=True;
  plasticnet rebuilds the module from the run's config and the topology the metadata records.
"""

import json
import os
import zipfile
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from plasticnet.deploy.network import rebuild
from plasticnet.training.checkpoint import CheckpointError, atomic_write

FORMATS = {"pt2": ".pt2", "onnx": ".onnx", "state_dict": ".pt"}
METADATA = "plasticnet.json"
STATE_FORMAT = "plasticnet-static-state"


class ExportError(ValueError):
    """A file is not an export this plasticnet can read, or an export cannot be made as asked."""


@dataclass
class Exported:
    """An export loaded back: `predict` maps a normalised float batch (N, C, H, W) to logits."""

    predict: Callable[[torch.Tensor], torch.Tensor]
    metadata: dict
    path: str


def write_export(network: nn.Module, metadata: dict, format: str, path: str) -> None:
    """Write `network` (eval mode, on the CPU) as `format` to `path`, atomically."""
    example = torch.zeros((2, *metadata["input_shape"]))  # 2: a batch of 1 would be specialised
    if format == "state_dict":
        payload = {"format": STATE_FORMAT, "version": 1, "metadata": metadata, "state_dict": network.state_dict()}
        atomic_write(path, lambda file: torch.save(payload, file))
        return
    batch = {"x": {0: torch.export.Dim("batch", min=1)}}
    if format == "pt2":
        with torch.no_grad():
            program = torch.export.export(network, (example,), dynamic_shapes=batch)
        atomic_write(path, lambda file: torch.export.save(program, file, extra_files={METADATA: json.dumps(metadata)}))
        return
    if metadata["join"] != "reference":
        raise ExportError("--format onnx needs --join reference: ONNX runtimes do not know plasticnet's fused op")
    _require("onnx", "--format onnx")
    _require("onnxscript", "--format onnx")  # torch.onnx's exporter
    with torch.no_grad():
        program = torch.onnx.export(network, (example,), dynamo=True, dynamic_shapes=batch, verbose=False)
    proto = program.model_proto
    entry = proto.metadata_props.add()
    entry.key, entry.value = "plasticnet", json.dumps(metadata)
    atomic_write(path, lambda file: file.write(proto.SerializeToString()))


def _require(module: str, purpose: str):
    try:
        return __import__(module)
    except ImportError:
        raise ExportError(f"{purpose} needs the `{module}` package: pip install {module}") from None


def load_export(path: str) -> Exported:
    """An export written by write_export; ExportError naming the file when it is none."""
    if not os.path.isfile(path):
        raise ExportError(f"{path}: no such file")
    if path.endswith(FORMATS["onnx"]):
        return _load_onnx(path)
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
        if any(name.endswith(f"extra/{METADATA}") for name in names):
            return _load_pt2(path)
        return _load_state_dict(path)
    raise ExportError(f"{path} is not a plasticnet export (pt2, onnx or state_dict) nor a training checkpoint")


def _parse_metadata(path: str, text: str | None) -> dict:
    """The metadata stored as JSON text in a pt2 or ONNX file (None: the file has none)."""
    try:
        metadata = json.loads(text) if text is not None else None
    except ValueError:
        metadata = None
    return _check_metadata(path, metadata)


def _check_metadata(path: str, metadata) -> dict:
    needed = ("input_shape", "mean", "std", "join", "num_classes", "config")
    if not isinstance(metadata, dict) or any(key not in metadata for key in needed):
        raise ExportError(f"{path}: its plasticnet metadata is missing or damaged; export it again")
    return metadata


def _load_pt2(path: str) -> Exported:
    extra = {METADATA: ""}
    try:
        program = torch.export.load(path, extra_files=extra)
    except Exception as error:  # torch.export.load raises many types for a damaged archive
        raise ExportError(f"{path} is a damaged pt2 file ({type(error).__name__}); export it again") from None
    module = program.module()
    return Exported(module, _parse_metadata(path, extra[METADATA]), path)


def _load_onnx(path: str) -> Exported:
    runtime = _require("onnxruntime", "evaluating an ONNX file")
    try:
        session = runtime.InferenceSession(path, providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime's own exception types for an unreadable model
        raise ExportError(f"{path} is not a readable ONNX model ({type(error).__name__}); export it again") from None
    metadata = _parse_metadata(path, session.get_modelmeta().custom_metadata_map.get("plasticnet"))
    name = session.get_inputs()[0].name

    def predict(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run(None, {name: x.detach().cpu().float().numpy()})[0]).to(x.device)

    return Exported(predict, metadata, path)


def _load_state_dict(path: str) -> Exported:
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # as in load_checkpoint: damaged archives raise many types
        raise ExportError(f"{path} is unreadable ({type(error).__name__}); export it again") from None
    if not isinstance(payload, dict) or payload.get("format") != STATE_FORMAT:
        raise ExportError(f"{path} is a torch file, but not a plasticnet export (expected format {STATE_FORMAT!r})")
    metadata = _check_metadata(path, payload.get("metadata"))
    try:
        network = rebuild(metadata, payload["state_dict"])
    except (KeyError, TypeError, ValueError, RuntimeError, CheckpointError) as error:
        raise ExportError(f"{path}: its network cannot be rebuilt ({error}); export it again") from None
    return Exported(network, metadata, path)
