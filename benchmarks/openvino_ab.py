"""OpenVINO's default precision on the plain ONNX file against the export's `ov-int8` IR, in
alternating rounds: on a shared machine whose speed drifts between minutes (this project's
development VM), a ratio taken round by round holds better than two separate runs.

    python benchmarks/openvino_ab.py ARTEFACTS [--batch-size 8] [--rounds 8] [--calls 2] [--threads 2]

Each round times `--calls` calls of each model (median), the plain file first; it prints the
median over rounds of each and of the per-round ratio. Compiled as benchmarks/run.py's
openvino-default rows are: static batch, LATENCY hint, the given thread count.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from runtime.cli_support import ArgumentParser, positive_int  # noqa: E402
from runtime.errors import UserError  # noqa: E402
from runtime.manifest import Manifest  # noqa: E402


def _compiled(core, ov, path: Path, batch: int, size: tuple[int, int], threads: int):
    model = core.read_model(str(path))
    model.reshape({model.inputs[0].get_any_name(): ov.PartialShape([batch, 3, *size])})
    return core.compile_model(model, "CPU", {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"})


def main(argv=None) -> int:
    parser = ArgumentParser(prog="python benchmarks/openvino_ab.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("artefacts", type=Path)
    parser.add_argument("--batch-size", type=positive_int, default=8)
    parser.add_argument("--rounds", type=positive_int, default=8)
    parser.add_argument("--calls", type=positive_int, default=2, help="timed calls per model per round")
    parser.add_argument("--threads", type=positive_int, default=2)
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
