"""One benchmark job in a fresh process, so that its peak memory is its own.

    python -m benchmarks.worker JOB.json RESULT.json

Jobs (written by benchmarks/run.py):
- `prepare`: rebuild the artefacts' weights in the reference model (preset + seed, or the
  checkpoint), save the image tower's weights for the torch workers, and compute the fp32 eager
  `pooler_output` of the first input of every batch size: the reference every row's
  accuracy is measured against.
- `floor`: the GEMM rates of benchmarks/floor.py.
- `backend`: load one backend, then for each batch size warm up and time it on rotated inputs.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
import traceback
from pathlib import Path

import numpy as np

from runtime.contract.parity import min_row_cosine
from runtime.inputs.images import normalise

from .backends import SkipBatch, load_runner
from .floor import measure_rates


def make_inputs(input_shape: list[int], batch: int, count: int, seed: int, dtype=np.float32) -> list[np.ndarray]:
    """`count` distinct batches of random 8-bit images, the same in every worker: as float32
    `pixel_values` (normalised as SigLIP's preprocessing does, into [-1, 1]), or for an artefact
    that takes uint8 images, the bytes themselves. Input 0 of each batch size is the one accuracy
    is measured on."""
    rng = np.random.default_rng([seed, batch])
    images = [rng.integers(0, 256, size=(batch, *input_shape), dtype=np.uint8) for _ in range(count)]
    return images if np.dtype(dtype) == np.uint8 else [normalise(x) for x in images]


def _proc_status_mb(key: str) -> float | None:
    """A memory line of /proc/self/status (VmRSS, VmHWM) in MB; None where /proc is absent."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{key}:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def peak_rss_mb() -> float:
    """The process's peak resident set so far (VmHWM; ru_maxrss where /proc is absent)."""
    peak = _proc_status_mb("VmHWM")
    if peak is not None:
        return peak
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024  # bytes on macOS, KiB on Linux


def current_rss_mb() -> float | None:
    return _proc_status_mb("VmRSS")


def measure(run, inputs: list, batch: int, warmup: int, iterations: int, budget_s: float,
            min_iterations: int = 3) -> tuple[dict, np.ndarray]:
    """Warm up, then time `iterations` calls cycling through `inputs` (host arrays or, staged,
    device tensors, of `batch` rows each; fewer calls when the timed ones pass `budget_s`, but at
    least `min_iterations`). Returns (statistics, output of inputs[0])."""
    first = run(inputs[0])  # the first warm-up call: its output is the one checked for accuracy
    for i in range(1, warmup):
        run(inputs[i % len(inputs)])
    times = []
    started = time.perf_counter()
    for i in range(iterations):
        t0 = time.perf_counter()
        run(inputs[i % len(inputs)])
        times.append(time.perf_counter() - t0)
        if time.perf_counter() - started > budget_s and len(times) >= min_iterations:
            break
    return {**summarise(np.array(times) * 1e3, batch), "warmup": max(warmup, 1)}, np.asarray(first)


def summarise(ms: np.ndarray, batch: int) -> dict:
    """Statistics of timed calls (milliseconds, `batch` rows each); the calls themselves too, so a
    run of several rounds (run.py --rounds) can pool them."""
    return {
        "p50_ms": float(np.percentile(ms, 50)),
        "p90_ms": float(np.percentile(ms, 90)),
        "p99_ms": float(np.percentile(ms, 99)),
        "mean_ms": float(ms.mean()),
        "min_ms": float(ms.min()),
        "throughput_ips": float(batch * len(ms) / (ms.sum() / 1e3)),
        "iterations": len(ms),
        "samples_ms": [round(float(t), 4) for t in ms],
    }


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    first = text.splitlines()[0] if text else ""
    return f"{type(exc).__name__}: {first}"[:400] if first else type(exc).__name__


# --- jobs -------------------------------------------------------------------------------------

def reference_tower(source: dict, config_dict: dict):
    """The artefacts' eager image tower rebuilt from the manifest's source (preset + seed, or the
    checkpoint), else seeded random weights; returns (tower in eval mode, how it was built)."""
    import torch

    from siglip_export.model.config import config_from_dict
    from siglip_export.model.modeling_siglip import build_model

    config = config_from_dict(config_dict)
    model = None
    if source.get("type") == "preset":
        torch.manual_seed(int(source.get("seed", 0)))  # as pipeline.load_model builds it
        model = build_model(config)
        how = f"preset {source.get('preset')} seed {source.get('seed', 0)}: the artefacts' weights, rebuilt"
    elif source.get("type") == "checkpoint" and source.get("path") and Path(source["path"]).is_dir():
        from siglip_export.model.checkpoint import load_pretrained

        model = load_pretrained(source["path"])
        how = f"checkpoint {source['path']}: the artefacts' weights"
    if model is None:
        torch.manual_seed(0)
        model = build_model(config)
        how = "random (seed 0): the artefacts' source could not be rebuilt"
    return model.vision_model.eval(), how  # the text tower, if any, is dropped with `model`


def prepare(job: dict) -> dict:
    import torch
    from safetensors.torch import save_file

    torch.set_num_threads(job["threads"])
    tower, how = reference_tower(job["source"], job["config"])
    weights = Path(job["out_dir"]) / "vision_tower.safetensors"
    save_file({k: v.contiguous() for k, v in tower.state_dict().items()}, str(weights))

    reference = {}
    with torch.no_grad():
        for batch in job["batch_sizes"]:
            x = make_inputs(job["input_shape"], batch, 1, job["seed"])[0]
            reference[str(batch)] = tower(torch.from_numpy(x))[1].numpy()
    result = {"weights": str(weights), "weights_source": how, "reference_source": "torch eager fp32 (SDPA)"}

    # Are these really the artefact's weights? Check against the fp32 ONNX file through runtime.
    if job.get("onnx_path"):
        from runtime.runners.onnxruntime_model import OnnxModel

        session = OnnxModel(job["onnx_path"], threads=job["threads"])
        smallest = str(min(job["batch_sizes"]))
        x = make_inputs(job["input_shape"], int(smallest), 1, job["seed"])[0]
        cos = min_row_cosine(session.run(x)["pooler_output"], reference[smallest])
        result["weights_match_cosine"] = cos
        result["weights_match"] = cos > 0.999
        if not result["weights_match"]:
            # The eager weights are not the artefacts': measure accuracy against the fp32 ONNX
            # file instead (the export verified it against the true eager model).
            for batch in job["batch_sizes"]:
                x = make_inputs(job["input_shape"], batch, 1, job["seed"])[0]
                reference[str(batch)] = session.run(x)["pooler_output"]
            result["reference_source"] = f"ort-cpu {Path(job['onnx_path']).name} fp32 (eager weights do not match)"
    path = Path(job["out_dir"]) / "reference.npz"
    np.savez(path, **reference)
    result["reference"] = str(path)
    return result


def floor(job: dict) -> dict:
    return measure_rates(job["precisions"], job["batch_sizes"], job["patches"], job["hidden_size"],
                         job["intermediate_size"], job["threads"], windows=job.get("windows", 3),
                         window_s=job.get("window_s", 0.1))


def backend(job: dict) -> dict:
    started = time.perf_counter()
    try:
        runner = load_runner(job)
    except Exception as exc:  # the backend cannot run here: every row is skipped with the reason
        return {"error": _reason(exc), "traceback": traceback.format_exc(limit=4)}
    out = {"provider": runner.provider, "device": runner.device, "notes": runner.notes,
           "load_s": time.perf_counter() - started, "rss_after_load_mb": current_rss_mb(), "rows": []}
    reference = dict(np.load(job["reference"])) if job.get("reference") else {}
    for batch in sorted(job["batch_sizes"]):
        row: dict = {"batch_size": batch}
        try:
            run = runner.for_batch(batch)
            inputs = runner.stage([x.astype(runner.input_dtype, copy=False) for x in
                                   make_inputs(job["input_shape"], batch, job["inputs"], job["seed"], runner.input_dtype)])
            stats, first = measure(run, inputs, batch, job["warmup"], job["iterations"], job["budget_s"])
        except SkipBatch as exc:
            row["skipped"] = str(exc)
        except Exception as exc:  # e.g. out of memory at a large batch: the other sizes still count
            row["skipped"] = _reason(exc)
        else:
            row.update(stats)
            row["min_cosine"] = min_row_cosine(first, reference[str(batch)]) if str(batch) in reference else None
            row["peak_device_mb"] = runner.peak_device_mb()
            # Batch sizes run in increasing order, so this is the peak of serving up to this size.
            row["peak_rss_mb"] = peak_rss_mb()
        row["precision"] = runner.precision
        out["rows"].append(row)
    return out


JOBS = {"prepare": prepare, "floor": floor, "backend": backend}


def main(argv: list[str]) -> int:
    job_path, result_path = argv
    job = json.loads(Path(job_path).read_text())
    result = JOBS[job["kind"]](job)
    tmp = Path(result_path).with_suffix(".tmp")
    tmp.write_text(json.dumps(result))
    os.replace(tmp, result_path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
