"""The artefact contract: what an export holds and how each file is to be read.

- `kinds`: every kind of artefact (file name per tower, format, precision, runner, providers,
  gate), registered once, and the `Runner` protocol the runners share;
- `manifest`: `manifest.json` as typed records (`Manifest`, `ArtefactRecord`, `Parity`, ...);
- `layer_outputs`: the names and index conventions of the `features` artefact's extra outputs;
- `parity`: the two numbers every gate reports (relative error, minimum row cosine).

numpy only: importing the contract loads no runtime library.
"""

from .kinds import (
    ENGINE,
    KINDS,
    ONNX,
    OPENVINO,
    OUTPUTS,
    PROVIDERS,
    TOWERS,
    ArtefactKind,
    Runner,
    kind_of,
    open_runner,
    register,
    runtime_of,
    unregister,
    variant_names,
)
from .manifest import MANIFEST, SCHEMA_VERSION, ArtefactRecord, Manifest, Parity, TensorInfo, Unpublished
from .parity import min_row_cosine, relative_error

__all__ = ["ArtefactKind", "ArtefactRecord", "ENGINE", "KINDS", "MANIFEST", "Manifest", "ONNX", "OPENVINO", "OUTPUTS",
           "PROVIDERS", "Parity", "Runner", "SCHEMA_VERSION", "TOWERS", "TensorInfo", "Unpublished", "kind_of",
           "min_row_cosine", "open_runner", "register", "relative_error", "runtime_of", "unregister",
           "variant_names"]
