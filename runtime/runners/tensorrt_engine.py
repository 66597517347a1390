"""Run a serialized TensorRT engine (`vision_model.<precision>.engine`) with TensorRT's Python API.

Optional: needs `tensorrt` and `cuda-python` (`pip install -e ".[tensorrt]"`) and an NVIDIA GPU.
An engine only runs on the GPU model and TensorRT version that built it, so every engine has
a metadata file beside it (`<engine>.json`: TensorRT version, GPU name and compute
capability, the source model's sha256, the batch profile), and loading one built elsewhere is
refused with both values named, before TensorRT would fail obscurely.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import numpy as np

from ..errors import ArtefactError, ProviderError
from .validation import outputs_for, validate_input


def metadata_path(engine: str | os.PathLike) -> Path:
    engine = Path(engine)
    return engine.with_name(engine.name + ".json")


def read_metadata(engine: str | os.PathLike) -> dict:
    path = metadata_path(engine)
    if not path.is_file():
        raise ArtefactError(f"{engine} has no metadata file {path.name}; rebuild the engine with export.py")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
        for key in ("tensorrt_version", "gpu_name", "compute_capability", "model_sha256"):
            meta[key]
    except (ValueError, KeyError, TypeError) as exc:
        raise ArtefactError(f"{path} is not valid engine metadata: {exc!r}") from None
    return meta


def check_compatible(meta: dict, tensorrt_version: str, gpu_name: str, compute_capability: str,
                     engine: str | os.PathLike = "engine") -> None:
    """Refuse an engine built for another TensorRT version or GPU, naming both sides."""
    if meta["tensorrt_version"] != tensorrt_version:
        raise ArtefactError(
            f"{engine} was built with TensorRT {meta['tensorrt_version']}, this machine has TensorRT "
            f"{tensorrt_version}: rebuild the engine here (export.py --variants trt-fp16)"
        )
    if str(meta["compute_capability"]) != str(compute_capability) or meta["gpu_name"] != gpu_name:
        raise ArtefactError(
            f"{engine} was built for {meta['gpu_name']} (compute capability {meta['compute_capability']}), "
            f"this GPU is {gpu_name} (compute capability {compute_capability}): rebuild the engine here"
        )


def load_cudart():
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        try:
            from cuda import cudart  # older cuda-python
        except ImportError:
            raise ProviderError("native TensorRT engines need cuda-python: pip install -e '.[tensorrt]'") from None
    return cudart


def _check(result):
    """cuda-python returns (error, value...) tuples; raise on a non-success error code."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise RuntimeError(f"CUDA call failed: {err}")
    return values[0] if len(values) == 1 else values


def device_identity(device_id: int = 0) -> tuple[str, str]:
    """(GPU name, compute capability 'major.minor') of a CUDA device."""
    cudart = load_cudart()
    props = _check(cudart.cudaGetDeviceProperties(device_id))
    name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
    return name.rstrip("\x00"), f"{props.major}.{props.minor}"


class TensorRTEngine:
    """`TensorRTEngine(path).run(array) -> {output name: array}`, like `OnnxModel`.

    Device buffers are allocated once for the profile's maximum batch; one lock serialises
    calls because a TensorRT execution context is not safe to use from two threads at once.
    """

    def __init__(self, path: str | os.PathLike, device_id: int = 0):
        self.path = Path(path)
        if not self.path.is_file():
            raise ArtefactError(f"engine file not found: {self.path}")
        self.metadata = read_metadata(self.path)
        try:
            import tensorrt as trt
        except ImportError:
            raise ProviderError("native TensorRT engines need the tensorrt package: pip install -e '.[tensorrt]'") from None
        cudart = self._cudart = load_cudart()
        _check(cudart.cudaSetDevice(device_id))
        gpu, capability = device_identity(device_id)
        check_compatible(self.metadata, trt.__version__, gpu, capability, self.path.name)
        self.provider = f"TensorRT {trt.__version__} ({gpu})"
        logger = trt.Logger(trt.Logger.WARNING)
        self.engine = trt.Runtime(logger).deserialize_cuda_engine(self.path.read_bytes())
        if self.engine is None:
            raise ArtefactError(f"TensorRT could not deserialize {self.path} (truncated or corrupt)")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        if len(inputs) != 1:
            raise ArtefactError(f"{self.path}: expected one input, found {inputs}")
        self.input_name = inputs[0]
        self.output_names = [n for n in names if n != self.input_name]
        self.dtypes = {n: np.dtype(trt.nptype(self.engine.get_tensor_dtype(n))) for n in names}
        self.input_dtype = self.dtypes[self.input_name]
        _, _, max_shape = self.engine.get_tensor_profile_shape(self.input_name, 0)
        self.max_batch = int(max_shape[0])
        self.input_shape = ("batch", *map(int, max_shape[1:]))
        self.stream = _check(cudart.cudaStreamCreate())
        # Allocate every buffer at its largest shape (the profile's maximum batch).
        self.context.set_input_shape(self.input_name, tuple(max_shape))
        self.buffers = {}
        for name in names:
            shape = tuple(self.context.get_tensor_shape(name))
            nbytes = int(np.prod(shape)) * self.dtypes[name].itemsize
            self.buffers[name] = _check(cudart.cudaMalloc(nbytes))
            self.context.set_tensor_address(name, int(self.buffers[name]))
        self._lock = threading.Lock()

    def run(self, x: np.ndarray, outputs=None) -> dict[str, np.ndarray]:
        x = validate_input(x, name=self.input_name, shape=self.input_shape, dtype=self.input_dtype,
                           max_batch=self.max_batch)
        names = outputs_for(self.path, self.output_names, outputs)
        cudart = self._cudart
        h2d, d2h = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        with self._lock:
            self.context.set_input_shape(self.input_name, x.shape)
            _check(cudart.cudaMemcpyAsync(self.buffers[self.input_name], x.ctypes.data, x.nbytes, h2d, self.stream))
            if not self.context.execute_async_v3(int(self.stream)):  # TensorRT takes the raw stream handle
                raise RuntimeError(f"TensorRT execution failed for {self.path.name}")
            outputs = {}
            for name in names:
                out = np.empty(tuple(self.context.get_tensor_shape(name)), self.dtypes[name])
                _check(cudart.cudaMemcpyAsync(out.ctypes.data, self.buffers[name], out.nbytes, d2h, self.stream))
                outputs[name] = out
            _check(cudart.cudaStreamSynchronize(self.stream))
        return {name: outputs[name].astype(np.float32, copy=False) for name in names}

    def __del__(self):
        cudart = getattr(self, "_cudart", None)
        for pointer in getattr(self, "buffers", {}).values():
            cudart.cudaFree(pointer)
        if getattr(self, "stream", None) is not None:
            cudart.cudaStreamDestroy(self.stream)
