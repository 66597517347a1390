"""Buffers an ONNX Runtime session reads and writes in place, one set per batch size: IO binding
with fixed addresses (what CUDA graph replay needs), the outputs asked for copied back, and a host
input buffer page-locked for the GPU's DMA. `runtime.session.OnnxModel` keeps these sets.
numpy + onnxruntime (through the session) + ctypes only."""

from __future__ import annotations

import functools
import threading
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .session import OnnxModel


@functools.lru_cache(maxsize=1)
def _cudart():
    """The CUDA runtime library ONNX Runtime's CUDA provider loaded (by soname), or None."""
    import ctypes

    for name in ("libcudart.so.13", "libcudart.so.12", "libcudart.so", "cudart64_13.dll", "cudart64_12.dll"):
        try:
            return ctypes.CDLL(name)
        except OSError:
            continue
    return None


def _pin(array: np.ndarray):
    """Page-lock `array` (cudaHostRegister) so copies from it to the GPU go by DMA at full speed;
    returns the function that unpins it, or None where the CUDA runtime is not there or refuses."""
    import ctypes

    cudart = _cudart()
    if cudart is None or array.nbytes == 0:
        return None
    pointer = ctypes.c_void_p(array.ctypes.data)
    if cudart.cudaHostRegister(pointer, ctypes.c_size_t(array.nbytes), ctypes.c_uint(0)) != 0:
        return None
    return lambda: cudart.cudaHostUnregister(pointer)


class BoundBuffers:
    """One batch size's input and output buffers on the session's device, bound once. A run
    copies the input into the same buffer (`update_inplace`), runs, and copies the bound outputs
    back: the addresses never change, which CUDA graph replay needs, and nothing is allocated per
    call. One run at a time per buffer set (`lock`). `run_filled` has the caller write the input
    into this set's host buffer (page-locked on a GPU) instead of handing over an array."""

    def __init__(self, model: OnnxModel, batch: int, outputs: tuple[str, ...], graph_id: int | None):
        ort, device = model._ort, model._device
        self.lock = threading.Lock()
        self.shape = (batch, *model.input_shape[1:])
        self.dtype = model.input_dtype
        self.device = device
        self.input = ort.OrtValue.ortvalue_from_shape_and_type(self.shape, self.dtype, device, model.device_id)
        self.binding = model.session.io_binding()
        self.binding.bind_ortvalue_input(model.input_name, self.input)
        for name in outputs:
            shape = model._output_shape(name, batch)
            if shape is None:  # an axis other than the batch is not fixed: ORT allocates it per run
                self.binding.bind_output(name, device, model.device_id)
            else:
                value = ort.OrtValue.ortvalue_from_shape_and_type(shape, model._output_dtypes[name], device,
                                                                  model.device_id)
                self.binding.bind_ortvalue_output(name, value)
        self.outputs = outputs
        self.graph_id = graph_id
        self.run_options = None
        if graph_id is not None:
            self.run_options = ort.RunOptions()
            self.run_options.add_run_config_entry("gpu_graph_id", str(graph_id))
        self.host: np.ndarray | None = None  # made on the first run_filled
        self._unpin = None

    @property
    def pinned(self) -> bool:
        return self._unpin is not None

    def run(self, session, x: np.ndarray | None = None, fill=None, check=None) -> dict[str, np.ndarray]:
        """Run on `x`, or on what `fill(host buffer)` writes, passed through `check` (validation)."""
        with self.lock:
            if fill is not None:
                if self.host is None:
                    self.host = np.empty(self.shape, self.dtype)
                    self._unpin = _pin(self.host) if self.device == "cuda" else None
                fill(self.host)
                x = check(self.host)
            self.input.update_inplace(x)
            session.run_with_iobinding(self.binding, self.run_options)
            return dict(zip(self.outputs, self.binding.copy_outputs_to_cpu()))

    def release(self) -> None:
        if self._unpin is not None:
            self._unpin()
            self._unpin = None
