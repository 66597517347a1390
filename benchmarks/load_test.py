"""Load test: many threads share one runtime ImageEncoder, as a server's request handlers would.

    python benchmarks/load_test.py [--artefacts DIR] [--threads 8] [--calls 1000] [--batch-size 1]
                                   [--warmup N] [--provider auto] [--ort-threads N] [--variant NAME]
                                   [--preprocessed] [--max-rss-growth-mb MB] [--json FILE]

1. Loads one `ImageEncoder` and computes a sequential reference: one call per distinct input
   (the packaged photos and their mirror images, decoded once into memory).
2. Starts `--threads` threads. Together they make `--warmup` calls, so ONNX Runtime's memory
   arena and the allocator's per-thread arenas reach their working size, then, after RSS is
   read, `--calls` measured calls; each call's embeddings must equal the sequential reference
   for the same input exactly (np.array_equal).
3. Reports throughput (calls/s, images/s), per-call latency percentiles and resident memory
   (VmRSS from /proc/self/status) after loading, after the warm-up, after each quarter of the
   calls and after the run. A leak grows with every quarter; an allocator still reaching its
   working size grows in the first quarter and then stays flat.

Each call is `encoder.embed(images)`: preprocessing and the model, as a request handler runs
them (`--preprocessed`: the model alone, on pixel_values prepared beforehand).

Exit status: 0 all results identical (and RSS growth within --max-rss-growth-mb when given);
1 a result differed, RSS grew more, or an internal error; 2 bad input (one line on stderr).
numpy + runtime only.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import threading
import time
from importlib import metadata
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # `python benchmarks/load_test.py`: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from runtime import ImageEncoder  # noqa: E402
from runtime.cli_support import ArgumentParser, positive_int, run_command  # noqa: E402
from runtime.contract.kinds import PROVIDERS  # noqa: E402
from runtime.errors import UserError  # noqa: E402
from runtime.inputs.images import load_image  # noqa: E402

PHOTOS = Path(__file__).resolve().parent.parent / "siglip_export" / "photos"


def memory_mb() -> dict[str, float]:
    """Resident (VmRSS) and peak resident (VmHWM) memory of this process, MB (Linux /proc)."""
    values = {}
    with open("/proc/self/status") as status:
        for line in status:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0]) / 1024  # kB -> MB
    return values


def distinct_images() -> list[np.ndarray]:
    """The packaged photos and their mirror images as uint8 RGB arrays (16 distinct inputs)."""
    photos = [np.asarray(load_image(p).convert("RGB")) for p in sorted(PHOTOS.glob("*.jpg"))]
    if not photos:
        raise UserError(f"no photos in {PHOTOS}")
    return photos + [np.ascontiguousarray(p[:, ::-1]) for p in photos]


class LoadTest:
    """Call i embeds inputs (i * batch + j) mod K, j < batch, so every call has a sequential reference."""

    def __init__(self, encoder: ImageEncoder, images: list[np.ndarray], batch_size: int, preprocessed: bool):
        self.encoder, self.batch_size, self.preprocessed = encoder, batch_size, preprocessed
        self.inputs = encoder.pixels(images) if preprocessed else images
        self.count = len(images)
        # Distinct calls: the first input index of a call is i * batch mod K.
        self.keys = sorted({(i * batch_size) % self.count for i in range(self.count)})
        self.reference: dict[int, np.ndarray] = {}

    def embed(self, start: int) -> np.ndarray:
        """Embeddings of the batch of inputs start, start + 1, ... (mod K)."""
        indices = [(start + j) % self.count for j in range(self.batch_size)]
        if self.preprocessed:
            return self.encoder.embed_pixels(self.inputs[indices])
        return self.encoder.embed([self.inputs[k] for k in indices])

    def call(self, i: int) -> tuple[int, np.ndarray]:
        start = (i * self.batch_size) % self.count
        return start, self.embed(start)

    def sequential_reference(self) -> float:
        """One call per distinct batch, one after another; returns the seconds it took."""
        begun = time.perf_counter()
        for start in self.keys:
            self.reference[start] = self.embed(start)
        return time.perf_counter() - begun

    def concurrent(self, threads: int, warmup: int, calls: int) -> dict:
        """Warm-up, then the measured calls, on the same `threads` threads."""
        lock = threading.Lock()
        state = {"next": 0, "limit": 0}
        mismatches: list[int] = []
        errors: list[str] = []
        latency = np.zeros(calls, dtype=np.float64)  # allocated before the RSS baseline
        # RSS after each quarter of the measured calls: a leak grows with the calls, while an
        # allocator still reaching its working size grows early and then stays flat.
        quarter = max(calls // 4, 1)
        trajectory = [(0, 0.0)] * (calls // quarter)
        barrier = threading.Barrier(threads + 1)
        measuring = threading.Event()

        def take() -> int | None:
            with lock:
                if state["next"] >= state["limit"]:
                    return None
                state["next"] += 1
                return state["next"] - 1

        def worker():
            for _phase in ("warmup", "measure"):
                barrier.wait()
                while (i := take()) is not None:
                    begun = time.perf_counter()
                    try:
                        key, out = self.call(i)
                    except Exception as exc:  # reported, and the run fails
                        with lock:
                            errors.append(f"call {i}: {type(exc).__name__}: {exc}")
                        continue
                    took = time.perf_counter() - begun
                    if measuring.is_set():
                        latency[i] = took
                        if (i + 1) % quarter == 0:
                            trajectory[(i + 1) // quarter - 1] = (i + 1, memory_mb()["VmRSS"])
                    if not np.array_equal(out, self.reference[key]):
                        with lock:
                            mismatches.append(i)
                barrier.wait()

        pool = [threading.Thread(target=worker, name=f"caller-{n}", daemon=True) for n in range(threads)]
        for thread in pool:
            thread.start()
        state.update(next=0, limit=warmup)
        barrier.wait()  # warm-up starts
        barrier.wait()  # warm-up done
        gc.collect()
        after_warmup = memory_mb()
        state.update(next=0, limit=calls)
        measuring.set()
        begun = time.perf_counter()
        barrier.wait()  # measured calls start
        barrier.wait()  # measured calls done
        seconds = time.perf_counter() - begun
        for thread in pool:
            thread.join()
        gc.collect()
        return {"seconds": seconds, "after_warmup": after_warmup, "after": memory_mb(), "trajectory": trajectory,
                "mismatches": mismatches, "errors": errors, "latency": latency}


def parse_args(argv=None) -> argparse.Namespace:
    parser = ArgumentParser(prog="load_test.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--artefacts", type=Path, default=Path("artifacts"), metavar="DIR",
                        help="artefact directory written by export.py (default: artifacts)")
    parser.add_argument("--threads", type=positive_int, default=8, help="concurrent callers (default 8)")
    parser.add_argument("--calls", type=positive_int, default=1000,
                        help="measured calls, all threads together (default 1000)")
    parser.add_argument("--batch-size", type=positive_int, default=1, help="images per call (default 1)")
    parser.add_argument("--warmup", type=int, default=None, help="warm-up calls (default: 5 per thread)")
    parser.add_argument("--provider", choices=("auto", *PROVIDERS), default="auto", help="execution provider (default auto)")
    parser.add_argument("--ort-threads", type=positive_int, default=None, metavar="N",
                        help="ONNX Runtime intra-op threads per call (default: one per core)")
    parser.add_argument("--variant", default=None, metavar="NAME", help="an image-tower variant of the export (opt, int8, ...)")
    parser.add_argument("--preprocessed", action="store_true",
                        help="feed pixel_values prepared beforehand (the model alone, no preprocessing)")
    parser.add_argument("--max-rss-growth-mb", type=float, default=None, metavar="MB",
                        help="fail (exit 1) when RSS grows more than this between warm-up and the end")
    parser.add_argument("--json", type=Path, default=None, metavar="FILE", help="also write the results as JSON")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    args = parser.parse_args(argv)
    if args.warmup is None:
        args.warmup = 5 * args.threads
    if args.warmup < 0:
        parser.error(f"--warmup must be >= 0, got {args.warmup}")
    return args


def run(args: argparse.Namespace) -> dict:
    loaded_begin = time.perf_counter()
    encoder = ImageEncoder(args.artefacts, variant=args.variant, provider=args.provider, threads=args.ort_threads,
                           batch_size=args.batch_size)
    test = LoadTest(encoder, distinct_images(), args.batch_size, args.preprocessed)
    load_seconds = time.perf_counter() - loaded_begin
    gc.collect()
    loaded = memory_mb()
    sequential_seconds = test.sequential_reference()
    result = test.concurrent(args.threads, args.warmup, args.calls)
    latency_ms = result["latency"] * 1000
    images = args.calls * args.batch_size
    versions = {}
    for dist in ("onnxruntime", "onnxruntime-gpu", "numpy", "pillow"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return {
        "artefacts": str(args.artefacts),
        "model": encoder.model.path.name,
        "provider": encoder.provider,
        "threads": args.threads,
        "ort_threads": args.ort_threads,
        "calls": args.calls,
        "batch_size": args.batch_size,
        "warmup_calls": args.warmup,
        "preprocessed": args.preprocessed,
        "distinct_inputs": test.count,
        "identical": not result["mismatches"] and not result["errors"],
        "mismatched_calls": len(result["mismatches"]),
        "errors": result["errors"][:5],
        "load_seconds": round(load_seconds, 3),
        "seconds": round(result["seconds"], 3),
        "calls_per_s": round(args.calls / result["seconds"], 2),
        "images_per_s": round(images / result["seconds"], 2),
        "latency_ms": {f"p{q}": round(float(np.percentile(latency_ms, q)), 3) for q in (50, 95, 99)},
        "sequential_reference": {"calls": len(test.keys), "seconds": round(sequential_seconds, 3),
                                 "calls_per_s": round(len(test.keys) / sequential_seconds, 2)},
        "rss_mb": {
            "loaded": round(loaded["VmRSS"], 1),
            "after_warmup": round(result["after_warmup"]["VmRSS"], 1),
            "after": round(result["after"]["VmRSS"], 1),
            "growth_after_warmup": round(result["after"]["VmRSS"] - result["after_warmup"]["VmRSS"], 1),
            "during_run": [[n, round(mb, 1)] for n, mb in result["trajectory"]],  # [calls done, MB]
            "peak": round(result["after"]["VmHWM"], 1),
        },
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "versions": versions,
    }


def report(r: dict) -> str:
    rss = r["rss_mb"]
    errors = f", errors: {'; '.join(r['errors'])}" if r["errors"] else ""
    inputs = "pixel_values" if r["preprocessed"] else "images, preprocessing included"
    verdict = "identical to sequential calls" if r["identical"] else "DIFFERENT"
    lines = [
        (f"{r['model']} on {r['provider']}: {r['threads']} threads, {r['calls']} calls of batch {r['batch_size']} "
         f"({inputs}), after {r['warmup_calls']} warm-up calls"),
        f"  results    {verdict} ({r['mismatched_calls']} of {r['calls']} calls differ{errors})",
        (f"  throughput {r['calls_per_s']:.1f} calls/s, {r['images_per_s']:.1f} images/s ({r['seconds']:.2f} s); "
         f"sequential reference {r['sequential_reference']['calls_per_s']:.1f} calls/s"),
        (f"  latency    p50 {r['latency_ms']['p50']:.2f} ms, p95 {r['latency_ms']['p95']:.2f} ms, "
         f"p99 {r['latency_ms']['p99']:.2f} ms per call"),
        (f"  RSS        {rss['loaded']:.1f} MB loaded, {rss['after_warmup']:.1f} MB after warm-up, "
         f"{rss['after']:.1f} MB after the run (growth {rss['growth_after_warmup']:+.1f} MB), peak {rss['peak']:.1f} MB"),
        "  RSS during " + ", ".join(f"{mb:.1f} MB at call {n}" for n, mb in rss["during_run"]),
    ]
    return "\n".join(lines)


def run_and_report(args: argparse.Namespace, run_fn, report_fn) -> tuple[int, dict | None]:
    """Run a load test, print its report and write `--json`: (0, result), or (exit status, None)
    when it failed (one line on stderr already)."""
    results: list[dict] = []
    status = run_command(lambda: results.append(run_fn(args)), debug=args.debug)
    if status:
        return status, None
    print(report_fn(results[0]))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results[0], indent=2) + "\n")
    return 0, results[0]


def main(argv=None) -> int:
    args = parse_args(argv)
    status, result = run_and_report(args, run, report)
    if status:
        return status
    if not result["identical"]:
        return 1
    growth = result["rss_mb"]["growth_after_warmup"]
    if args.max_rss_growth_mb is not None and growth > args.max_rss_growth_mb:
        print(f"RSS grew {growth:.1f} MB, more than --max-rss-growth-mb {args.max_rss_growth_mb}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
