"""Buffers an ONNX Runtime session reads and writes in place, one set per batch size: IO binding
with fixed addresses (what CUDA graph replay needs), the outputs asked for copied back, and a host
input buffer page-locked for the GPU's DMA. Written over an `onnxruntime.InferenceSession` alone:
`runtime.runners.onnxruntime_model.OnnxModel` keeps one set per batch size.
numpy + onnxruntime (through the session) + ctypes only."""

from __future__ import annotations

import ctypes
import functools
import threading

import numpy as np

# ONNX Runtime's type strings -> numpy dtypes, for the inputs and outputs this project's models have.
ORT_DTYPES = {"tensor(float)": np.float32, "tensor(int64)": np.int64, "tensor(float16)": np.float16,
              "tensor(int32)": np.int32, "tensor(uint8)": np.uint8}


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

    def __init__(self, session, ort, batch: int, outputs: tuple[str, ...], graph_id: int | None, device: str = "cpu",
                 device_id: int = 0):
        """`session`: the InferenceSession; `ort`: the onnxruntime module; `device`: "cpu" or "cuda"."""
        source = session.get_inputs()[0]
        self.lock = threading.Lock()
        self.shape = (batch, *source.shape[1:])
        self.dtype = np.dtype(ORT_DTYPES[source.type])
        self.device = device
        self.session = session
        self.input = ort.OrtValue.ortvalue_from_shape_and_type(self.shape, self.dtype, device, device_id)
        self.binding = session.io_binding()
        self.binding.bind_ortvalue_input(source.name, self.input)
        declared = {o.name: o for o in session.get_outputs()}
        for name in outputs:
            shape = (batch, *declared[name].shape[1:])
            if not all(isinstance(d, int) and d > 0 for d in shape):  # an axis other than the batch is not fixed:
                self.binding.bind_output(name, device, device_id)   # ORT allocates it per run
            else:
                dtype = np.dtype(ORT_DTYPES.get(declared[name].type, np.float32))
                self.binding.bind_ortvalue_output(name, ort.OrtValue.ortvalue_from_shape_and_type(shape, dtype, device,
                                                                                                  device_id))
        self.outputs = outputs
        self.graph_id = graph_id
        self.run_options = None
        if graph_id is not None:
            self.run_options = ort.RunOptions()
            self.run_options.add_run_config_entry("gpu_graph_id", str(graph_id))
        self.host: np.ndarray | None = None  # made on the first run with `fill`
        self._unpin = None

    @property
    def pinned(self) -> bool:
        return self._unpin is not None

    def run(self, x=None, fill=None, check=None) -> dict[str, np.ndarray]:
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
            self.session.run_with_iobinding(self.binding, self.run_options)
            return dict(zip(self.outputs, self.binding.copy_outputs_to_cpu()))

    def release(self) -> None:
        if self._unpin is not None:
            self._unpin()
            self._unpin = None
