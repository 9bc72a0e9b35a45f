"""The network a run found, taken out: load_run(), the compact static module made deployable,
export files (torch.export, ONNX, state_dict) and their evaluation (`plasticnet export | eval`)."""

from plasticnet.deploy.formats import FORMATS, ExportError, load_export
from plasticnet.deploy.network import deployable
from plasticnet.deploy.runs import load_run

__all__ = ["FORMATS", "ExportError", "deployable", "load_export", "load_run"]
