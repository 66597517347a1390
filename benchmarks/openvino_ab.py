"""OpenVINO's default precision on the plain ONNX file against the export's `ov-int8` IR, in
alternating rounds: on a shared machine whose speed drifts between minutes (this project's
development VM), a ratio taken round by round holds better than two separate runs.

    python benchmarks/openvino_ab.py ARTEFACTS [--batch-size 8] [--rounds 8] [--calls 2] [--threads 2] [--profile]

Each round times `--calls` calls of each model (median), the plain file first; it prints the
median over rounds of each and of the per-round ratio. Compiled as benchmarks/run.py's
openvino-default rows are: static batch, LATENCY hint, the given thread count. `--profile`:
afterwards, OpenVINO's per-node counters (PERF_COUNT) over 3 calls of each model: milliseconds
per node type, and the FullyConnected layers per kernel (int8 or bf16 AMX, ...).
"""

from __future__ import annotations

import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from runtime.cli_support import ArgumentParser, positive_int  # noqa: E402
from runtime.contract.manifest import Manifest  # noqa: E402
from runtime.errors import UserError  # noqa: E402


def _compiled(core, ov, path: Path, batch: int, size: tuple[int, int], threads: int, profile: bool = False):
    model = core.read_model(str(path))
    model.reshape({model.inputs[0].get_any_name(): ov.PartialShape([batch, 3, *size])})
    config = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY", **({"PERF_COUNT": True} if profile else {})}
    return core.compile_model(model, "CPU", config)


def _profile(compiled, x: np.ndarray, calls: int = 3) -> None:
    """Per node type, ms per call; FullyConnected split by the kernel that ran it."""
    request = compiled.create_infer_request()
    request.infer({0: x})
    by_type: dict[str, float] = defaultdict(float)
    layers: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])  # kernel -> [ms, count] per call
    for _ in range(calls):
        request.infer({0: x})
        for node in request.profiling_info:
            ms = node.real_time.total_seconds() * 1e3 / calls
            by_type[node.node_type] += ms
            if node.node_type == "FullyConnected":
                layers[node.exec_type][0] += ms
                layers[node.exec_type][1] += 1 / calls
    total = sum(by_type.values())
    print(f"    total {total:.1f} ms; " + ", ".join(f"{k} {v:.1f}" for k, v in sorted(by_type.items(), key=lambda kv: -kv[1])
                                                  if v >= 0.01 * total))
    for kernel, (ms, count) in sorted(layers.items()):
        print(f"    FullyConnected on {kernel}: {round(count)} layers, {ms:.1f} ms, {ms / count:.2f} ms each")


def main(argv=None) -> int:
    parser = ArgumentParser(prog="python benchmarks/openvino_ab.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("artefacts", type=Path)
    parser.add_argument("--batch-size", type=positive_int, default=8)
    parser.add_argument("--rounds", type=positive_int, default=8)
    parser.add_argument("--calls", type=positive_int, default=2, help="timed calls per model per round")
    parser.add_argument("--threads", type=positive_int, default=2)
    parser.add_argument("--profile", action="store_true", help="then print OpenVINO's per-node-type times")
    args = parser.parse_args(argv)
    try:
        import openvino as ov

        manifest = Manifest.read(args.artefacts)
        plain, int8 = manifest.find("vision", None), manifest.find("vision", "ov-int8")
        if int8 is None:
            raise UserError(f"{args.artefacts} has no ov-int8 image tower (export with --variants ov-int8)")
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ImportError:
        print("error: openvino is not installed (pip install -e '.[openvino]')", file=sys.stderr)
        return 2
    core = ov.Core()
    config = manifest.model.vision_config
    size = (config["image_size"], config["image_size"])
    models = [_compiled(core, ov, args.artefacts / r.file, args.batch_size, size, args.threads) for r in (plain, int8)]
    requests = [m.create_infer_request() for m in models]
    x = np.random.default_rng(0).uniform(-1, 1, (args.batch_size, 3, *size)).astype(np.float32)
    for request in requests:
        for _ in range(3):
            request.infer({0: x})
    times: list[list[float]] = [[], []]
    for _ in range(args.rounds):
        for i, request in enumerate(requests):
            calls = []
            for _ in range(args.calls):
                started = time.perf_counter()
                request.infer({0: x})
                calls.append(time.perf_counter() - started)
            times[i].append(float(np.median(calls)))
    ratios = np.array(times[0]) / np.array(times[1])
    precision = models[0].get_property("INFERENCE_PRECISION_HINT")
    print(f"{args.artefacts}: batch {args.batch_size}, {args.threads} threads, {args.rounds} rounds of {args.calls} "
          f"calls; OpenVINO {ov.__version__}, default precision {precision}")
    print(f"  {plain.file} (default precision): median {np.median(times[0]) * 1e3:.1f} ms")
    print(f"  {int8.file}: median {np.median(times[1]) * 1e3:.1f} ms")
    print(f"  ratio per round: median {np.median(ratios):.2f}, min {ratios.min():.2f}, max {ratios.max():.2f}")
    if args.profile:
        del models, requests  # the timed models go first: more compiled copies of the model are a lot of memory
        for record in (plain, int8):
            print(f"  profile of {record.file}:")
            _profile(_compiled(core, ov, args.artefacts / record.file, args.batch_size, size, args.threads, True), x)
    return 0


if __name__ == "__main__":
    sys.exit(main())
