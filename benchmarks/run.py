"""Latency and throughput of the SigLIP image tower on every available backend, side by side,
against the physical floor (the model's FLOPs / this machine's GEMM rate, measured in the same run).

    python benchmarks/run.py [--quick] [--json FILE] [--plot FILE.png] [--artefacts DIR]
                             [--backends NAME ...] [--batch-sizes 1,8,32] [--threads N]
                             [--iterations N] [--warmup N] [--budget-s S] [--inputs N] [--seed N]

Every backend runs in a fresh worker process (benchmarks/worker.py) so peak memory is its own.
A backend that cannot run here is reported as skipped, with the reason, in the table and the
JSON. The Markdown table goes to stdout, progress to stderr. JSON and plot are written only
when asked for (`benchmarks/results/` is git-ignored, a good place for them).

Exit status: 0 done; 2 bad arguments or no export (`python export.py` first).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

if __package__ in (None, ""):  # `python benchmarks/run.py`: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.backends import ALIASES, BACKENDS, DESCRIPTIONS, FIXED_PRECISION, TORCH_BACKENDS, floor_key
from benchmarks.floor import CUDA_PRECISIONS, METHODS
from benchmarks.flops import gemm_shapes, vision_flops
from runtime.cli_support import ArgumentParser, positive_int

REPO = Path(__file__).resolve().parent.parent
MANIFEST = "manifest.json"
ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_int8")
WORKER_TIMEOUT_S = 3600  # TensorRT builds on a cold cache take minutes
# Keys every row carries, measured or skipped (the JSON schema; tests check it).
ROW_KEYS = ("backend", "artefact", "precision", "batch_size", "p50_ms", "p90_ms", "p99_ms", "throughput_ips",
            "x_eager", "x_floor", "peak_rss_mb", "skipped")


class UsageError(Exception):
    """Bad arguments or a missing export: one line on stderr, exit status 2."""


# --- arguments --------------------------------------------------------------------------------

def _batch_sizes(text: str) -> list[int]:
    try:
        sizes = sorted({int(s) for s in text.split(",") if s.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"batch sizes must be integers like 1,8,32, got {text!r}") from None
    if not sizes or sizes[0] < 1:
        raise argparse.ArgumentTypeError(f"batch sizes must be positive integers, got {text!r}")
    return sizes


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = ArgumentParser(
        prog="python benchmarks/run.py",
        description="SigLIP image tower: latency / throughput per backend and batch size, against the FLOP floor.",
    )
    parser.add_argument("--quick", action="store_true",
                        help="batch 1 and 8, few iterations (under 5 minutes on 2 cores for the base model)")
    parser.add_argument("--artefacts", type=Path, default=Path("artifacts"),
                        help="directory written by export.py (default: artifacts)")
    parser.add_argument("--json", type=Path, help="write the results as JSON to this file")
    parser.add_argument("--plot", type=Path, help="write a PNG plot (latency and throughput against batch size)")
    parser.add_argument("--backends", nargs="+", default=["all"], metavar="NAME",
                        help=f"backends or groups, space- or comma-separated: {', '.join(BACKENDS)}; "
                             f"groups: {', '.join(ALIASES)} (default: all)")
    parser.add_argument("--batch-sizes", type=_batch_sizes, help="comma-separated (default 1,8,32; --quick 1,8)")
    parser.add_argument("--threads", type=positive_int, help="intra-op threads for every backend (default: all cores)")
    parser.add_argument("--iterations", type=positive_int, help="timed calls per point (default 50; --quick 10)")
    parser.add_argument("--warmup", type=positive_int, help="untimed calls first (default 5; --quick 2)")
    parser.add_argument("--budget-s", type=float,
                        help="stop timing a point after this many seconds, with at least 3 calls "
                             "(default 60; --quick 4)")
    parser.add_argument("--inputs", type=positive_int, default=4,
                        help="distinct inputs cycled through per batch size, so caches do not flatter (default 4)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random inputs (default 0)")
    args = parser.parse_args(argv)
    quick = args.quick
    args.batch_sizes = args.batch_sizes or ([1, 8] if quick else [1, 8, 32])
    args.iterations = args.iterations or (10 if quick else 50)
    args.warmup = args.warmup or (2 if quick else 5)
    args.budget_s = args.budget_s if args.budget_s is not None else (4.0 if quick else 60.0)
    if args.budget_s <= 0:
        parser.error(f"--budget-s must be > 0, got {args.budget_s}")
    if args.threads is None:
        args.threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    args.command = " ".join(["python", "benchmarks/run.py", *(sys.argv[1:] if argv is None else argv)])
    return args


def select_backends(names: list[str]) -> list[str]:
    wanted: set[str] = set()
    for name in (n.strip() for item in names for n in item.split(",")):
        if not name:
            continue
        if name in ALIASES:
            wanted.update(ALIASES[name])
        elif name in BACKENDS:
            wanted.add(name)
        else:
            raise UsageError(f"unknown backend {name!r} (choose from {', '.join(BACKENDS)}; "
                             f"groups: {', '.join(ALIASES)})")
    return [b for b in BACKENDS if b in wanted]


# --- machine ----------------------------------------------------------------------------------

def _cpuinfo() -> tuple[str, set[str]]:
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and value.strip():
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    except OSError:
        pass
    return model, flags


def nvidia_gpu() -> str | None:
    """The first GPU's name, None without an NVIDIA driver."""
    from runtime.session import gpu_name, nvidia_driver_present

    return gpu_name() if nvidia_driver_present() else None


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def machine_info(threads: int) -> dict:
    model, flags = _cpuinfo()
    versions = {"python": platform.python_version()}
    for dist in ("torch", "onnxruntime", "onnxruntime-gpu", "onnx", "openvino", "numpy", "tensorrt", "matplotlib"):
        if _version(dist):
            versions[dist] = _version(dist)
    total_mb = None
    try:
        total_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20
    except (ValueError, OSError, AttributeError):
        pass
    return {
        "cpu_model": model,
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "threads": threads,
        "isa": {flag: flag in flags for flag in ISA_FLAGS},
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


# --- plan -------------------------------------------------------------------------------------

def load_manifest(directory: Path) -> dict:
    path = directory / MANIFEST
    if not path.is_file():
        raise UsageError(f"{directory} has no {MANIFEST}: run `python export.py` first "
                         f"(or pass --artefacts DIR of an export)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        manifest["artefacts"], manifest["model"]["config"]
    except (ValueError, KeyError, TypeError) as exc:
        raise UsageError(f"{path} is not a valid manifest ({exc!r}): re-run `python export.py`") from None
    return manifest


def vision_config_of(manifest: dict) -> dict:
    config = manifest["model"]["config"]
    return config.get("vision_config", config) if isinstance(config, dict) else {}


def vision_artefacts(manifest: dict) -> list[dict]:
    """Image-tower ONNX files of the export, the plain fp32 file first."""
    found = [a for a in manifest["artefacts"]
             if a.get("tower") == "vision" and str(a.get("file", "")).endswith(".onnx")]
    return sorted(found, key=lambda a: (a["file"] != "vision_model.onnx", a["file"]))


def openvino_artefacts(manifest: dict) -> list[dict]:
    """Image-tower OpenVINO IR files (`.xml` with its `.bin`) the export lists."""
    return sorted((a for a in manifest["artefacts"]
                   if a.get("tower") == "vision" and str(a.get("file", "")).endswith(".xml")), key=lambda a: a["file"])


def _entry_precision(entry: dict) -> str:
    return str(entry.get("precision") or "fp32")


def plan_backends(backends: list[str], manifest: dict, directory: Path, gpu: str | None) -> list[dict]:
    """One item per (backend, artefact): the worker job to run, or `skipped` with the reason."""
    from runtime.session import CUDA, TENSORRT, _import_ort

    onnx_files = vision_artefacts(manifest)
    base = next((a for a in onnx_files if a["file"] == "vision_model.onnx"), None)
    torch_ok = importlib.util.find_spec("torch") is not None
    try:
        ort_providers = _import_ort().get_available_providers()
    except Exception as exc:  # noqa: BLE001 - reported as the reason
        ort_providers, ort_error = [], str(exc)
    else:
        ort_error = None
    torch_version = _version("torch") or "?"
    no_gpu = ("no NVIDIA GPU on this machine (no /proc/driver/nvidia/version, no nvidia-smi)"
              if gpu is None else None)

    items = []

    def add(backend, artefact=None, precision=None, skipped=None, path=None):
        device = "cuda" if backend in ALIASES["gpu"] else "cpu"
        items.append({"backend": backend, "artefact": artefact, "device": device,
                      "precision": precision or FIXED_PRECISION.get(backend) or "unknown", "skipped": skipped,
                      "path": str(path) if path else None})

    for backend in backends:
        if backend in TORCH_BACKENDS:
            reason = None if torch_ok else "torch is not installed"
            if backend.startswith("torch-cuda") and reason is None and no_gpu:
                reason = no_gpu + (f"; torch {torch_version} is a CPU-only build" if "+cpu" in torch_version else "")
            add(backend, "siglip_export (config.json)", skipped=reason)
        elif backend in ("ort-cpu", "ort-cuda"):
            for entry in onnx_files:
                reason = f"onnxruntime is not importable: {ort_error}" if ort_error else None
                if backend == "ort-cuda" and reason is None:
                    if CUDA not in ort_providers:
                        reason = f"this onnxruntime build has no CUDAExecutionProvider (has: {', '.join(ort_providers)})"
                    elif no_gpu:
                        reason = no_gpu
                    elif _entry_precision(entry) == "int8" and entry.get("variant") != "int8-qdq":
                        reason = "int8 (dynamic quantisation) is a CPU artefact: its integer ops are not CUDA kernels"
                add(backend, entry["file"], _entry_precision(entry), reason, directory / entry["file"])
        elif backend in ("ort-tensorrt", "ort-tensorrt-fp16"):
            reason = None
            if base is None:
                reason = "the export has no vision_model.onnx"
            elif TENSORRT not in ort_providers:
                reason = f"this onnxruntime build has no TensorrtExecutionProvider (has: {', '.join(ort_providers)})"
            elif no_gpu:
                reason = no_gpu
            add(backend, "vision_model.onnx", skipped=reason, path=directory / "vision_model.onnx")
        elif backend in ("openvino-fp32", "openvino-default"):
            reason = None
            if base is None:
                reason = "the export has no vision_model.onnx"
            elif importlib.util.find_spec("openvino") is None:
                reason = "openvino is not installed (pip install openvino)"
            # openvino-default: the precision OpenVINO picks is known once compiled (bf16 on AMX CPUs).
            add(backend, "vision_model.onnx", "fp32" if backend == "openvino-fp32" else "default", reason,
                directory / "vision_model.onnx")
            if backend == "openvino-default":  # OpenVINO IR variants of the export run as they were saved
                for entry in openvino_artefacts(manifest):
                    add(backend, entry["file"], "default", reason if base is not None else None,
                        directory / entry["file"])
        elif backend == "tensorrt":
            engines = sorted(directory.glob("vision_model.*.engine"))
            if not engines:
                add(backend, "vision_model.*.engine", skipped=f"no vision_model.*.engine in {directory}")
            for engine in engines:
                precision = engine.name[len("vision_model."):-len(".engine")]
                reason = no_gpu
                if reason is None and importlib.util.find_spec("tensorrt") is None:
                    reason = "the tensorrt package is not installed (pip install -e '.[tensorrt]')"
                add(backend, engine.name, precision, reason, engine)
    return items


# --- workers ----------------------------------------------------------------------------------

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


def _progress(start: float, line: str) -> None:
    print(f"[{time.perf_counter() - start:6.1f}s] {line}", file=sys.stderr, flush=True)


def empty_row(item: dict, batch: int, skipped: str | None) -> dict:
    return {
        "backend": item["backend"], "artefact": item["artefact"], "precision": item["precision"],
        "batch_size": batch, "device": item["device"], "provider": None,
        "p50_ms": None, "p90_ms": None, "p99_ms": None, "mean_ms": None, "throughput_ips": None,
        "x_eager": None, "x_floor": None, "floor_key": None, "floor_ms": None,
        "peak_rss_mb": None, "peak_device_mb": None, "min_cosine": None, "iterations": None,
        "skipped": skipped, "notes": [], "other_processes_cpu_fraction": None,
    }


def benchmark(args: argparse.Namespace) -> dict:
    start = time.perf_counter()
    contention = CpuContention()
    directory = args.artefacts.resolve()
    manifest = load_manifest(directory)
    backends = select_backends(args.backends)
    onnx_files = vision_artefacts(manifest)
    if not onnx_files:
        raise UsageError(f"{directory / MANIFEST} lists no image-tower ONNX file (tower 'vision'): "
                         f"export the vision tower with `python export.py`")
    vision = vision_config_of(manifest)
    flops = vision_flops(vision)
    shapes = gemm_shapes(vision)
    size = int(_square(vision["image_size"]))
    input_shape = [int(vision.get("num_channels", 3)), size, size]
    machine = machine_info(args.threads)
    items = plan_backends(backends, manifest, directory, machine["gpu"])
    base_onnx = next((str(directory / a["file"]) for a in onnx_files if a["file"] == "vision_model.onnx"), None)
    _progress(start, f"{directory}: image tower {flops['total'] / 1e9:.4g} GFLOP/image; "
                     f"{args.threads} threads; batch sizes {args.batch_sizes}")

    common = {"threads": args.threads, "batch_sizes": args.batch_sizes, "input_shape": input_shape,
              "seed": args.seed, "vision_config": vision}
    with tempfile.TemporaryDirectory(prefix="siglip-bench-") as tmp:
        scratch = Path(tmp)
        prepared: dict = {}
        if importlib.util.find_spec("torch") is not None:
            try:
                prepared = run_worker({"kind": "prepare", **common, "source": manifest.get("source", {}),
                                       "config": manifest["model"]["config"], "out_dir": str(scratch),
                                       "onnx_path": base_onnx}, scratch, "prepare")
                _progress(start, f"reference: {prepared['reference_source']}; eager weights: "
                                 f"{prepared['weights_source']}")
            except RuntimeError as exc:
                _progress(start, f"reference not computed (accuracy columns empty): {exc}")
                prepared = {"error": str(exc)}

        # The floor: GEMM rates for the precisions the backends are expected to use, measured
        # before the backends and again after them (a shared machine's load comes and goes).
        floor_job = {"kind": "floor", "batch_sizes": args.batch_sizes, "threads": args.threads,
                     "windows": 3 if args.quick else 5,
                     "window_s": min(0.1 if args.quick else 0.25, args.budget_s / 10), **shapes}
        bf16_cpu = machine["isa"].get("amx_bf16") or machine["isa"].get("avx512_bf16")
        expected = {"fp32"} | {floor_key("bf16" if i["precision"] == "default" and bf16_cpu else i["precision"],
                                         i["device"]) for i in items if i["skipped"] is None}
        rates_before = measure_floors(sorted(expected), floor_job, scratch, "before")

        rows: list[dict] = []
        for index, item in enumerate(items):
            label = f"{item['backend']} {item['artefact']}"
            if item["skipped"] is None and item["backend"] in TORCH_BACKENDS and "weights" not in prepared:
                item["skipped"] = f"reference model not built: {prepared.get('error', 'torch missing')}"
            if item["skipped"] is not None:
                rows += [empty_row(item, b, item["skipped"]) for b in args.batch_sizes]
                _progress(start, f"{label}: skipped ({item['skipped']})")
                continue
            job = {"kind": "backend", **common, "backend": item["backend"], "path": item["path"],
                   "precision": item["precision"], "weights": prepared.get("weights"),
                   "reference": prepared.get("reference"), "iterations": args.iterations,
                   "warmup": args.warmup, "budget_s": args.budget_s, "inputs": args.inputs}
            watch = CpuContention()
            try:
                result = run_worker(job, scratch, f"backend{index}")
            except RuntimeError as exc:
                result = {"error": str(exc)}
            others = watch.report().get("other_processes_cpu_fraction")
            if "error" in result:
                rows += [empty_row(item, b, result["error"]) for b in args.batch_sizes]
                _progress(start, f"{label}: skipped ({result['error']})")
                continue
            for measured in result["rows"]:
                row = empty_row(item, measured["batch_size"], None)
                row.update({k: v for k, v in measured.items()})
                row["provider"] = result["provider"]
                row["device"] = result["device"]
                row["notes"] = list(result.get("notes", []))
                row["load_s"] = result.get("load_s")
                row["rss_after_load_mb"] = result.get("rss_after_load_mb")
                # Share of the machine's CPU other processes used while this backend ran.
                row["other_processes_cpu_fraction"] = others
                rows.append(row)
            done = ", ".join(f"b{r['batch_size']} " + (f"{_ms(r['p50_ms'])} ms" if r.get("p50_ms") is not None
                                                        else f"skipped ({r['skipped']})")
                             for r in result["rows"])
            _progress(start, f"{label} ({result['rows'][0]['precision'] if result['rows'] else '?'}): {done}")

        # The floor's GEMM rates are measured after the backends too, for any precision a backend
        # turned out to use that was not expected; each rate is the better of the two runs.
        measured = [r for r in rows if r["skipped"] is None]
        used = {"fp32"} | {floor_key(r["precision"], r["device"]) for r in measured}
        rates_after = measure_floors(sorted(used), floor_job, scratch, "after")
        rates = merge_rates(rates_before, rates_after)
        _progress(start, "GEMM rates (GFLOP/s, best of before and after the backends): " + "; ".join(
            f"{k}: " + (", ".join(f"b{b} {v:.3g}" for b, v in r["gflops_per_s"].items()) if "gflops_per_s" in r
                        else f"not measured ({r.get('error')})") for k, r in sorted(rates.items())))

    floors = {k: {b: flops["total"] * int(b) / (rate * 1e9) * 1e3 for b, rate in r["gflops_per_s"].items()}
              for k, r in rates.items() if "gflops_per_s" in r}
    eager = {r["batch_size"]: r["p50_ms"] for r in measured if r["backend"] == "torch-eager"}
    for r in measured:
        key = floor_key(r["precision"] or "fp32", r["device"])
        r["floor_key"] = key
        r["floor_ms"] = floors.get(key, {}).get(str(r["batch_size"]))
        r["x_floor"] = r["p50_ms"] / r["floor_ms"] if r["floor_ms"] else None
        r["x_eager"] = r["p50_ms"] / eager[r["batch_size"]] if eager.get(r["batch_size"]) else None
        if r["floor_ms"] is None:
            r["notes"].append(f"no {key} floor: {rates.get(key, {}).get('error', 'not measured')}")

    run_info = {
        "command": args.command,
        "quick": args.quick, "threads": args.threads, "batch_sizes": args.batch_sizes,
        "iterations": args.iterations, "warmup": args.warmup, "budget_s": args.budget_s,
        "inputs_per_batch": args.inputs, "seed": args.seed, "artefacts": str(directory),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "throughput": "batch_size x timed calls / their total time, one call at a time",
        "peak_rss": "VmHWM of the backend's own worker process after this batch size (sizes run in increasing "
                    "order), including the model, the runtime and the rotated inputs",
        **contention.report(),
    }
    return {
        "machine": machine,
        "model": {
            "config": vision,
            "gflops_per_image": flops["total"] / 1e9,
            "flops_per_image": flops,
            "source": manifest.get("source"),
            "eager_weights": prepared.get("weights_source"),
            "eager_weights_match_artefacts": prepared.get("weights_match"),
            "accuracy_reference": prepared.get("reference_source"),
        },
        "floor_ms": floors.get("fp32", {}),
        "floor_ms_by_precision": floors,
        "gemm_rates": rates,
        "backends": {b: DESCRIPTIONS[b] for b in backends},
        "run": run_info,
        "results": rows,
    }


def _square(value):
    return value[0] if isinstance(value, (list, tuple)) else value


# --- output -----------------------------------------------------------------------------------

def _fmt(value, spec: str, empty: str = "-") -> str:
    return empty if value is None else format(value, spec)


def _ms(value: float) -> str:
    """Milliseconds: one decimal, or three significant digits below 10 ms (tiny models)."""
    return f"{value:.3g}" if value < 10 else f"{value:.1f}"


def markdown(result: dict) -> str:
    """The results as Markdown: measured rows by batch size, then what was not measured and why."""
    model, machine, run = result["model"], result["machine"], result["run"]
    isa = ", ".join(k for k, v in machine["isa"].items() if v) or "none of interest"
    config = model["config"]
    lines = [
        (f"SigLIP image tower, {config.get('image_size')} px / patch {config.get('patch_size')}, "
         f"hidden {config.get('hidden_size')}, {config.get('num_hidden_layers')} layers: "
         f"{model['gflops_per_image']:.4g} GFLOP per image. Eager weights: {model.get('eager_weights') or 'n/a'}."),
        (f"{machine['cpu_model']}, {machine['cores']} cores ({isa}), GPU: {machine['gpu'] or 'none'}; "
         f"{run['threads']} threads; other processes used "
         f"{100 * run.get('other_processes_cpu_fraction', 0.0):.0f}% of the CPU during the run."),
        ("fp32 floor (FLOPs / ONNX Runtime MatMul rate): "
         + ", ".join(f"b{b} {ms:.3g} ms" for b, ms in result["floor_ms"].items()) + "."),
        "",
        ("| backend | artefact | precision | batch | p50 ms | p90 ms | p99 ms | images/s | x floor | x eager "
         "| peak RSS MB | min cos vs eager | others' CPU |"),
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    measured = [r for r in result["results"] if r["skipped"] is None]
    for r in sorted(measured, key=lambda r: r["batch_size"]):  # stable: backend order within a size
        lines.append(
            f"| {r['backend']} | {r['artefact']} | {r['precision']} | {r['batch_size']} | {_ms(r['p50_ms'])} | "
            f"{_ms(r['p90_ms'])} | {_ms(r['p99_ms'])} | {r['throughput_ips']:.1f} | {_fmt(r['x_floor'], '.3g')} | "
            f"{_fmt(r['x_eager'], '.3g')} | {_fmt(r['peak_rss_mb'], '.0f')} | {_fmt(r.get('min_cosine'), '.5f')} | "
            f"{_fmt(None if r.get('other_processes_cpu_fraction') is None else 100 * r['other_processes_cpu_fraction'], '.0f')}% |"
        )
    skipped: dict = {}
    for r in result["results"]:
        if r["skipped"] is not None:
            skipped.setdefault((r["backend"], r["artefact"], r["skipped"]), []).append(r["batch_size"])
    if skipped:
        lines += ["", "| not measured | artefact | batch | why |", "| --- | --- | --- | --- |"]
        for (backend, artefact, reason), sizes in skipped.items():
            lines.append(f"| {backend} | {artefact} | {','.join(map(str, sizes))} | {reason} |")
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    """Latency (p50) and throughput against batch size per backend, log scales, with the floors."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    series: dict = {}
    for r in result["results"]:
        if r["skipped"] is None:
            label = f"{r['backend']} {r['artefact']} ({r['precision']})"
            series.setdefault(label, []).append((r["batch_size"], r["p50_ms"], r["throughput_ips"]))
    fig, (lat, thr) = plt.subplots(1, 2, figsize=(14, 5.5))
    for label, points in series.items():
        points.sort()
        b, ms, ips = zip(*points)
        line, = lat.plot(b, ms, marker="o", label=label)
        thr.plot(b, ips, marker="o", color=line.get_color(), label=label)
    gflops = result["model"]["gflops_per_image"]
    for key, per_batch in sorted(result["floor_ms_by_precision"].items()):
        b = sorted(int(k) for k in per_batch)
        style = {"fp32": "-", "bf16": "--", "int8": ":", "fp16": "-."}.get(key.removeprefix("cuda-"), "--")
        lat.plot(b, [per_batch[str(k)] for k in b], color="black", linestyle=style, linewidth=1, label=f"floor {key}")
        thr.plot(b, [k / per_batch[str(k)] * 1e3 for k in b], color="black", linestyle=style, linewidth=1,
                 label=f"floor {key}")
    sizes = sorted({r["batch_size"] for r in result["results"]})
    for ax, ylabel in ((lat, "p50 latency per call (ms)"), (thr, "throughput (images/s)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(sizes, [str(b) for b in sizes])
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.set_xlabel("batch size")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
    thr.legend(fontsize=7, loc="best")
    machine = result["machine"]
    fig.suptitle(f"SigLIP image tower ({gflops:.4g} GFLOP/image) on {machine['cpu_model']}, "
                 f"{result['run']['threads']} threads" + (f", {machine['gpu']}" if machine["gpu"] else "")
                 + f"; other processes used {100 * result['run'].get('other_processes_cpu_fraction', 0.0):.0f}% "
                   f"of the CPU meanwhile", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.plot is not None and importlib.util.find_spec("matplotlib") is None:
            raise UsageError("--plot needs matplotlib: pip install matplotlib")
        if not args.artefacts.is_dir():
            raise UsageError(f"artefact directory {args.artefacts} not found: run `python export.py` first "
                             f"(or pass --artefacts DIR)")
        for flag, path in (("--json", args.json), ("--plot", args.plot)):  # before minutes of measuring
            if path is not None and (path.is_dir() or (path.parent.exists() and not os.access(path.parent, os.W_OK))):
                raise UsageError(f"{flag} {path} cannot be written (a directory, or in a read-only directory)")
        result = benchmark(args)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(markdown(result))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        print(f"\nJSON: {args.json}", file=sys.stderr)
    if args.plot is not None:
        plot(result, args.plot)
        print(f"plot: {args.plot}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
