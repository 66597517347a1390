"""Latency and throughput of the SigLIP image tower on every available backend, side by side,
against the physical floor (the model's FLOPs / this machine's GEMM rate, measured in the same run).

    python benchmarks/run.py [--quick] [--json FILE] [--plot FILE.png] [--artefacts DIR]
                             [--backends NAME ...] [--batch-sizes 1,8,32] [--threads N]
                             [--iterations N] [--warmup N] [--budget-s S] [--rounds N] [--inputs N] [--seed N]

Every backend runs in a fresh worker process (benchmarks/worker.py) so peak memory is its own.
With `--rounds N` the whole plan runs N times, forwards then backwards, and each point pools its
calls from every round: on a shared machine whose speed drifts between minutes, the ratios of one
run then compare backends over the same stretch of time.
Which backend runs which artefact is planned from the manifest's records (benchmarks/plan.py).
A backend that cannot run here is reported as skipped, with the reason, in the table and the
JSON. The Markdown table goes to stdout, progress to stderr. JSON and plot are written only
when asked for (`benchmarks/results/` is git-ignored, a good place for them).

Exit status: 0 done; 2 bad arguments or no export (`python export.py` first).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # `python benchmarks/run.py`: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.backends import BACKENDS, GROUPS, floor_key  # noqa: E402
from benchmarks.dispatch import measure_floors, merge_rates, run_worker  # noqa: E402
from benchmarks.flops import gemm_shapes, pixel_shape, vision_flops  # noqa: E402
from benchmarks.machine import CpuContention, machine_info, usable_cores  # noqa: E402
from benchmarks.plan import PlanItem, load_manifest, plan_backends, select_backends  # noqa: E402
from benchmarks.report import format_ms, markdown, plot  # noqa: E402
from benchmarks.worker import summarise  # noqa: E402
from runtime.cli_support import ArgumentParser, positive_int, positive_int_list  # noqa: E402
from runtime.contract.manifest import MANIFEST, Manifest  # noqa: E402
from runtime.errors import UserError  # noqa: E402


@dataclass
class Row:
    """One (backend, artefact, batch size): measured, or `skipped` with the reason. The JSON's `results`."""

    backend: str
    artefact: str
    precision: str
    batch_size: int
    device: str
    skipped: str | None = None
    provider: str | None = None
    p50_ms: float | None = None
    p90_ms: float | None = None
    p99_ms: float | None = None
    mean_ms: float | None = None
    min_ms: float | None = None
    throughput_ips: float | None = None
    iterations: int | None = None
    warmup: int | None = None
    x_eager: float | None = None  # p50 over PyTorch eager fp32's at the same batch size
    x_floor: float | None = None  # p50 over the floor of its precision
    floor_key: str | None = None
    floor_ms: float | None = None
    peak_rss_mb: float | None = None
    peak_device_mb: float | None = None
    min_cosine: float | None = None  # pooler_output against fp32 eager on the same input
    notes: list[str] = field(default_factory=list)
    load_s: float | None = None
    rss_after_load_mb: float | None = None
    other_processes_cpu_fraction: float | None = None  # others' share of the CPU while it ran
    rounds_p50_ms: list[float] | None = None  # each round's own p50 (--rounds), in the order run
    samples_ms: list[float] | None = None  # every timed call, pooled over the rounds


ROW_KEYS = tuple(f.name for f in dataclasses.fields(Row))  # every row carries them (the JSON schema)


# --- arguments --------------------------------------------------------------------------------

def _batch_sizes(text: str) -> list[int]:
    return sorted(set(positive_int_list(text)))


def _variants(text: str) -> tuple[str, ...]:
    from runtime.contract.kinds import variant_names

    names = tuple(n.strip() for n in text.split(",") if n.strip())
    unknown = [n for n in names if n not in ("plain", *variant_names())]
    if not names or unknown:
        bad = unknown[0] if unknown else text
        raise argparse.ArgumentTypeError(f"unknown variant {bad!r} (choose from plain, {', '.join(variant_names())})")
    return names


def _cuda_option(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip() or not value.strip():
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE (e.g. sdpa_kernel=2)")
    return key.strip(), value.strip()


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
                             f"groups: {', '.join(GROUPS)} (default: all)")
    parser.add_argument("--batch-sizes", type=_batch_sizes, help="comma-separated (default 1,8,32; --quick 1,8)")
    parser.add_argument("--variants", type=_variants,
                        help="time only these artefacts, comma-separated variant names, 'plain' for the "
                             "unoptimised export (default: every artefact of the export)")
    parser.add_argument("--threads", type=positive_int, help="intra-op threads for every backend (default: all cores)")
    parser.add_argument("--iterations", type=positive_int, help="timed calls per point (default 50; --quick 10)")
    parser.add_argument("--warmup", type=positive_int, help="untimed calls first (default 5; --quick 2)")
    parser.add_argument("--budget-s", type=float,
                        help="stop timing a point after this many seconds, with at least 3 calls "
                             "(default 60; --quick 4)")
    parser.add_argument("--rounds", type=positive_int, default=1,
                        help="run every backend this many times, in alternating order, and pool each point's "
                             "timed calls (--iterations per round): on a machine whose speed drifts, the ratios "
                             "between backends then compare the same stretch of time (default 1)")
    parser.add_argument("--inputs", type=positive_int, default=4,
                        help="distinct inputs cycled through per batch size, so caches do not flatter (default 4)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random inputs (default 0)")
    parser.add_argument("--cuda-option", action="append", default=[], metavar="KEY=VALUE", type=_cuda_option,
                        help="an ONNX Runtime CUDA provider option for the ort-cuda rows, e.g. sdpa_kernel=2 "
                             "(repeatable)")
    args = parser.parse_args(argv)
    quick = args.quick
    args.batch_sizes = args.batch_sizes or ([1, 8] if quick else [1, 8, 32])
    args.iterations = args.iterations or (10 if quick else 50)
    args.warmup = args.warmup or (2 if quick else 5)
    args.budget_s = args.budget_s if args.budget_s is not None else (4.0 if quick else 60.0)
    if args.budget_s <= 0:
        parser.error(f"--budget-s must be > 0, got {args.budget_s}")
    if args.threads is None:
        args.threads = usable_cores()
    args.command = " ".join(["python", "benchmarks/run.py", *(sys.argv[1:] if argv is None else argv)])
    return args


# --- the run ----------------------------------------------------------------------------------

def _progress(start: float, line: str) -> None:
    print(f"[{time.perf_counter() - start:6.1f}s] {line}", file=sys.stderr, flush=True)


def _prepare_reference(manifest: Manifest, plain_onnx: Path, common: dict, scratch: Path, start: float) -> dict:
    """The eager model's weights and reference outputs (a torch worker), or why there are none."""
    if importlib.util.find_spec("torch") is None:
        return {"error": "torch is not installed"}
    job = {"kind": "prepare", **common, "source": manifest.source, "config": manifest.model.config,
           "out_dir": str(scratch), "onnx_path": str(plain_onnx)}
    try:
        prepared = run_worker(job, scratch, "prepare")
    except RuntimeError as exc:
        _progress(start, f"reference not computed (accuracy columns empty): {exc}")
        return {"error": str(exc)}
    _progress(start, f"reference: {prepared['reference_source']}; eager weights: {prepared['weights_source']}")
    return prepared


def _expected_floors(items: list[PlanItem], machine: dict) -> list[str]:
    """The floor keys the runnable items are expected to need (OpenVINO's default: bf16 where the CPU has it)."""
    bf16_cpu = machine["isa"].get("amx_bf16") or machine["isa"].get("avx512_bf16")
    keys = {"fp32"} | {floor_key("bf16" if i.precision == "default" and bf16_cpu else i.precision, i.device)
                       for i in items if i.skipped is None}
    return sorted(keys)


def _run_item(item: PlanItem, index: int, job_base: dict, prepared: dict, scratch: Path, start: float) -> list[Row]:
    """Time one planned item in its own worker; its rows (skipped ones carry the reason)."""
    label = f"{item.backend.name} {item.artefact}"
    batch_sizes = job_base["batch_sizes"]
    if item.skipped is None and not item.backend.formats and "weights" not in prepared:
        item.skipped = f"reference model not built: {prepared.get('error', 'torch missing')}"
    if item.skipped is None:
        job = {**job_base, "backend": item.backend.name, "path": item.path, "precision": item.precision,
               "artefact_precision": item.artefact_precision,
               "weights": prepared.get("weights"), "reference": prepared.get("reference")}
        watch = CpuContention()
        try:
            result = run_worker(job, scratch, f"backend{index}")
        except RuntimeError as exc:
            result = {"error": str(exc)}
        others = watch.report().get("other_processes_cpu_fraction")
        if "error" not in result:
            rows = [Row(**{**_base(item, m["batch_size"]), **m}, provider=result["provider"],
                        notes=list(result.get("notes", [])), load_s=result.get("load_s"),
                        rss_after_load_mb=result.get("rss_after_load_mb"), other_processes_cpu_fraction=others)
                    for m in result["rows"]]
            done = ", ".join(f"b{r.batch_size} " + (f"{format_ms(r.p50_ms)} ms" if r.p50_ms is not None
                                                     else f"skipped ({r.skipped})") for r in rows)
            _progress(start, f"{label} ({rows[0].precision if rows else '?'}): {done}")
            return rows
        item.skipped = result["error"]
    _progress(start, f"{label}: skipped ({item.skipped})")
    return [Row(**_base(item, b), skipped=item.skipped) for b in batch_sizes]


def _run_rounds(items: list[PlanItem], rounds: int, job_base: dict, prepared: dict, scratch: Path,
                start: float) -> list[Row]:
    """Every item timed `rounds` times, forwards then backwards through the plan (each item's
    rounds then straddle the others'), each round in a fresh worker; each point's calls pooled."""
    runs: dict[tuple[int, int], list[Row]] = {}
    for round_ in range(rounds):
        if rounds > 1:
            _progress(start, f"round {round_ + 1} of {rounds}")
        order = list(enumerate(items))
        for index, item in order if round_ % 2 == 0 else order[::-1]:
            for row in _run_item(item, index, job_base, prepared, scratch, start):
                runs.setdefault((index, row.batch_size), []).append(row)
    return [_pooled(runs[key]) for key in sorted(runs)]


def _pooled(rows: list[Row]) -> Row:
    """One point's rounds as one row: statistics over all their calls (worker.summarise); the
    worst accuracy and the highest memory seen; skipped if any round was."""
    first = rows[0]
    if any(r.skipped is not None for r in rows):
        return next(r for r in rows if r.skipped is not None)
    if len(rows) == 1:
        return dataclasses.replace(first, rounds_p50_ms=[first.p50_ms])
    stats = summarise(np.concatenate([r.samples_ms for r in rows]), first.batch_size)
    cosines = [r.min_cosine for r in rows if r.min_cosine is not None]

    def highest(key: str) -> float | None:
        return max((getattr(r, key) for r in rows if getattr(r, key) is not None), default=None)

    return dataclasses.replace(
        first, **stats, rounds_p50_ms=[r.p50_ms for r in rows], min_cosine=min(cosines) if cosines else None,
        warmup=sum(r.warmup for r in rows), peak_rss_mb=highest("peak_rss_mb"), peak_device_mb=highest("peak_device_mb"),
        load_s=highest("load_s"), rss_after_load_mb=highest("rss_after_load_mb"),
        other_processes_cpu_fraction=highest("other_processes_cpu_fraction"),
        notes=list(dict.fromkeys(n for r in rows for n in r.notes)))


def _base(item: PlanItem, batch: int) -> dict:
    return {"backend": item.backend.name, "artefact": item.artefact, "precision": item.precision,
            "batch_size": batch, "device": item.device}


def _ratios(measured: list[Row], rates: dict, flops_total: float) -> dict:
    """Fill each measured row's floor and ratios; returns the floors (ms) per precision and batch size."""
    floors = {k: {b: flops_total * int(b) / (rate * 1e9) * 1e3 for b, rate in r["gflops_per_s"].items()}
              for k, r in rates.items() if "gflops_per_s" in r}
    eager = {r.batch_size: r.p50_ms for r in measured if r.backend == "torch-eager"}
    for r in measured:
        r.floor_key = floor_key(r.precision or "fp32", r.device)
        r.floor_ms = floors.get(r.floor_key, {}).get(str(r.batch_size))
        r.x_floor = r.p50_ms / r.floor_ms if r.floor_ms else None
        r.x_eager = r.p50_ms / eager[r.batch_size] if eager.get(r.batch_size) else None
        if r.floor_ms is None:
            r.notes.append(f"no {r.floor_key} floor: {rates.get(r.floor_key, {}).get('error', 'not measured')}")
    return floors


def benchmark(args: argparse.Namespace) -> dict:
    start = time.perf_counter()
    contention = CpuContention()
    directory = args.artefacts.resolve()
    manifest = load_manifest(directory)
    backends = select_backends(args.backends)
    plain = manifest.find("vision")
    if plain is None:
        raise UserError(f"{directory / MANIFEST} lists no image tower: export it with `python export.py`")
    vision = manifest.model.vision_config
    flops = vision_flops(vision)
    machine = machine_info(args.threads)
    items = plan_backends(backends, manifest, directory, machine["gpu"], args.variants)
    _progress(start, f"{directory}: image tower {flops['total'] / 1e9:.4g} GFLOP/image; "
                     f"{args.threads} threads; batch sizes {args.batch_sizes}")
    common = {"threads": args.threads, "batch_sizes": args.batch_sizes, "input_shape": pixel_shape(vision),
              "seed": args.seed, "vision_config": vision}
    job_base = {"kind": "backend", **common, "iterations": args.iterations, "warmup": args.warmup,
                "budget_s": args.budget_s, "inputs": args.inputs, "cuda_options": dict(args.cuda_option)}
    with tempfile.TemporaryDirectory(prefix="siglip-bench-") as tmp:
        scratch = Path(tmp)
        prepared = _prepare_reference(manifest, directory / plain.file, common, scratch, start)
        # The floor: GEMM rates for the precisions the backends are expected to use, measured
        # before the backends and again after them (a shared machine's load comes and goes).
        floor_job = {"kind": "floor", "batch_sizes": args.batch_sizes, "threads": args.threads,
                     "windows": 3 if args.quick else 5,
                     "window_s": min(0.1 if args.quick else 0.25, args.budget_s / 10), **gemm_shapes(vision)}
        rates_before = measure_floors(_expected_floors(items, machine), floor_job, scratch, "before")
        rows = _run_rounds(items, args.rounds, job_base, prepared, scratch, start)
        # Measured again afterwards, also for any precision a backend turned out to use that was
        # not expected; each rate is the better of the two runs.
        measured = [r for r in rows if r.skipped is None]
        used = {"fp32"} | {floor_key(r.precision, r.device) for r in measured}
        rates = merge_rates(rates_before, measure_floors(sorted(used), floor_job, scratch, "after"))
        _progress(start, "GEMM rates (GFLOP/s, best of before and after the backends): " + "; ".join(
            f"{k}: " + (", ".join(f"b{b} {v:.3g}" for b, v in r["gflops_per_s"].items()) if "gflops_per_s" in r
                        else f"not measured ({r.get('error')})") for k, r in sorted(rates.items())))
    floors = _ratios(measured, rates, flops["total"])
    return {
        "machine": machine,
        "model": {
            "config": vision,
            "gflops_per_image": flops["total"] / 1e9,
            "flops_per_image": flops,
            "source": manifest.source,
            "eager_weights": prepared.get("weights_source"),
            "eager_weights_match_artefacts": prepared.get("weights_match"),
            "accuracy_reference": prepared.get("reference_source"),
        },
        "floor_ms": floors.get("fp32", {}),
        "floor_ms_by_precision": floors,
        "gemm_rates": rates,
        "backends": {b.name: b.description for b in backends},
        "run": _run_info(args, directory, contention),
        "results": [dataclasses.asdict(r) for r in rows],
    }


def _run_info(args: argparse.Namespace, directory: Path, contention: CpuContention) -> dict:
    return {
        "command": args.command,
        "quick": args.quick, "threads": args.threads, "batch_sizes": args.batch_sizes,
        "iterations": args.iterations, "warmup": args.warmup, "budget_s": args.budget_s, "rounds": args.rounds,
        "inputs_per_batch": args.inputs, "seed": args.seed, "artefacts": str(directory),
        "cuda_options": dict(args.cuda_option),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "throughput": "batch_size x timed calls / their total time, one call at a time",
        "peak_rss": "VmHWM of the backend's own worker process after this batch size (sizes run in increasing "
                    "order), including the model, the runtime and the rotated inputs",
        **contention.report(),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.plot is not None and importlib.util.find_spec("matplotlib") is None:
            raise UserError("--plot needs matplotlib: pip install matplotlib")
        if not args.artefacts.is_dir():
            raise UserError(f"artefact directory {args.artefacts} not found: run `python export.py` first "
                            f"(or pass --artefacts DIR)")
        for flag, path in (("--json", args.json), ("--plot", args.plot)):  # before minutes of measuring
            if path is not None and (path.is_dir() or (path.parent.exists() and not os.access(path.parent, os.W_OK))):
                raise UserError(f"{flag} {path} cannot be written (a directory, or in a read-only directory)")
        result = benchmark(args)
    except UserError as exc:
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
