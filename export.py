#!/usr/bin/env python
"""Export SigLIP to ONNX and prove the files match the eager model.

    python export.py                          # siglip-base-patch16-224, random weights -> artifacts/
    python export.py --checkpoint DIR         # a Hugging Face SigLIP checkpoint directory

Exit status: 0 published; 2 bad input (one line on stderr); 3 an artefact failed its parity
gate (nothing published); 1 an internal error.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from runtime.cli_support import ArgumentParser, non_negative_int, positive_int, run_command
from runtime.errors import UserError


def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _towers(text: str) -> tuple[str, ...]:
    towers = tuple(t.strip() for t in text.split(",") if t.strip())
    bad = [t for t in towers if t not in ("vision", "text")]
    if not towers or bad:
        raise argparse.ArgumentTypeError(f"expected vision, text or vision,text, got {text!r}")
    return towers


def _variants(text: str) -> tuple[str, ...]:
    from siglip_export.optimize import VARIANTS

    variants = tuple(dict.fromkeys(v.strip() for v in text.split(",") if v.strip()))
    bad = [v for v in variants if v not in VARIANTS]
    if not variants or bad:
        raise argparse.ArgumentTypeError(f"unknown variant {(bad or [text])[0]!r} (choose from {', '.join(VARIANTS)})")
    return variants


def _gate(text: str) -> tuple[str, float]:
    name, _, value = text.partition("=")
    try:
        return name.strip(), float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected VARIANT=MIN_COSINE, got {text!r}") from None


def parse_args(argv=None) -> argparse.Namespace:
    from siglip_export.config import DEFAULT_PRESET, PRESETS
    from siglip_export.onnx_export import DEFAULT_OPSET, MAX_OPSET, MIN_OPSET
    from siglip_export.optimize import DEFAULT_GATES, VARIANTS
    from siglip_export.triton import add_triton_arguments

    parser = ArgumentParser(
        prog="export.py",
        description="Export SigLIP to ONNX (dynamic batch axis), simplify it, verify it against the "
        "eager PyTorch model, and publish it atomically with a manifest.",
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--checkpoint", type=Path, metavar="DIR",
                        help="Hugging Face SigLIP checkpoint directory (config.json + model.safetensors)")
    source.add_argument("--preset", choices=sorted(PRESETS), metavar="NAME",
                        help=f"architecture of a released model, with seeded random weights "
                        f"(default {DEFAULT_PRESET}); one of: {', '.join(PRESETS)}")
    parser.add_argument("--output-dir", type=Path, default=Path("artifacts"), metavar="DIR",
                        help="where the artefacts are published (default: artifacts)")
    parser.add_argument("--towers", type=_towers, default=None, metavar="vision,text",
                        help="towers to export (default: every tower the model has)")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, metavar="N",
                        help=f"ONNX opset, {MIN_OPSET}..{MAX_OPSET} (default {DEFAULT_OPSET})")
    parser.add_argument("--verify-batch-sizes", type=_int_list, default=(1, 3, 8), metavar="1,3,8",
                        help="batch sizes the parity gate runs (default 1,3,8)")
    parser.add_argument("--no-simplify", action="store_true", help="skip onnxsim")
    parser.add_argument("--seed", type=non_negative_int, default=0, help="seed for random weights and random inputs (default 0)")
    parser.add_argument("--threads", type=positive_int, default=None, metavar="N",
                        help="ONNX Runtime threads during verification (default: all cores)")
    parser.add_argument("--variants", type=_variants, default=(), metavar="opt,int8,...",
                        help=f"faster artefacts to build, each published only within its gate: {', '.join(VARIANTS)}")
    parser.add_argument("--gate", type=_gate, action="append", default=[], metavar="VARIANT=MIN_COSINE",
                        help="override a variant's gate (minimum cosine of pooler_output vs eager fp32); defaults: "
                        + ", ".join(f"{k}={v}" for k, v in DEFAULT_GATES.items()))
    parser.add_argument("--calibration-images", type=Path, default=None, metavar="DIR",
                        help="images for int8-qdq calibration (default: the packaged photos)")
    parser.add_argument("--trt-profile", type=_int_list, default=(1, 8, 64), metavar="MIN,OPT,MAX",
                        help="TensorRT engine batch profile (default 1,8,64)")
    parser.add_argument("--triton-repo", type=Path, default=None, metavar="DIR",
                        help="also write a Triton model repository of the published artefacts (--triton-* flags)")
    add_triton_arguments(parser)
    parser.add_argument("--quiet", action="store_true", help="print only errors and the summary table")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    return parser.parse_args(argv)


def _terminate(signum, frame):  # SIGTERM: unwind like Ctrl-C so the scratch directory is removed
    raise KeyboardInterrupt


def main(argv=None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    from siglip_export.pipeline import ExportOptions, run_export
    from siglip_export.triton import write_triton_repo
    from siglip_export.verify import Gate, VerificationError

    options = ExportOptions(
        checkpoint=args.checkpoint, preset=args.preset, output_dir=args.output_dir, towers=args.towers,
        opset=args.opset, verify_batch_sizes=args.verify_batch_sizes, simplify=not args.no_simplify,
        seed=args.seed, gate=Gate(), threads=args.threads, variants=args.variants, gates=dict(args.gate),
        calibration_images=args.calibration_images, trt_profile=args.trt_profile,
    )
    result: dict = {}

    def export() -> None:
        triton = check_triton_request(args) if args.triton_repo is not None else None  # before the long export
        result.update(run_export(options, emit=None if args.quiet else print))
        report(result, args.output_dir)
        if triton is not None:
            try:
                models = write_triton_repo(args.output_dir, args.triton_repo, triton)
            except UserError as exc:
                raise UserError(f"the export was published, but the Triton repository was not written: {exc}") from None
            if not args.quiet:
                print(f"Triton repository {args.triton_repo}: {', '.join(m.name for m in models)}")

    return run_command(export, debug=args.debug,
                       failures={VerificationError: (3, "parity gate failed, nothing published\n")})


def check_triton_request(args):
    """Triton options, checked before exporting: flags, target directory, and variants the export will make."""
    from siglip_export.publication import is_within
    from siglip_export.triton import check_repo_target, triton_options

    options = triton_options(args)
    check_repo_target(args.triton_repo)
    if is_within(args.triton_repo, args.output_dir) or is_within(args.output_dir, args.triton_repo):
        raise UserError(f"--triton-repo {args.triton_repo} and --output-dir {args.output_dir} must not contain "
                        f"each other (each is replaced whole)")
    missing = [v for v in options.variants if v is not None and v not in args.variants]
    if missing:
        raise UserError(f"--triton-variants asks for {missing[0]!r}, which --variants does not build")
    return options


def report(manifest: dict, output_dir: Path) -> None:
    """The summary table, then a warning per rejected variant and for random weights."""
    from siglip_export.pipeline import summary_table

    print(summary_table(manifest, output_dir))
    for art in manifest["rejected"]:
        reason = art["reason"] if "accuracy" not in art else (
            f"min cosine {art['accuracy']['pooler_output_min_cosine']:.6f} below its gate "
            f"{art['parity']['gate']['min_cosine']}")
        print(f"WARNING: {art['file']} not published: {reason}")
    if manifest["source"].get("random_weights"):
        print(f"\nWARNING: {manifest['source']['warning']}")


if __name__ == "__main__":
    sys.exit(main())
