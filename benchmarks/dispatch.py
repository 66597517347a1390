"""Benchmark jobs run in fresh worker processes (benchmarks/worker.py), so each one's peak
memory is its own; and the GEMM-rate floors those workers measure."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from .floor import CUDA_PRECISIONS, METHODS

REPO = Path(__file__).resolve().parent.parent
WORKER_TIMEOUT_S = 3600  # TensorRT builds on a cold cache take minutes


def run_worker(job: dict, scratch: Path, name: str) -> dict:
    """Run one job in a fresh Python process; raises RuntimeError with the worker's last words."""
    job_path, result_path = scratch / f"{name}.job.json", scratch / f"{name}.result.json"
    job_path.write_text(json.dumps(job))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    try:
        proc = subprocess.run([sys.executable, "-m", "benchmarks.worker", str(job_path), str(result_path)],
                              env=env, capture_output=True, text=True, timeout=WORKER_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"worker timed out after {WORKER_TIMEOUT_S} s") from None
    if proc.returncode != 0 or not result_path.is_file():
        lines = [ln for ln in (proc.stderr or "").strip().splitlines() if ln.strip()]
        raise RuntimeError(f"worker exited with status {proc.returncode}: {lines[-1] if lines else 'no message'}")
    return json.loads(result_path.read_text())


def measure_floors(keys: list[str], floor_job: dict, scratch: Path, tag: str) -> dict:
    """GEMM rates per floor key (benchmarks/floor.py), CPU and GPU precisions in separate workers."""
    rates: dict = {k: {"error": f"no GEMM rate is measured for {k}"} for k in keys if k not in METHODS}
    keys = [k for k in keys if k in METHODS]
    for group, name in (([k for k in keys if k not in CUDA_PRECISIONS]), "floor_cpu"), \
                       (([k for k in keys if k in CUDA_PRECISIONS]), "floor_gpu"):
        if group:
            try:
                rates.update(run_worker({**floor_job, "precisions": group}, scratch, f"{name}_{tag}"))
            except RuntimeError as exc:
                rates.update({k: {"error": str(exc)} for k in group})
    return rates


def merge_rates(before: dict, after: dict) -> dict:
    """Per precision and batch size, the better of the two measurements (contention only slows)."""
    merged = {}
    for key in sorted(set(before) | set(after)):
        a, b = before.get(key, {}), after.get(key, {})
        ra, rb = a.get("gflops_per_s", {}), b.get("gflops_per_s", {})
        if not (ra or rb):
            merged[key] = a or b
            continue
        sizes = sorted(set(ra) | set(rb), key=int)
        first = {bs: ra.get(bs, 0.0) >= rb.get(bs, 0.0) for bs in sizes}
        merged[key] = {
            "method": (a or b)["method"], "shapes": (a or b)["shapes"],
            "gflops_per_s": {bs: ra[bs] if first[bs] else rb[bs] for bs in sizes},
            "threads": {bs: (a if first[bs] else b).get("threads", {}).get(bs) for bs in sizes},
            "before_backends": ra or None, "after_backends": rb or None,
        }
    return merged
