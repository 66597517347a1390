"""The physical floor: the model's FLOPs divided by the machine's GEMM rate, measured now.

The rate is measured on GEMMs with the model's own shapes at each batch size: one encoder
layer's linear work, `x [batch*patches, hidden]` through the four hidden x hidden projections,
then hidden x intermediate and intermediate x hidden (the MLP), as a chain of matrix products
with constant weights, like the model's. Best sustained rate: the best of a few timing windows,
each averaged over at least `window_s` seconds.

Which engine measures which precision (the floor is the rate of the GEMM a backend of that
precision would call; a backend can beat it with a better GEMM, which x_floor < 1 shows):
- fp32: ONNX Runtime's own MatMul (CPU provider, same thread count as the benchmark);
- int8: ONNX Runtime's QLinearMatMul (uint8 activations x int8 weights, requantised to uint8);
- fp16: ONNX Runtime's MatMul in float16 (fails where the CPU provider has no fp16 kernel);
- bf16: torch.mm in bfloat16 (oneDNN; AMX / AVX512-BF16 where the CPU has them);
- cuda-fp32 / cuda-fp16 / cuda-bf16: torch.mm on the GPU (fp32 with TF32 off).
"""

from __future__ import annotations

import time

import numpy as np

CUDA_PRECISIONS = ("cuda-fp32", "cuda-fp16", "cuda-bf16")
METHODS = {
    "fp32": "onnxruntime CPU MatMul (float32)",
    "int8": "onnxruntime CPU QLinearMatMul (uint8 x int8)",
    "fp16": "onnxruntime CPU MatMul (float16)",
    "bf16": "torch.mm bfloat16 (CPU)",
    "cuda-fp32": "torch.mm float32 on CUDA (TF32 off)",
    "cuda-fp16": "torch.mm float16 on CUDA",
    "cuda-bf16": "torch.mm bfloat16 on CUDA",
}


def layer_dims(hidden: int, intermediate: int) -> list[tuple[int, int]]:
    """(K, N) of one encoder layer's weight GEMMs, in chain order (each N is the next K)."""
    return [(hidden, hidden)] * 4 + [(hidden, intermediate), (intermediate, hidden)]


def chain_flops(rows: int, dims: list[tuple[int, int]]) -> int:
    return sum(2 * rows * k * n for k, n in dims)


def best_rate(step, flops: int, windows: int = 3, window_s: float = 0.1, warmup: int = 2) -> float:
    """Best sustained FLOP/s of `step()` (which does `flops` FLOPs): best of `windows` windows."""
    for _ in range(warmup):
        step()
    best = 0.0
    for _ in range(windows):
        runs, start = 0, time.perf_counter()
        while True:
            step()
            runs += 1
            elapsed = time.perf_counter() - start
            if elapsed >= window_s:
                break
        best = max(best, runs * flops / elapsed)
    return best


# --- ONNX Runtime ----------------------------------------------------------------------------

def _onnx_chain(rows: int, dims: list[tuple[int, int]], precision: str):
    """An ONNX graph: x [rows, K0] through one MatMul (or QLinearMatMul) per (K, N) in `dims`."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes, inits = [], []
    if precision == "int8":
        elem = TensorProto.UINT8
        scalars = {"s": np.array(0.05, np.float32), "zu": np.array(128, np.uint8), "zs": np.array(0, np.int8)}
        inits += [numpy_helper.from_array(v, k) for k, v in scalars.items()]
    else:
        elem = TensorProto.FLOAT if precision == "fp32" else TensorProto.FLOAT16
    current = "x"
    for i, (k, n) in enumerate(dims):
        if precision == "int8":
            w = rng.integers(-127, 128, size=(k, n), dtype=np.int8)
            inits.append(numpy_helper.from_array(w, f"w{i}"))
            nodes.append(helper.make_node("QLinearMatMul", [current, "s", "zu", f"w{i}", "s", "zs", "s", "zu"], [f"y{i}"]))
        else:
            # Scaled so activations stay O(1): no overflow, no denormals to slow the kernels.
            w = (rng.standard_normal((k, n)) / np.sqrt(k)).astype(np.float32 if precision == "fp32" else np.float16)
            inits.append(numpy_helper.from_array(w, f"w{i}"))
            nodes.append(helper.make_node("MatMul", [current, f"w{i}"], [f"y{i}"]))
        current = f"y{i}"
    graph = helper.make_graph(
        nodes, "gemm_floor", [helper.make_tensor_value_info("x", elem, [rows, dims[0][0]])],
        [helper.make_tensor_value_info(current, elem, [rows, dims[-1][1]])], inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def ort_rate(rows: int, dims: list[tuple[int, int]], precision: str, threads: int, **timing) -> float:
    """FLOP/s of ONNX Runtime's CPU provider on the GEMM chain (raises if it cannot run it)."""
    import onnxruntime as ort

    model = _onnx_chain(rows, dims, precision)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(1)
    if precision == "int8":
        x = rng.integers(0, 256, size=(rows, dims[0][0]), dtype=np.uint8)
    else:
        x = rng.uniform(-1, 1, size=(rows, dims[0][0])).astype(np.float32 if precision == "fp32" else np.float16)
    return best_rate(lambda: session.run(None, {"x": x}), chain_flops(rows, dims), **timing)


# --- torch -----------------------------------------------------------------------------------

def torch_rate(rows: int, dims: list[tuple[int, int]], precision: str, threads: int, **timing) -> float:
    """FLOP/s of torch.mm on the GEMM chain: `bf16` on the CPU, `cuda-*` on the GPU."""
    import torch

    device = "cuda" if precision.startswith("cuda") else "cpu"
    dtype = {"bf16": torch.bfloat16, "cuda-bf16": torch.bfloat16, "cuda-fp16": torch.float16,
             "cuda-fp32": torch.float32}[precision]
    if device == "cpu":
        torch.set_num_threads(threads)
    gen = torch.Generator().manual_seed(0)
    weights = [(torch.randn(k, n, generator=gen) / k**0.5).to(device=device, dtype=dtype) for k, n in dims]
    x = torch.rand(rows, dims[0][0], generator=gen).to(device=device, dtype=dtype)

    def step():
        y = x
        for w in weights:
            y = torch.mm(y, w)
        if device == "cuda":
            torch.cuda.synchronize()

    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with torch.no_grad():
            return best_rate(step, chain_flops(rows, dims), **timing)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32


def measure_rates(precisions: list[str], batch_sizes: list[int], patches: int, hidden: int, intermediate: int,
                  threads: int, windows: int = 3, window_s: float = 0.1) -> dict:
    """{precision: {"method", "gflops_per_s": {batch: rate}, "threads": {batch: n}} or {"method", "error"}}.

    CPU rates are the better of `threads` threads and one thread: on N threads a GEMM is at
    least as fast as on one unless other processes take cores, and a shared machine's
    contention must not pass for the hardware's limit (it would make the floor too high).
    """
    dims = layer_dims(hidden, intermediate)
    out = {}
    for precision in precisions:
        entry: dict = {"method": METHODS[precision], "shapes": f"[batch*{patches}, K] x [K, N] for (K, N) in {dims}"}
        measure = torch_rate if precision in ("bf16", *CUDA_PRECISIONS) else ort_rate
        counts = [threads] if precision in CUDA_PRECISIONS or threads == 1 else [threads, 1]
        try:
            rates, best_threads = {}, {}
            for b in batch_sizes:
                found = {n: measure(b * patches, dims, precision, n, windows=windows, window_s=window_s)
                         for n in counts}
                best_threads[str(b)] = max(found, key=found.get)
                rates[str(b)] = found[best_threads[str(b)]] / 1e9
            entry["gflops_per_s"], entry["threads"] = rates, best_threads
        except Exception as exc:  # a precision this machine or library cannot run: say why
            entry["error"] = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        out[precision] = entry
    return out
