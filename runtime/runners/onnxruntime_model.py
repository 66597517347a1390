"""One ONNX model in an ONNX Runtime session, with its inputs validated before they reach it.

This is the code path the export pipeline verifies artefacts through, so what is tested is
what is deployed. numpy + onnxruntime only.

Providers, by name:
- `cpu`: ONNX Runtime's CPU provider.
- `cuda`: the CUDA provider; inputs and outputs go through IO binding with device buffers,
  allocated once per batch size and reused (`runtime.runners.io_binding.BoundBuffers`), and only the outputs asked for are
  copied back (`run(x, outputs=["pooler_output"])`: an embedding does not pay for copying
  `last_hidden_state`, as large as the input). `cuda_graph=True` adds ONNX Runtime's CUDA
  graphs, one captured graph per batch size (not on by default: not yet measured here).
- `tensorrt`: the TensorRT provider (CUDA for nodes TensorRT does not take), with an engine
  cache keyed by the model's sha256, the GPU and the TensorRT build, and a batch profile.
- `auto`: TensorRT, then CUDA, then CPU (an artefact kind may narrow or reorder this: its
  `providers` in `runtime.contract.kinds`); only providers that really initialise are kept, and
  `OnnxModel.provider` says which one runs.
Asking for `cuda` or `tensorrt` by name on a machine where it cannot run is an error, not a
silent fall back to the CPU.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ArtefactError, InputError, ProviderError, first_line
from ..files import sha256_file
from .environment import (
    CPU,
    CUDA,
    ORT_PROVIDERS,
    TENSORRT,
    TENSORRT_LIBRARIES,
    gpu_name,
    import_onnxruntime,
    nvidia_driver_present,
    tensorrt_libraries_present,
    tensorrt_version,
)
from .io_binding import ORT_DTYPES, BoundBuffers
from .validation import outputs_for, validate_input

PROVIDER_CHOICES = ("auto", "cpu", "cuda", "tensorrt")


@dataclass(frozen=True)
class TensorRTOptions:
    """TensorRT execution provider settings. The batch profile bounds the engine's batch axis."""

    fp16: bool = False
    min_batch: int = 1
    opt_batch: int = 8
    max_batch: int = 64
    cache_dir: str | None = None  # default: ~/.cache/siglip-export/trt
    workspace_bytes: int = 4 << 30

    def __post_init__(self):
        if not 1 <= self.min_batch <= self.opt_batch <= self.max_batch:
            raise InputError(
                f"TensorRT batch profile must satisfy 1 <= min <= opt <= max, got "
                f"{self.min_batch}/{self.opt_batch}/{self.max_batch}"
            )


def tensorrt_cache_dir(model_path: Path, options: TensorRTOptions, device_id: int = 0) -> Path:
    """A cache directory no other model, GPU or TensorRT build can share (engines are not portable)."""
    base = Path(options.cache_dir or Path.home() / ".cache" / "siglip-export" / "trt")
    key = "-".join([sha256_file(model_path)[:16], gpu_name(device_id), tensorrt_version(),
                    "fp16" if options.fp16 else "fp32",
                    f"b{options.min_batch}-{options.opt_batch}-{options.max_batch}"])
    return base / re.sub(r"[^A-Za-z0-9_.-]+", "_", key)


def tensorrt_shapes(inputs, batch: int) -> str:
    """TensorRT's profile shape syntax (ONNX Runtime's provider options, Triton's parameters):
    `name:BxCxHxW` per (name, shape) in `inputs`, comma-separated, with `batch` as the first axis."""
    return ",".join(f"{name}:" + "x".join(str(d) for d in (batch, *shape[1:])) for name, shape in inputs)


def _tensorrt_provider_options(model_path: Path, input_name: str, input_shape: tuple, options: TensorRTOptions,
                               device_id: int) -> dict:
    cache = tensorrt_cache_dir(model_path, options, device_id)
    cache.mkdir(parents=True, exist_ok=True)

    def shape(batch):
        return tensorrt_shapes([(input_name, input_shape)], batch)

    return {
        "device_id": device_id,
        "trt_fp16_enable": options.fp16,
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": str(cache),
        "trt_timing_cache_enable": True,
        "trt_timing_cache_path": str(cache),
        "trt_max_workspace_size": options.workspace_bytes,
        "trt_profile_min_shapes": shape(options.min_batch),
        "trt_profile_opt_shapes": shape(options.opt_batch),
        "trt_profile_max_shapes": shape(options.max_batch),
    }


@contextlib.contextmanager
def _ort_quiet(ort):
    """ORT logs provider libraries that fail to load at error level, on stderr; we report instead."""
    ort.set_default_logger_severity(4)
    try:
        yield
    finally:
        ort.set_default_logger_severity(2)


class OnnxModel:
    """An ONNX file ready to run: `OnnxModel(path).run(array) -> {output name: array}`.

    provider: `cpu` (default), `cuda`, `tensorrt` or `auto` (see the module docstring).
    threads: ONNX Runtime's intra-op thread count (None: one per physical core).
    auto_providers: what `auto` tries, in order, up to `cpu` (an artefact kind's providers,
        `runtime.contract.kinds`; an int8 file with CPU-only kernels says `("cpu",)`).
    io_binding: run through buffers bound once per batch size (`runtime.runners.io_binding.BoundBuffers`); None (default): on a
        GPU provider, where it saves the per-call device allocations; True: on the CPU too.
    cuda_graph: capture and replay a CUDA graph per batch size (CUDA provider only; every node
        must run on CUDA); `cuda_options`: more CUDA provider options (e.g. `sdpa_kernel`).
    Safe to call from several threads at once: ONNX Runtime sessions are, and each bound
    buffer set runs one call at a time.
    """

    BOUND_SETS = 8  # batch sizes (x output selections) whose buffers are kept; the oldest is dropped

    def __init__(self, path: str | os.PathLike, provider: str = "cpu", threads: int | None = None,
                 tensorrt: TensorRTOptions | None = None, device_id: int = 0,
                 auto_providers: tuple[str, ...] = ("tensorrt", "cuda", "cpu"), io_binding: bool | None = None,
                 cuda_graph: bool = False, cuda_options: dict | None = None):
        ort = import_onnxruntime()
        self.path = Path(path)
        if provider not in PROVIDER_CHOICES:
            raise InputError(f"unknown provider {provider!r} (choose from {', '.join(PROVIDER_CHOICES)})")
        if not self.path.is_file():
            raise ArtefactError(f"model file not found: {self.path}")
        if threads is not None and threads < 1:
            raise InputError(f"threads must be >= 1, got {threads}")
        if cuda_graph and provider != "cuda":
            raise InputError(f"cuda_graph needs provider 'cuda' (a fixed device), got {provider!r}")
        self.tensorrt = tensorrt or TensorRTOptions()
        self.device_id = device_id
        self.cuda_graph = cuda_graph
        self._cuda_options = {**(cuda_options or {}), **({"enable_cuda_graph": "1"} if cuda_graph else {})}
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
        options.log_severity_level = 3
        wanted = self._candidates(ort, provider, auto_providers)
        # Shapes are needed for the TensorRT profile before the session exists: read them from
        # a CPU session only when TensorRT is a candidate (it is cheap next to an engine build).
        if TENSORRT in wanted:
            self._read_signature(self._create(ort, options, [CPU]))
        requested = [self._provider_entry(name) for name in wanted]
        with _ort_quiet(ort):  # a provider that fails to start is reported below, in one line
            self.session = self._create(ort, options, requested)
        self._read_signature(self.session)
        active = self.session.get_providers()
        if provider in ("cuda", "tensorrt") and ORT_PROVIDERS[provider] not in active:
            raise ProviderError(
                f"provider {provider!r} did not initialise for {self.path.name} (running: {', '.join(active)}); "
                f"it needs onnxruntime-gpu with CUDA{' and TensorRT' if provider == 'tensorrt' else ''} "
                f"libraries and an NVIDIA GPU. Use --provider cpu or auto."
            )
        self.provider = active[0]
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)
        config = json.loads(self.metadata.get("siglip.config", "{}"))
        self.vocab_size = config.get("vocab_size")
        self._ort = ort
        on_gpu = self.provider in (CUDA, TENSORRT)
        self._device = "cuda" if on_gpu else "cpu"
        self.io_binding = on_gpu if io_binding is None else bool(io_binding)
        self._bound: OrderedDict[tuple, BoundBuffers] = OrderedDict()
        self._bound_lock = threading.Lock()
        self._graph_ids = itertools.count(1)  # 0 is ORT's default id: every bound set gets its own

    def _candidates(self, ort, provider: str, auto_providers: tuple[str, ...]) -> list[str]:
        available = ort.get_available_providers()
        if provider == "cpu":
            return [CPU]
        if provider == "auto":
            # Without an NVIDIA driver the GPU providers cannot start: skip them rather than
            # hashing the model for a TensorRT cache and letting ORT fail to load CUDA. What
            # follows the CPU provider would never get a node, so the list stops there.
            order = list(auto_providers[:auto_providers.index("cpu")] if "cpu" in auto_providers else auto_providers)
            gpu = [ORT_PROVIDERS[p] for p in order if ORT_PROVIDERS[p] in available] if nvidia_driver_present() else []
            if TENSORRT in gpu and not tensorrt_libraries_present():
                gpu.remove(TENSORRT)
            return gpu + [CPU]
        if ORT_PROVIDERS[provider] not in available:
            raise ProviderError(
                f"provider {provider!r} is not in this onnxruntime build (available: {', '.join(available)}); "
                f"install onnxruntime-gpu"
            )
        if not nvidia_driver_present():  # fail here, before ORT logs its own library errors
            raise ProviderError(f"provider {provider!r} needs an NVIDIA GPU, and this machine has no NVIDIA driver; "
                                f"use --provider cpu or auto")
        if provider == "tensorrt" and not tensorrt_libraries_present():
            raise ProviderError(f"provider 'tensorrt' needs TensorRT's libraries ({TENSORRT_LIBRARIES[0]}), which are not "
                                f"installed (pip install tensorrt, or put them on the library path); use --provider "
                                f"cuda or auto")
        return [TENSORRT, CUDA, CPU] if provider == "tensorrt" else [CUDA, CPU]

    def _provider_entry(self, name: str):
        if name == TENSORRT:
            return (name, _tensorrt_provider_options(self.path, self.input_name, self.input_shape, self.tensorrt,
                                                     self.device_id))
        if name == CUDA:
            return (name, {"device_id": self.device_id, **self._cuda_options})
        return name

    def _create(self, ort, options, providers):
        try:
            return ort.InferenceSession(str(self.path), options, providers=providers)
        except Exception as exc:  # ORT raises several types for unreadable, truncated or incomplete models
            raise ArtefactError(f"cannot load {self.path}: {first_line(exc)}") from None

    def _read_signature(self, session) -> None:
        inputs = session.get_inputs()
        if len(inputs) != 1:
            raise ArtefactError(f"{self.path}: expected one input, found {[i.name for i in inputs]}")
        self.input_name = inputs[0].name
        self.input_shape = tuple(inputs[0].shape)  # symbolic axes are strings
        if inputs[0].type not in ORT_DTYPES:
            raise ArtefactError(f"{self.path}: unsupported input type {inputs[0].type}")
        self.input_dtype = np.dtype(ORT_DTYPES[inputs[0].type])
        self.output_names = [o.name for o in session.get_outputs()]

    def describe(self) -> str:
        """What runs and how, for messages: the provider, and on a GPU the IO path chosen."""
        if not self.io_binding:
            return self.provider
        pinned = any(b.pinned for b in list(self._bound.values()))
        return (f"{self.provider}, buffers bound per batch size{', page-locked input' if pinned else ''}, "
                f"CUDA graphs {'on' if self.cuda_graph else 'off'}")

    @property
    def providers(self) -> list[str]:
        """The providers the session really runs on, in priority order."""
        return self.session.get_providers()

    @property
    def max_batch(self) -> int | None:
        """The largest batch the session takes (the TensorRT profile's maximum), None when unbounded."""
        return self.tensorrt.max_batch if self.provider == TENSORRT else None

    def validate(self, x) -> np.ndarray:
        """Raise InputError naming the offending value unless `x` fits this model's input."""
        return validate_input(x, name=self.input_name, shape=self.input_shape, dtype=self.input_dtype,
                              max_batch=self.max_batch, vocab_size=self.vocab_size)

    def run(self, x: np.ndarray, outputs=None) -> dict[str, np.ndarray]:
        """Validate `x` and run the model: {output name: array}, for `outputs` (default: all)."""
        x = self.validate(x)
        names = outputs_for(self.path, self.output_names, outputs)
        if self.io_binding:
            return self._bound_set(x.shape[0], names).run(x)
        return dict(zip(names, self.session.run(list(names), {self.input_name: x})))

    def run_filled(self, batch: int, fill, outputs=None) -> dict[str, np.ndarray]:
        """Run on an input of `batch` rows that `fill(buffer)` writes into a host buffer of this
        model's input shape and dtype: with bound buffers that is the batch size's own buffer,
        page-locked on a GPU, so preprocessing writes straight where the copy to the device
        starts (no second host copy, DMA at full speed). Otherwise a fresh array, then `run`."""
        names = outputs_for(self.path, self.output_names, outputs)
        if not self.io_binding:
            x = np.empty((batch, *self.input_shape[1:]), self.input_dtype)
            fill(x)
            return self.run(x, names)
        return self._bound_set(batch, names).run(fill=fill, check=self.validate)

    def _bound_set(self, batch: int, names: tuple[str, ...]) -> BoundBuffers:
        key = (batch, names)
        with self._bound_lock:
            bound = self._bound.get(key)
            if bound is None:
                graph = next(self._graph_ids) if self.cuda_graph else None
                bound = self._bound[key] = BoundBuffers(self.session, self._ort, batch, names, graph, self._device,
                                                        self.device_id)
                while len(self._bound) > self.BOUND_SETS:
                    _, dropped = self._bound.popitem(last=False)
                    with dropped.lock:  # a run still using it finishes first
                        dropped.release()
                    if dropped.graph_id is not None and hasattr(self.session, "release_captured_graph"):  # ORT >= 1.31
                        self.session.release_captured_graph(dropped.graph_id)
            self._bound.move_to_end(key)
        return bound
