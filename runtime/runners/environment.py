"""What this machine can run, probed without loading a model: ONNX Runtime (and whether both of
its wheels are installed), an NVIDIA driver, TensorRT's library, the GPU's name, and the CPU
(model, the instruction sets the int8 and bf16 kernels depend on, cores).

Also the names the runtime gives ONNX Runtime's providers. numpy-free, standard library only
(onnxruntime and tensorrt are imported by the probes that need them).
"""

from __future__ import annotations

import functools
import os
import platform
import shutil
import subprocess
import warnings
from pathlib import Path

from ..errors import ArtefactError

CPU, CUDA, TENSORRT = "CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"
ORT_PROVIDERS = {"cpu": CPU, "cuda": CUDA, "tensorrt": TENSORRT}  # runtime's provider names -> ONNX Runtime's


def import_onnxruntime():
    try:
        import onnxruntime
    except ImportError as exc:  # a broken install, reported plainly
        raise ArtefactError(f"onnxruntime is not importable ({exc}); install onnxruntime or onnxruntime-gpu") from None
    _warn_if_both_wheels()
    return onnxruntime


@functools.lru_cache(maxsize=1)
def _warn_if_both_wheels() -> None:
    """onnxruntime and onnxruntime-gpu overwrite each other's files: say so once if both are installed."""
    from importlib import metadata

    installed = []
    for dist in ("onnxruntime", "onnxruntime-gpu"):
        try:
            installed.append(f"{dist} {metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            pass
    if len(installed) == 2:
        warnings.warn(f"both {installed[0]} and {installed[1]} are installed and overwrite each other's files; "
                      f"run: pip uninstall -y onnxruntime onnxruntime-gpu, then install one of them", stacklevel=3)


def nvidia_driver_present() -> bool:
    return Path("/proc/driver/nvidia/version").exists() or shutil.which("nvidia-smi") is not None


def cuda_provider_here() -> bool:
    """Whether this machine runs ONNX Runtime's CUDA provider (an NVIDIA driver and onnxruntime-gpu):
    what `auto` means a GPU, for the export's --target and the runtime's default alike."""
    return nvidia_driver_present() and CUDA in import_onnxruntime().get_available_providers()


TENSORRT_LIBRARIES = ("libnvinfer.so.10", "nvinfer_10.dll")  # what ORT's TensorRT provider loads


def tensorrt_libraries_present() -> bool:
    """Whether TensorRT's runtime library loads: from the library path, or from the `tensorrt_libs`
    wheel (loading it by path makes ORT's later load by name find it). onnxruntime-gpu lists
    its TensorRT provider whether or not TensorRT is installed, and asking for the provider
    without it prints a page of "EP Error" before ORT falls back."""
    import ctypes

    candidates = list(TENSORRT_LIBRARIES)
    try:
        import tensorrt_libs  # the tensorrt wheel's libraries

        folder = Path(tensorrt_libs.__file__).parent
        candidates += [str(p) for p in sorted(folder.glob("libnvinfer.so.*")) + sorted(folder.glob("nvinfer_*.dll"))]
    except ImportError:
        pass
    for name in candidates:
        try:
            ctypes.CDLL(name)
            return True
        except OSError:
            continue
    return False


def gpu_name(device_id: int = 0) -> str:
    """The GPU's marketing name from nvidia-smi, or 'unknown-gpu'."""
    try:
        out = subprocess.run(["nvidia-smi", f"--id={device_id}", "--query-gpu=name", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown-gpu"
    return out or "unknown-gpu"


def tensorrt_version() -> str:
    """The TensorRT Python package's version, else the ONNX Runtime build that bundles TensorRT."""
    try:
        import tensorrt

        return f"trt{tensorrt.__version__}"
    except ImportError:
        return f"ort{import_onnxruntime().__version__}"


# The CPU features the CPU kernels choose by: AVX2 int8 (u8 x s8 products saturate in 16 bits),
# VNNI int8 (AVX-512 or AVX's), bf16 (AVX-512 or AMX), AMX tiles.
ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_int8")


@functools.lru_cache(maxsize=1)
def _cpuinfo() -> tuple[str, frozenset[str]]:
    model, flags = platform.processor() or platform.machine(), frozenset()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and value.strip():
                model = value.strip()
            elif key.strip() == "flags":
                flags = frozenset(value.split())
    except OSError:
        pass
    return model, flags


def usable_cores() -> int:
    """The cores this process may run on (its affinity)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def cpu_identity() -> dict:
    """{"cpu": model name, "isa": [the ISA_FLAGS it has], "cores": usable cores}: what a speed
    measured on this CPU depends on (the manifest records it with a race's results)."""
    model, flags = _cpuinfo()
    return {"cpu": model, "isa": [f for f in ISA_FLAGS if f in flags], "cores": usable_cores()}


def has_int8_dot_product() -> bool:
    """Whether the CPU multiplies int8 with VNNI (AVX-512 or AVX), where u8 x s8 products do not
    saturate; without it ONNX Runtime's int8 kernels need weights quantised to 7 bits."""
    flags = _cpuinfo()[1]
    return bool({"avx512_vnni", "avx_vnni", "amx_int8"} & flags) or platform.machine().lower() in ("arm64", "aarch64")


__all__ = ["CPU", "CUDA", "ISA_FLAGS", "ORT_PROVIDERS", "TENSORRT", "TENSORRT_LIBRARIES", "cpu_identity",
           "cuda_provider_here", "gpu_name", "has_int8_dot_product", "import_onnxruntime", "nvidia_driver_present",
           "tensorrt_libraries_present", "tensorrt_version", "usable_cores"]
