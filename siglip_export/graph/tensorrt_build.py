"""ONNX -> TensorRT engine with TensorRT's Python API (optional: `pip install -e ".[tensorrt]"`).

The network is strongly typed: TensorRT 10 offers it as a flag and TensorRT 11 makes it the only
mode (the fp16 builder flag is gone), so precision comes from the graph itself. The engine is
built from the `fp16` variant, whose LayerNorm and Softmax are fp32 in the graph, and TensorRT
keeps them so. An optimisation profile bounds the batch axis; a timing cache file makes
rebuilds fast. Beside the engine, `<engine>.json` records what it is bound to (TensorRT
version, GPU name and compute capability, the source model's sha256, the profile), and
`runtime.runners.tensorrt_engine` refuses it on any other GPU or TensorRT version.
"""

from __future__ import annotations

import json
from pathlib import Path

from runtime.errors import ProviderError
from runtime.files import sha256_file
from runtime.runners.environment import nvidia_driver_present
from runtime.runners.tensorrt_engine import device_identity, load_cudart, metadata_path

from .build_errors import VariantFailed, VariantSkipped


def tensorrt_available() -> str | None:
    """None when an engine can be built here, else the reason it cannot."""
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return "tensorrt is not installed (pip install -e '.[tensorrt]' on a machine with an NVIDIA GPU)"
    try:
        load_cudart()
    except ProviderError:
        return "cuda-python is not installed (pip install -e '.[tensorrt]')"
    if not nvidia_driver_present():
        return "no NVIDIA GPU / driver on this machine"
    return None


def build_engine(onnx_path: Path, engine_path: Path, profile: tuple[int, int, int], timing_cache: Path,
                 input_name: str, precision: str = "fp16", workspace_bytes: int = 4 << 30) -> dict:
    """Build and write `engine_path` (+ its metadata file); returns the metadata."""
    reason = tensorrt_available()
    if reason:
        raise VariantSkipped(reason)
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    strongly_typed = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    if strongly_typed is not None:  # TensorRT 10; TensorRT 11 networks are strongly typed anyway
        flags |= 1 << int(strongly_typed)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise VariantFailed(f"TensorRT could not parse {onnx_path.name}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    shape = tuple(network.get_input(0).shape)
    opt_profile = builder.create_optimization_profile()
    opt_profile.set_shape(input_name, *[(b, *shape[1:]) for b in profile])
    config.add_optimization_profile(opt_profile)
    cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise VariantFailed(f"TensorRT failed to build an engine from {onnx_path.name}")
    engine_path.write_bytes(bytes(serialized))  # inside the pipeline's scratch directory
    timing_cache.write_bytes(bytes(config.get_timing_cache().serialize()))
    gpu, capability = device_identity(0)
    meta = {
        "tensorrt_version": trt.__version__,
        "gpu_name": gpu,
        "compute_capability": capability,
        "model_sha256": sha256_file(onnx_path),
        "source_model": onnx_path.name,
        "precision": precision,
        "profile": {"min": profile[0], "opt": profile[1], "max": profile[2]},
        "strongly_typed": strongly_typed is not None or int(trt.__version__.split(".")[0]) >= 11,
    }
    metadata_path(engine_path).write_text(json.dumps(meta, indent=2) + "\n")
    return meta
