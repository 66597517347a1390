"""Buffers an ONNX Runtime session reads and writes in place, one set per batch size: IO binding
with fixed addresses (what CUDA graph replay needs), the outputs asked for copied back, and a host
input buffer page-locked for the GPU's DMA. `runtime.session.OnnxModel` keeps these sets.
numpy + onnxruntime (through the session) + ctypes only."""

from __future__ import annotations

import ctypes
import functools
import threading
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .session import OnnxModel


@functools.lru_cache(maxsize=1)
def _cudart():
    """The CUDA runtime library ONNX Runtime's CUDA provider loaded (by soname), or None."""
    for name in ("libcudart.so.13", "libcudart.so.12", "libcudart.so", "cudart64_13.dll", "cudart64_12.dll"):
        try:
            return ctypes.CDLL(name)
        except OSError:
            continue
    return None


def _pin(array: np.ndarray):
    """Page-lock `array` (cudaHostRegister) so copies from it to the GPU go by DMA at full speed;
    returns the function that unpins it, or None where the CUDA runtime is not there or refuses."""
    cudart = _cudart()
    if cudart is None or array.nbytes == 0:
        return None
    pointer = ctypes.c_void_p(array.ctypes.data)
    if cudart.cudaHostRegister(pointer, ctypes.c_size_t(array.nbytes), ctypes.c_uint(0)) != 0:
        return None
    return lambda: cudart.cudaHostUnregister(pointer)


def device_copy(source, target) -> None:
    """Copy one OrtValue into another of the same size on the same device: `update_inplace` on
    the CPU; on a GPU cudaMemcpy device to device, then a device synchronise, as ONNX Runtime's
    stream is not ordered after it."""
    size = source.tensor_size_in_bytes()
    if size != target.tensor_size_in_bytes():
        raise ValueError(f"cannot copy {size} bytes into a buffer of {target.tensor_size_in_bytes()}")
    if target.device_name().lower() == "cpu":
        target.update_inplace(source.numpy())
        return
    cudart = _cudart()
    if cudart is None:
        raise RuntimeError("no CUDA runtime library to copy on the device with")
    status = cudart.cudaMemcpy(ctypes.c_void_p(target.data_ptr()), ctypes.c_void_p(source.data_ptr()),
                               ctypes.c_size_t(size), ctypes.c_int(3))  # cudaMemcpyDeviceToDevice
    if status != 0 or cudart.cudaDeviceSynchronize() != 0:
        raise RuntimeError(f"cudaMemcpy device to device failed (CUDA error {status})")


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

    def run(self, session, x=None, fill=None, check=None) -> dict[str, np.ndarray]:
        """Run on `x` (a host array, or an OrtValue already on the session's device: copied there
        into the bound input), or on what `fill(host buffer)` writes, passed through `check`."""
        with self.lock:
            if fill is not None:
                if self.host is None:
                    self.host = np.empty(self.shape, self.dtype)
                    self._unpin = _pin(self.host) if self.device == "cuda" else None
                fill(self.host)
                x = check(self.host)
            if isinstance(x, np.ndarray):
                self.input.update_inplace(x)
            else:
                device_copy(x, self.input)
            session.run_with_iobinding(self.binding, self.run_options)
            return dict(zip(self.outputs, self.binding.copy_outputs_to_cpu()))

    def release(self) -> None:
        if self._unpin is not None:
            self._unpin()
            self._unpin = None
