"""The machine a benchmark ran on, and how busy other processes kept it meanwhile."""

from __future__ import annotations

import os
import platform
import resource
import time
from importlib import metadata
from pathlib import Path

from runtime.runners.environment import ISA_FLAGS, cpu_identity, usable_cores  # noqa: F401 (benchmarks import it from here)

RECORDED_VERSIONS = ("torch", "onnxruntime", "onnxruntime-gpu", "onnx", "openvino", "numpy", "tensorrt", "matplotlib")


def nvidia_gpu() -> str | None:
    """The first GPU's name, None without an NVIDIA driver."""
    from runtime.runners.environment import gpu_name, nvidia_driver_present

    return gpu_name() if nvidia_driver_present() else None


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def machine_info(threads: int) -> dict:
    cpu = cpu_identity()
    versions = {"python": platform.python_version()}
    for dist in RECORDED_VERSIONS:
        if _version(dist):
            versions[dist] = _version(dist)
    total_mb = None
    try:
        total_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20
    except (ValueError, OSError, AttributeError):
        pass
    return {
        "cpu_model": cpu["cpu"],
        "cores": os.cpu_count(),
        "cores_usable": cpu["cores"],
        "threads": threads,
        "isa": {flag: flag in cpu["isa"] for flag in ISA_FLAGS},
        "memory_mb": total_mb,
        "gpu": nvidia_gpu(),
        "os": platform.platform(),
        "versions": versions,
    }


class CpuContention:
    """CPU time other processes used while the benchmark ran (a shared machine makes numbers noisy)."""

    def __init__(self):
        self.start = (self._busy_s(), self._own_s(), time.perf_counter())

    @staticmethod
    def _busy_s() -> float | None:
        try:
            fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        except (OSError, ValueError, IndexError):
            return None
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")

    @staticmethod
    def _own_s() -> float:
        total = 0.0
        for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
            usage = resource.getrusage(who)
            total += usage.ru_utime + usage.ru_stime
        return total

    def report(self) -> dict:
        busy0, own0, t0 = self.start
        busy1, own1, wall = self._busy_s(), self._own_s(), time.perf_counter() - t0
        out = {"wall_s": wall, "load_average_end": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}
        if busy0 is not None and busy1 is not None:
            others = max(0.0, (busy1 - busy0) - (own1 - own0))
            out["other_processes_cpu_s"] = others
            out["other_processes_cpu_fraction"] = others / (wall * (os.cpu_count() or 1)) if wall > 0 else 0.0
        return out
