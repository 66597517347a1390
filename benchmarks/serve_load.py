"""Load test of `siglip-runtime serve`: real Triton clients against a real server, localhost only.

    python benchmarks/serve_load.py [--artefacts DIR] [--variant NAME] [--clients 16] [--requests 800]
                                    [--batch-size 1] [--warmup N] [--protocol http|grpc] [--max-batch 64]
                                    [--queue-delay-us 100] [--instances 1] [--ort-threads N]
                                    [--time-limit-s 600] [--json FILE]

1. In process first (no server running): `--clients` threads share one runtime `ImageEncoder`
   and make `--requests` calls of `--batch-size` preprocessed images (the packaged photos and
   their mirror images), as a request handler would; the baseline.
2. Then the server (`runtime.serving.server.Server`, on free 127.0.0.1 ports): `--clients` threads, each
   with its own Triton client (tritonclient's clients are not thread-safe), send the same
   `--requests` requests for `pooler_output`, after `--warmup` requests (4 per client). Every
   response is compared with runtime's own embedding of the same images (within 1e-5).
3. Reports, for both: requests/s, images/s, p50 / p99 latency per request, errors (must be 0);
   for the server also the batch sizes Triton formed and the resident memory of the server
   and its model processes (tritonserver and the Python-backend stubs) after the warm-up and
   after the run. `--time-limit-s` bounds the run; what did not finish counts as an error.

Exit status: 0 every request answered and equal; 1 an error or a mismatch; 2 bad input.
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import sys
import threading
import time
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # `python benchmarks/serve_load.py`: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.load_test import distinct_images, run_and_report  # noqa: E402
from runtime import ImageEncoder  # noqa: E402
from runtime.cli_support import ArgumentParser, non_negative_int, positive_int  # noqa: E402
from runtime.contract.kinds import PROVIDERS  # noqa: E402
from runtime.serving.model_config import model_name  # noqa: E402
from runtime.serving.server import Server  # noqa: E402
from runtime.serving.settings import ServeOptions

TOLERANCE = 1e-5


def parse_args(argv=None) -> argparse.Namespace:
    parser = ArgumentParser(prog="serve_load.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--artefacts", type=Path, default=Path("artifacts"), metavar="DIR",
                        help="artefact directory written by export.py (default: artifacts)")
    parser.add_argument("--variant", default=None, metavar="NAME", help="serve this image-tower variant")
    parser.add_argument("--provider", choices=("auto", *PROVIDERS), default="auto")
    parser.add_argument("--clients", type=positive_int, default=16, help="concurrent clients (default 16)")
    parser.add_argument("--requests", type=positive_int, default=800, help="measured requests, all clients (default 800)")
    parser.add_argument("--batch-size", type=positive_int, default=1, help="images per request (default 1)")
    parser.add_argument("--warmup", type=positive_int, default=None,
                        help="served requests before measuring (default: 4 per client)")
    parser.add_argument("--protocol", choices=("http", "grpc"), default="http")
    parser.add_argument("--max-batch", type=positive_int, default=64, help="server's max_batch_size (default 64)")
    parser.add_argument("--queue-delay-us", type=non_negative_int, default=100, help="server's queue delay (default 100)")
    parser.add_argument("--instances", type=positive_int, default=1, help="model instances (default 1)")
    parser.add_argument("--ort-threads", type=positive_int, default=None, metavar="N",
                        help="ONNX Runtime threads, in process and per server instance (default: all cores)")
    parser.add_argument("--time-limit-s", type=float, default=600.0, help="bound on each measured phase (default 600)")
    parser.add_argument("--json", type=Path, default=None, metavar="FILE", help="also write the results as JSON")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    args = parser.parse_args(argv)
    args.warmup = args.warmup or 4 * args.clients
    if args.batch_size > args.max_batch:
        parser.error(f"--batch-size {args.batch_size} exceeds --max-batch {args.max_batch}")
    return args


def tree_rss_mb(pid: int) -> float:
    """Resident memory of a process and all its descendants, MB (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        todo += children.get(current, [])
        try:
            for line in Path(f"/proc/{current}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) / 1024
        except OSError:
            pass
    return total


def free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def measure(clients: int, requests: int, batch: int, make_state, call, limit_s: float, rss=None) -> dict:
    """`clients` threads, each with its own `make_state()`, make `requests` calls of
    `call(state, index)` between them, within `limit_s` seconds. `rss`: a function read after
    each quarter of the requests (the growth over a run, quarter by quarter)."""
    latencies: list[float] = []
    errors: list[str] = []
    counter = iter(range(requests))
    lock = threading.Lock()
    stop = time.monotonic() + limit_s
    trajectory: list[list] = []  # [requests answered, MB]

    def worker():
        state = make_state()
        try:
            work(state)
        finally:  # a client left open holds the server's shutdown for its whole exit timeout
            if hasattr(state, "close"):
                state.close()

    def work(state):
        while time.monotonic() < stop:
            with lock:
                index = next(counter, None)
            if index is None:
                return
            begin = time.perf_counter()
            try:
                call(state, index)
            except Exception as exc:  # counted and reported, the run goes on
                with lock:
                    errors.append(f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}")
                continue
            with lock:
                latencies.append(time.perf_counter() - begin)
                done = len(latencies)
            if rss is not None and done % max(1, requests // 4) == 0:
                trajectory.append([done, round(rss(), 1)])

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    begin = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - begin
    missing = requests - len(latencies) - len(errors)
    if missing:
        errors.append(f"{missing} requests not made within --time-limit-s {limit_s:g}")
    ms = np.array(latencies) * 1000 if latencies else np.array([np.nan])
    return {"requests": requests, "answered": len(latencies), "errors": requests - len(latencies),
            "error_examples": errors[:5], "seconds": round(seconds, 3),
            "requests_per_s": round(len(latencies) / seconds, 2),
            "images_per_s": round(len(latencies) * batch / seconds, 2),
            "latency_ms": {"p50": round(float(np.percentile(ms, 50)), 2), "p99": round(float(np.percentile(ms, 99)), 2)},
            "rss_mb_during": sorted(trajectory)}


def run(args: argparse.Namespace) -> dict:
    encoder = ImageEncoder(args.artefacts, variant=args.variant, provider=args.provider, threads=args.ort_threads,
                           batch_size=args.max_batch)
    photos = encoder.pixels(distinct_images())  # float32, or uint8 for a variant that normalises in its graph
    # Request i: batch-size images from photo i on, wrapping around (any batch size, distinct requests).
    inputs = [photos[(np.arange(args.batch_size) + i) % len(photos)] for i in range(len(photos))]
    expected = [encoder.embed_pixels(x) for x in inputs]

    def in_process(state, index):
        out = encoder.embed_pixels(inputs[index % len(inputs)])
        if not np.allclose(out, expected[index % len(inputs)], atol=TOLERANCE, rtol=0):
            raise ValueError("in-process result differs from the reference")

    baseline = measure(args.clients, args.requests, args.batch_size, lambda: None, in_process, args.time_limit_s)

    h, g, m = free_ports(3)
    options = ServeOptions(variant=args.variant, provider=args.provider, http_port=h, grpc_port=g, metrics_port=m,
                           max_batch=args.max_batch, queue_delay_us=args.queue_delay_us, instances=args.instances,
                           threads=args.ort_threads, zero_shot=False)
    if args.protocol == "http":
        import tritonclient.http as client_module

        address = f"127.0.0.1:{h}"
    else:
        import tritonclient.grpc as client_module

        address = f"127.0.0.1:{g}"
    started = time.perf_counter()
    with Server(args.artefacts, options, log=lambda message: None) as server:
        start_seconds = time.perf_counter() - started
        name = next(n for n in server.model_names if n.startswith(model_name(options.prefix, "vision", None)))

        def make_client():
            return client_module.InferenceServerClient(address)

        def served(client, index):
            x = inputs[index % len(inputs)]
            tensor = client_module.InferInput("pixel_values", list(x.shape), "UINT8" if x.dtype == np.uint8 else "FP32")
            tensor.set_data_from_numpy(x)
            result = client.infer(name, [tensor], outputs=[client_module.InferRequestedOutput("pooler_output")])
            if not np.allclose(result.as_numpy("pooler_output"), expected[index % len(inputs)], atol=TOLERANCE, rtol=0):
                raise ValueError("served result differs from runtime's")

        measure(args.clients, args.warmup, args.batch_size, make_client, served, args.time_limit_s)
        rss_warm = tree_rss_mb(server.process.pid)
        result = measure(args.clients, args.requests, args.batch_size, make_client, served, args.time_limit_s,
                         rss=lambda: tree_rss_mb(server.process.pid))
        rss_after = tree_rss_mb(server.process.pid)
        client = make_client()
        stats = (client.get_inference_statistics(name) if args.protocol == "http"
                 else client.get_inference_statistics(name, as_json=True))
        client.close()
    batches = _batch_sizes(stats)
    return {
        "artefacts": str(args.artefacts), "model": name, "protocol": args.protocol, "clients": args.clients,
        "batch_size": args.batch_size, "max_batch": args.max_batch, "queue_delay_us": args.queue_delay_us,
        "instances": args.instances, "ort_threads": args.ort_threads, "server_start_s": round(start_seconds, 2),
        "in_process": baseline, "served": result,
        "server_rss_mb": {"after_warmup": round(rss_warm, 1), "after": round(rss_after, 1),
                          "growth": round(rss_after - rss_warm, 1)},
        "triton_batches": batches,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
    }


def _batch_sizes(stats: dict) -> dict[str, int]:
    """{batch size: executions} from Triton's statistics (HTTP JSON or gRPC message as JSON)."""
    try:
        rows = stats["model_stats"][0].get("batch_stats", [])
    except (KeyError, IndexError, TypeError):
        return {}
    out = {}
    for row in rows:
        count = row.get("compute_infer", {}).get("count", 0)
        out[str(row.get("batch_size"))] = int(count)
    return dict(sorted(out.items(), key=lambda kv: int(kv[0])))


def report(r: dict) -> str:
    lines = [f"{r['model']} ({r['artefacts']}): {r['clients']} clients, {r['served']['requests']} requests of "
             f"{r['batch_size']} image(s), {r['protocol']}; server max batch {r['max_batch']}, queue delay "
             f"{r['queue_delay_us']} us, {r['instances']} instance(s); started in {r['server_start_s']} s",
             "",
             "| path | requests/s | images/s | p50 ms | p99 ms | errors |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for label, key in (("runtime in process", "in_process"), ("siglip-runtime serve (Triton)", "served")):
        row = r[key]
        lines.append(f"| {label} | {row['requests_per_s']:.1f} | {row['images_per_s']:.1f} | "
                     f"{row['latency_ms']['p50']:.1f} | {row['latency_ms']['p99']:.1f} | {row['errors']} |")
    rss = r["server_rss_mb"]
    lines += ["", f"server RSS (tritonserver + model processes): {rss['after_warmup']:.1f} MB after warm-up, "
              f"{rss['after']:.1f} MB after the run ({rss['growth']:+.1f} MB); during the run: "
              + ", ".join(f"{mb:.1f} MB at request {n}" for n, mb in r["served"]["rss_mb_during"]),
              "batches Triton formed (size: executions): " + (", ".join(f"{k}: {v}" for k, v in
                                                                    r["triton_batches"].items()) or "-")]
    for key in ("in_process", "served"):
        for example in r[key]["error_examples"]:
            lines.append(f"error ({key}): {example}")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    status, result = run_and_report(args, run, report)
    if status:
        return status
    return 1 if result["served"]["errors"] or result["in_process"]["errors"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
