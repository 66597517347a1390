"""The attention route choice for the GPU fp16 image tower, measured: the export's `cuda-fp16` file
(ONNX Runtime's transformer fusions: its contrib Attention, SkipLayerNormalization, FastGelu)
against the opset-23 route (the tower exported with scaled_dot_product_attention kept, which
opset 23 writes as the standard `Attention` op, then ONNX Runtime's fp16 conversion with float32
inputs and outputs, nothing else fused).

    python benchmarks/attention_route.py ARTEFACTS [--backend ort-cuda-resident] [--batch-sizes 1,256]
                                         [--rounds 5] [--calls 10] [--json FILE]

ARTEFACTS is an export with `--variants cuda-fp16`. Both files are timed in alternating rounds by
the benchmark's own runner (benchmarks/backends.py; `--backend ort-cpu` runs the same on a CPU),
the median of `--calls` calls per round; the table gives each file's median over rounds and the
median per-round ratio. Accuracy: pooler cosine of each file against the eager fp32 tower on 8
random 8-bit images (the benchmark's inputs). On a CUDA backend each file is also loaded with
ONNX Runtime's CPU fallback disabled, which says whether the CUDA provider runs every node.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from runtime.cli_support import ArgumentParser, positive_int, positive_int_list  # noqa: E402
from runtime.contract.parity import min_row_cosine  # noqa: E402
from runtime.errors import UserError  # noqa: E402

ROUTE_OPSET = 23


def build_route(tower, out: Path) -> dict:
    """The opset-23 fp16 file for `tower` at `out`; returns its op counts."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    from siglip_export.graph.torch_export import export_tower, op_counts, quiet

    model = export_tower(tower, opset=ROUTE_OPSET, fused_attention=True)
    with quiet():
        model = convert_float_to_float16(model, keep_io_types=True)
    onnx.save(model, str(out))
    return dict(op_counts(model).most_common())


def covers_every_node(path: Path, provider: str) -> str:
    """'yes', or ONNX Runtime's first line on why a session without CPU fallback cannot be made."""
    import onnxruntime as ort

    if provider == "CPUExecutionProvider":
        return "n/a (the CPU provider)"
    options = ort.SessionOptions()
    options.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    options.log_severity_level = 3
    try:
        ort.InferenceSession(str(path), options, providers=[provider])
    except Exception as exc:  # noqa: BLE001 - the reason is the result
        return "no: " + (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
    return "yes"


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="python benchmarks/attention_route.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("artefacts", type=Path, help="an export with --variants cuda-fp16")
    parser.add_argument("--backend", default="ort-cuda-resident", help="a benchmarks/run.py ONNX Runtime backend")
    parser.add_argument("--batch-sizes", type=positive_int_list, default=[1, 256], help="comma-separated (default 1,256)")
    parser.add_argument("--rounds", type=positive_int, default=5, help="alternating rounds (default 5)")
    parser.add_argument("--calls", type=positive_int, default=10, help="timed calls per file per round (default 10)")
    parser.add_argument("--threads", type=positive_int, default=None, help="intra-op threads (default: all cores)")
    parser.add_argument("--json", type=Path, help="write the results as JSON to this file")
    args = parser.parse_args(argv)
    try:
        return run(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def run(args) -> int:
    import torch

    from benchmarks.backends import BACKENDS, OrtRunner
    from benchmarks.machine import usable_cores
    from benchmarks.plan import _PROVIDER_NAMES, load_manifest
    from benchmarks.worker import make_inputs, measure, reference_tower

    backend = BACKENDS.get(args.backend)
    if backend is None or backend.runner is not OrtRunner:
        raise UserError(f"--backend {args.backend!r} is not an ONNX Runtime backend of benchmarks/run.py")
    directory = args.artefacts.resolve()
    manifest = load_manifest(directory)
    fused = manifest.find("vision", "cuda-fp16")
    if fused is None:
        raise UserError(f"{directory} has no cuda-fp16 image tower: export with --variants cuda-fp16")
    threads = args.threads or usable_cores()
    torch.set_num_threads(threads)
    tower, how = reference_tower(manifest.source, manifest.model.config)
    size = int(manifest.model.vision_config["image_size"])
    shape = [3, size, size]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="siglip-route-") as tmp:
        route = Path(tmp) / "vision_model.opset23-fp16.onnx"
        counts = build_route(tower, route)
        print(f"opset-23 route built in {time.perf_counter() - started:.0f} s: " +
              ", ".join(f"{op} {n}" for op, n in counts.items() if op in ("Attention", "MatMul", "LayerNormalization",
                                                                           "Gelu", "Cast", "Softmax")), flush=True)
        files = {"cuda-fp16 (ORT fusions)": directory / fused.file, f"opset-{ROUTE_OPSET} Attention": route}
        provider = _PROVIDER_NAMES.get(backend.provider, "CPUExecutionProvider")
        coverage = {name: covers_every_node(path, provider) for name, path in files.items()}
        x = make_inputs(shape, 8, 1, 0)[0]
        with torch.no_grad():
            reference = tower(torch.from_numpy(x))[1].numpy()
        job = {"threads": threads, "batch_sizes": args.batch_sizes, "cuda_options": {}}
        runners = {name: OrtRunner({**job, "path": str(path)}, backend.name) for name, path in files.items()}
        accuracy = {}
        for name, runner in runners.items():
            staged = runner.stage([x.astype(runner.input_dtype, copy=False)])
            accuracy[name] = min_row_cosine(runner.for_batch(8)(staged[0]), reference)
        p50 = {name: {} for name in files}  # per file, per batch size: the median over rounds
        ratios = {}  # per batch size: the median of the rounds' route / fusions ratios
        fusions, route_name = files
        for batch in args.batch_sizes:
            inputs = make_inputs(shape, batch, 2, 0)
            calls = {name: (r.for_batch(batch), r.stage(inputs)) for name, r in runners.items()}
            per_round = {name: [] for name in files}
            for round_ in range(args.rounds):
                for name, (call, staged) in calls.items():
                    stats, _ = measure(call, staged, batch, 3 if round_ == 0 else 1, args.calls, budget_s=30.0)
                    per_round[name].append(stats["p50_ms"])
            for name in files:
                p50[name][str(batch)] = float(np.median(per_round[name]))
            ratios[str(batch)] = float(np.median(np.array(per_round[route_name]) / np.array(per_round[fusions])))
    print(f"\n{backend.name} ({runners[fusions].provider}); eager reference: {how}")
    print("| file | runs every node on the provider | pooler cos vs eager fp32 | " +
          " | ".join(f"b{b} p50 ms" for b in args.batch_sizes) + " |")
    print("| --- | --- | ---: | " + " | ".join("---:" for _ in args.batch_sizes) + " |")
    for name in files:
        print(f"| {name} | {coverage[name]} | {accuracy[name]:.6f} | " +
              " | ".join(f"{p50[name][str(b)]:.3f}" for b in args.batch_sizes) + " |")
    print("| route / fusions (median per-round ratio) | | | " +
          " | ".join(f"{ratios[str(b)]:.2f}x" for b in args.batch_sizes) + " |")
    if args.json:
        args.json.write_text(json.dumps({"backend": backend.name, "provider": runners[fusions].provider,
                                         "ops_route": counts, "coverage": coverage, "accuracy": accuracy,
                                         "p50_ms": p50, "ratio_route_over_fusions": ratios,
                                         "rounds": args.rounds, "calls": args.calls}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
