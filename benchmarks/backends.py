"""The backends the benchmark compares, each loaded inside its own worker process.

A runner loads one model once and hands out, per batch size, a function
`run(pixel_values float32 (B, C, H, W)) -> pooler_output float32 (B, D)` that does the whole
host-to-host call a user makes (GPU runners copy the input to the device and the output back,
as `runtime.runners.onnxruntime_model.OnnxModel` does with IO binding), so every backend is timed the same way.
Two GPU modes: host-to-host (above; what a client pays) and device-resident (`-resident`
backends: `Runner.stage` puts the inputs on the GPU before the timing, and a call runs the model
and copies back `pooler_output` alone, B x D floats).

Imports of torch, onnxruntime, openvino and tensorrt happen inside the loaders: an ONNX Runtime
worker never imports torch, so its peak RSS is what a torch-free deploy host pays.
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from runtime.contract.kinds import ENGINE, ONNX, OPENVINO
from runtime.contract.manifest import ArtefactRecord


class SkipBatch(Exception):
    """This batch size cannot run on this backend (the message says why); others may."""


def floor_key(precision: str, device: str) -> str:
    """The floor a row is compared against: 'fp32', 'int8', 'fp16', 'bf16', or 'cuda-<precision>'."""
    p = precision.lower()
    base = next((k for k in ("int8", "fp16", "bf16") if k in p), "fp32")
    return f"cuda-{base}" if device == "cuda" else base


def _nvidia_smi_process_mb(pid: int) -> float | None:
    """GPU memory a process holds, from nvidia-smi (ONNX Runtime's and TensorRT's allocators keep
    what they reached, so after the runs this is the peak). None where nvidia-smi cannot tell."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    for line in out.splitlines():
        fields = [f.strip() for f in line.split(",")]
        if len(fields) == 2 and fields[0] == str(pid) and fields[1].isdigit():
            return float(fields[1])
    return None


class Runner:
    precision: str = "fp32"
    device: str = "cpu"
    provider: str = ""
    input_dtype = np.dtype(np.float32)
    notes: list[str]

    def for_batch(self, batch: int) -> Callable[[np.ndarray], np.ndarray]:
        raise NotImplementedError

    def stage(self, inputs: list[np.ndarray]) -> list:
        """What `run` is given: the host arrays (host-to-host), or copies already on the device."""
        return inputs

    def peak_device_mb(self) -> float | None:
        return None


# --- torch ------------------------------------------------------------------------------------

def load_vision_tower(vision_config: dict, weights: str | None):
    """The reference image tower in eval mode: the weights the prepare step saved (the artefacts'
    own), else seeded random weights (fine for latency; accuracy is then not comparable)."""
    import torch

    from siglip_export.model.config import SiglipVisionConfig
    from siglip_export.model.modeling_siglip import SiglipVisionTransformer

    config = SiglipVisionConfig.from_dict(vision_config)
    if weights:
        from safetensors.torch import load_file

        with torch.device("meta"):  # no random init for weights that are replaced at once
            model = SiglipVisionTransformer(config)
        model.load_state_dict(load_file(weights), strict=True, assign=True)
    else:
        torch.manual_seed(0)
        from siglip_export.model.modeling_siglip import SiglipVisionModel

        model = SiglipVisionModel(config).vision_model
    return model.eval()


class TorchRunner(Runner):
    def __init__(self, job: dict, backend: str):
        import torch

        spec = BACKENDS[backend]
        self.torch = torch
        self.device = spec.device
        self.precision = spec.precision
        self.resident = spec.resident
        self.notes = []
        if self.device == "cuda":
            if not torch.cuda.is_available():
                raise RuntimeError(f"torch.cuda.is_available() is False (torch {torch.__version__}, "
                                   f"CUDA build {torch.version.cuda})")
            # fp32 means fp32: TF32 would change the numbers and the floor it is compared with.
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False
            self.provider = f"torch {torch.__version__} CUDA {torch.version.cuda} ({torch.cuda.get_device_name()})"
        else:
            torch.set_num_threads(job["threads"])
            self.provider = f"torch {torch.__version__} CPU, {torch.get_num_threads()} threads"
        self.model = load_vision_tower(job["vision_config"], job.get("weights")).to(self.device)
        if not job.get("weights"):
            self.notes.append("random weights (not the artefacts'): latency only")
        self.dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[self.precision]
        self.cast_weights = spec.cast_weights  # .half(): weights and math in fp16, no autocast
        if self.cast_weights:
            self.model = self.model.to(self.dtype)
        self.forward = self.model
        if spec.compiled:  # compiled per input shape on the first (warm-up) call of each batch size
            self.forward = torch.compile(self.model, dynamic=False)
            self.provider += ", torch.compile"

    def stage(self, inputs):
        if not self.resident:
            return inputs
        staged = [self._to_device(x) for x in inputs]
        if self.device == "cuda":
            self.torch.cuda.synchronize()
        return staged

    def _to_device(self, x):
        tensor = self.torch.from_numpy(x).to(self.device)
        return tensor.to(self.dtype) if self.cast_weights else tensor

    def for_batch(self, batch: int):
        torch, forward, device, dtype = self.torch, self.forward, self.device, self.dtype
        autocast = dtype is not None and not self.cast_weights
        resident = self.resident

        def run(x) -> np.ndarray:
            cast = torch.autocast(device, dtype=dtype) if autocast else contextlib.nullcontext()
            with torch.no_grad(), cast:
                pooled = forward(x if resident else self._to_device(x))[1]
            return pooled.float().cpu().numpy()  # .cpu() waits for the GPU

        return run

    def peak_device_mb(self):
        if self.device != "cuda":
            return None
        return self.torch.cuda.max_memory_allocated() / 2**20


# --- ONNX Runtime -----------------------------------------------------------------------------

class OrtRunner(Runner):
    def __init__(self, job: dict, backend: str):
        from runtime.runners.onnxruntime_model import OnnxModel, TensorRTOptions

        spec = BACKENDS[backend]
        self.notes = []
        provider = spec.provider
        self.device = spec.device
        self.resident = spec.resident
        self.precision = spec.precision or job.get("precision") or "fp32"
        self.bound_resident = spec.bound_resident
        options = None
        if provider == "tensorrt":
            top = max(job["batch_sizes"])
            options = TensorRTOptions(fp16=self.precision == "fp16", min_batch=1, opt_batch=min(8, top), max_batch=top)
        cuda_options = job.get("cuda_options") or {}
        self.model = OnnxModel(job["path"], provider=provider, threads=job["threads"], tensorrt=options,
                               cuda_graph=spec.cuda_graph, cuda_options=cuda_options)
        self.provider = self.model.provider + (" (CUDA graphs)" if spec.cuda_graph else "") + "".join(
            f", {k}={v}" for k, v in cuda_options.items() if provider == "cuda")
        self.input_dtype = self.model.input_dtype
        if "pooler_output" not in self.model.output_names:
            raise RuntimeError(f"{Path(job['path']).name} has no pooler_output (outputs: {self.model.output_names})")

    def stage(self, inputs):
        if not self.resident:
            return inputs
        ort, model = self.model._ort, self.model
        return [ort.OrtValue.ortvalue_from_numpy(x, model._device, model.device_id) for x in inputs]

    def for_batch(self, batch: int):
        model = self.model
        if not self.resident:
            def run(x: np.ndarray) -> np.ndarray:
                return model.run(x, outputs=("pooler_output",))["pooler_output"]

            return run
        if model.cuda_graph or self.bound_resident:
            return self._graph_resident(batch)
        binding = model.session.io_binding()  # the input already on the device, pooler_output alone back

        def run_resident(x) -> np.ndarray:
            binding.bind_ortvalue_input(model.input_name, x)
            binding.bind_output("pooler_output", model._device, model.device_id)
            model.session.run_with_iobinding(binding)
            return binding.copy_outputs_to_cpu()[0]

        return run_resident

    def _graph_resident(self, batch: int):
        """Device-resident with a CUDA graph: the graph reads fixed addresses, so each call first
        copies the staged input, on the device, into the batch size's bound input buffer."""
        bound = self.model._bound_set(batch, ("pooler_output",))
        return lambda x: bound.run(x)["pooler_output"]

    def peak_device_mb(self):
        import os

        return _nvidia_smi_process_mb(os.getpid()) if self.device == "cuda" else None


# --- OpenVINO ---------------------------------------------------------------------------------

_OV_PRECISIONS = {"f32": "fp32", "bf16": "bf16", "f16": "fp16"}


class OpenVinoRunner(Runner):
    """OpenVINO on the CPU, compiled per batch size with a static shape (OpenVINO's advice for
    CPU latency), the LATENCY hint and the benchmark's thread count."""

    def __init__(self, job: dict, backend: str):
        import openvino as ov

        self.ov = ov
        self.core = ov.Core()
        self.model = self.core.read_model(job["path"])
        self.input = self.model.inputs[0]
        self.shape = list(job["input_shape"])  # (C, H, W)
        self.artefact_precision = job.get("artefact_precision")
        self.config = {"INFERENCE_NUM_THREADS": job["threads"], "PERFORMANCE_HINT": "LATENCY"}
        fixed = BACKENDS[backend].precision == "fp32"
        if fixed:
            self.config["INFERENCE_PRECISION_HINT"] = "f32"
        self.compiled = None
        self.provider = f"OpenVINO {ov.__version__} CPU ({self.core.get_property('CPU', 'FULL_DEVICE_NAME')})"
        self.notes = []
        # The precision it really uses is the compiled model's, known after the first compile.
        self.precision = "fp32" if fixed else None
        self._compile(1)

    def _compile(self, batch: int):
        self.compiled = None  # release the previous batch size's compiled model first
        self.model.reshape({self.input.get_any_name(): self.ov.PartialShape([batch, *self.shape])})
        self.compiled = self.core.compile_model(self.model, "CPU", self.config)
        hint = self.compiled.get_property("INFERENCE_PRECISION_HINT")
        name = hint.get_type_name() if hasattr(hint, "get_type_name") else str(hint)
        self.precision = _OV_PRECISIONS.get(name, name)
        if self.artefact_precision == "int8":  # an NNCF IR: int8 products, the hint names only the float parts
            self.precision = "int8"
        self.output = self.compiled.output("pooler_output")

    def for_batch(self, batch: int):
        self._compile(batch)
        request = self.compiled.create_infer_request()
        output = self.output

        def run(x: np.ndarray) -> np.ndarray:
            return np.asarray(request.infer({0: x})[output])

        return run


# --- native TensorRT ------------------------------------------------------------------------

class TensorRTRunner(Runner):
    def __init__(self, job: dict, backend: str):
        from runtime.runners.tensorrt_engine import TensorRTEngine

        self.engine = TensorRTEngine(job["path"])
        self.device = "cuda"
        self.precision = job.get("precision") or "fp16"
        self.provider = self.engine.provider
        self.input_dtype = self.engine.input_dtype
        self.notes = []

    def for_batch(self, batch: int):
        if batch > self.engine.max_batch:
            raise SkipBatch(f"batch {batch} exceeds the engine profile's maximum {self.engine.max_batch}")
        engine = self.engine

        def run(x: np.ndarray) -> np.ndarray:
            return engine.run(x)["pooler_output"]

        return run

    def peak_device_mb(self):
        import os

        return _nvidia_smi_process_mb(os.getpid())


# --- the table ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Backend:
    """One way to run the image tower. Which artefacts it runs follows from their manifest
    records (format, variant) and their kinds (runtime.contract), never from file names.

    formats: artefact formats it runs; empty: the reference model itself (no artefact).
    plain_only: of those formats, the ones where only the plain export runs.
    provider: the runtime provider it asks for; a kind that does not run there is skipped.
    precision: fixed by the backend (autocast, a precision hint); None: the artefact's.
    needs: Python modules it imports (missing: skipped with the reason).
    """

    name: str
    device: str  # "cpu" | "cuda"
    runner: type[Runner]
    description: str
    formats: tuple[str, ...] = ()
    plain_only: tuple[str, ...] = ()
    provider: str | None = None
    precision: str | None = None
    needs: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()
    resident: bool = False  # device-resident timing: inputs staged on the GPU first (module docstring)
    cast_weights: bool = False  # torch: model.half() instead of autocast
    compiled: bool = False  # torch: torch.compile
    cuda_graph: bool = False  # ONNX Runtime: CUDA graphs (runtime.runners.onnxruntime_model.OnnxModel(cuda_graph=True))
    bound_resident: bool = False  # ONNX Runtime, resident: copy into the bound buffer as CUDA graphs must (tests)

    def runs(self, record: ArtefactRecord) -> bool:
        return record.format in self.formats and (record.format not in self.plain_only or record.variant is None)


_TABLE = (
    Backend("torch-eager", "cpu", TorchRunner, "siglip_export reference model, eval, no_grad, SDPA attention, fp32",
            precision="fp32", needs=("torch",), groups=("torch",)),
    Backend("torch-eager-bf16", "cpu", TorchRunner, "same model under torch.autocast('cpu', dtype=torch.bfloat16)",
            precision="bf16", needs=("torch",), groups=("torch",)),
    Backend("ort-cpu", "cpu", OrtRunner, "runtime.runners.onnxruntime_model.OnnxModel, CPU provider", formats=(ONNX,), provider="cpu"),
    Backend("openvino-fp32", "cpu", OpenVinoRunner,
            "OpenVINO CPU, INFERENCE_PRECISION_HINT f32, LATENCY hint, static batch",
            formats=(ONNX,), plain_only=(ONNX,), precision="fp32", needs=("openvino",), groups=("openvino",)),
    Backend("openvino-default", "cpu", OpenVinoRunner,
            "OpenVINO CPU with its default precision (bf16 on AMX / AVX512-BF16 CPUs), LATENCY hint",
            formats=(ONNX, OPENVINO), plain_only=(ONNX,), precision="default", needs=("openvino",),
            groups=("openvino",)),
    Backend("torch-cuda", "cuda", TorchRunner, "reference model on CUDA, fp32 (TF32 off), host-to-host",
            precision="fp32", needs=("torch",), groups=("torch",)),
    Backend("torch-cuda-fp16", "cuda", TorchRunner, "reference model on CUDA under autocast float16, host-to-host",
            precision="fp16", needs=("torch",), groups=("torch",)),
    Backend("torch-cuda-bf16", "cuda", TorchRunner, "reference model on CUDA under autocast bfloat16, host-to-host",
            precision="bf16", needs=("torch",), groups=("torch",)),
    Backend("torch-cuda-half", "cuda", TorchRunner, "reference model .half() on CUDA (fp16 weights, eager), host-to-host",
            precision="fp16", cast_weights=True, needs=("torch",), groups=("torch",)),
    Backend("torch-cuda-half-resident", "cuda", TorchRunner, "reference model .half() on CUDA, eager, device-resident",
            precision="fp16", cast_weights=True, resident=True, needs=("torch",), groups=("torch",)),
    Backend("torch-compile-half", "cuda", TorchRunner, "torch.compile of the .half() reference model, host-to-host",
            precision="fp16", cast_weights=True, compiled=True, needs=("torch",), groups=("torch",)),
    Backend("torch-compile-half-resident", "cuda", TorchRunner,
            "torch.compile of the .half() reference model, device-resident",
            precision="fp16", cast_weights=True, compiled=True, resident=True, needs=("torch",), groups=("torch",)),
    Backend("ort-cuda", "cuda", OrtRunner, "runtime.runners.onnxruntime_model.OnnxModel, CUDA provider, bound buffers, pooler_output "
            "alone copied back; host-to-host", formats=(ONNX,), provider="cuda"),
    Backend("ort-cuda-graph", "cuda", OrtRunner, "as ort-cuda with CUDA graphs (one per batch size), host-to-host",
            formats=(ONNX,), provider="cuda", cuda_graph=True),
    Backend("ort-cuda-resident", "cuda", OrtRunner, "ONNX Runtime CUDA provider, input already on the GPU "
            "(IO binding), device-resident", formats=(ONNX,), provider="cuda", resident=True),
    Backend("ort-cuda-graph-resident", "cuda", OrtRunner, "as ort-cuda-resident with CUDA graphs (the staged input "
            "copied on the GPU into the graph's fixed buffer), device-resident", formats=(ONNX,), provider="cuda",
            resident=True, cuda_graph=True),
    Backend("ort-tensorrt", "cuda", OrtRunner,
            "runtime.runners.onnxruntime_model.OnnxModel, TensorRT provider (TensorRT's default TF32 for fp32)",
            formats=(ONNX,), plain_only=(ONNX,), provider="tensorrt", precision="fp32"),
    Backend("ort-tensorrt-fp16", "cuda", OrtRunner, "runtime.runners.onnxruntime_model.OnnxModel, TensorRT provider with trt_fp16_enable",
            formats=(ONNX,), plain_only=(ONNX,), provider="tensorrt", precision="fp16"),
    Backend("tensorrt", "cuda", TensorRTRunner, "runtime.runners.tensorrt_engine.TensorRTEngine on a serialized engine",
            formats=(ENGINE,), provider="tensorrt", needs=("tensorrt",)),
)
BACKENDS: dict[str, Backend] = {b.name: b for b in _TABLE}
GROUPS: dict[str, tuple[str, ...]] = {
    "all": tuple(BACKENDS),
    "cpu": tuple(b.name for b in _TABLE if b.device == "cpu"),
    "gpu": tuple(b.name for b in _TABLE if b.device == "cuda"),
    **{g: tuple(b.name for b in _TABLE if g in b.groups) for g in ("openvino", "torch")},
}


def load_runner(job: dict) -> Runner:
    backend = BACKENDS.get(job["backend"])
    if backend is None:
        raise ValueError(f"unknown backend {job['backend']!r}")
    return backend.runner(job, backend.name)
