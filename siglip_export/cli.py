"""`siglip-export` (or `python export.py`): export SigLIP to ONNX and prove the files match the eager model.

    siglip-export                          # siglip-base-patch16-224, random weights -> artifacts/
    siglip-export --checkpoint DIR         # a Hugging Face SigLIP checkpoint directory

Exit status: 0 published; 2 bad input (one line on stderr), or the `export` extra is not
installed; 3 an artefact failed its parity gate (nothing published); 1 an internal error.

This module imports only the standard library and `runtime` at first, so that without the
export extra it can say what to install instead of failing in an import.
"""

from __future__ import annotations

import argparse
import importlib.util
import signal
import sys
from pathlib import Path

from runtime.cli_support import (
    ArgumentParser,
    attach_negative_values,
    non_negative_int,
    positive_int,
    positive_int_list,
    run_command,
)
from runtime.contract.kinds import KINDS, TOWERS, variant_names
from runtime.contract.manifest import Manifest
from runtime.errors import UserError

# What `export.py` imports (module name -> distribution), all in the `export` extra.
EXPORT_MODULES = {"torch": "torch", "onnx": "onnx", "onnxscript": "onnxscript", "onnxsim": "onnxsim",
                  "safetensors": "safetensors"}


def missing_export_modules() -> list[str]:
    return [dist for module, dist in EXPORT_MODULES.items() if importlib.util.find_spec(module) is None]


def _towers(text: str) -> tuple[str, ...]:
    towers = tuple(t.strip() for t in text.split(",") if t.strip())
    bad = [t for t in towers if t not in TOWERS]
    if not towers or bad:
        raise argparse.ArgumentTypeError(f"expected vision, text or vision,text, got {text!r}")
    return towers


def _variants(text: str) -> tuple[str, ...]:
    known = variant_names()
    variants = tuple(dict.fromkeys(v.strip() for v in text.split(",") if v.strip()))
    bad = [v for v in variants if v not in known]
    if not variants or bad:
        raise argparse.ArgumentTypeError(f"unknown variant {(bad or [text])[0]!r} (choose from {', '.join(known)})")
    return variants


def _gate(text: str) -> tuple[str, float]:
    name, _, value = text.partition("=")
    try:
        return name.strip(), float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected VARIANT=MIN_COSINE, got {text!r}") from None


def parse_args(argv=None, prog: str = "export.py") -> argparse.Namespace:
    from .graph.torch_export import DEFAULT_OPSET, MAX_OPSET, MIN_OPSET
    from .model.config import DEFAULT_PRESET, PRESETS
    from .triton.flags import add_triton_arguments
    from .variants.targets import CHOICES as TARGET_CHOICES

    parser = ArgumentParser(
        prog=prog,
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
    parser.add_argument("--verify-batch-sizes", type=positive_int_list, default=(1, 3, 8), metavar="1,3,8",
                        help="batch sizes the parity gate runs (default 1,3,8)")
    parser.add_argument("--no-simplify", action="store_true", help="skip onnxsim")
    parser.add_argument("--seed", type=non_negative_int, default=0, help="seed for random weights and random inputs (default 0)")
    parser.add_argument("--threads", type=positive_int, default=None, metavar="N",
                        help="ONNX Runtime threads during verification (default: all cores)")
    parser.add_argument("--target", choices=TARGET_CHOICES, default=None,
                        help="what the artefacts are for: cpu builds the CPU's fast variants (opt, ov-bf16, "
                        "ov-int8; add --variants int8 for ONNX Runtime's int8), gates each and races them here at batch 1 and 8, so that siglip-runtime runs the "
                        "fastest verified one by default; cuda the GPU's (fp16, cuda-fp16, trt-fp16; raced on a GPU, "
                        "chosen by rule elsewhere); portable the plain fp32 file only; auto: cuda where this machine "
                        "has an NVIDIA GPU with ONNX Runtime's CUDA provider, else cpu (default: none of this, only "
                        "--variants)")
    faster = [v for v in variant_names() if KINDS[v].gate is not None]
    parser.add_argument("--variants", type=_variants, default=(), metavar="opt,int8,...",
                        help=f"faster artefacts to build, each published only within its gate: {', '.join(faster)}")
    parser.add_argument("--gate", type=_gate, action="append", default=[], metavar="VARIANT=MIN_COSINE",
                        help="override a variant's gate (minimum cosine of pooler_output vs eager fp32); defaults: "
                        + ", ".join(f"{v}={KINDS[v].gate}" for v in faster))
    parser.add_argument("--image-size", type=positive_int, default=None, metavar="PIXELS",
                        help="export for another input size than the checkpoint's (a multiple of the patch size); "
                        "position embeddings interpolated bicubically, as transformers' interpolate_pos_encoding")
    parser.add_argument("--hidden-states", default=None, metavar="LIST",
                        help="also write vision_model.features.onnx with transformers' hidden_states[i] as outputs "
                        "hidden_state_<i> (e.g. -2, or 4,8,-1, or all; 0 is the patch embeddings)")
    parser.add_argument("--attention", nargs="?", const="", default=None, metavar="LAYERS",
                        help="also output the pooling head's attention over the patches (pooler_attention) in "
                        "vision_model.features.onnx; with LAYERS (e.g. -1 or 0,5), those encoder layers' "
                        "self-attention too (attention_<l>), averaged over heads")
    parser.add_argument("--calibration-images", type=Path, default=None, metavar="DIR",
                        help="images int8-qdq and ov-int8 calibrate on, with 2 random inputs (default: the packaged photos)")
    parser.add_argument("--trt-profile", type=positive_int_list, default=(1, 8, 64), metavar="MIN,OPT,MAX",
                        help="TensorRT engine batch profile (default 1,8,64)")
    parser.add_argument("--triton-repo", type=Path, default=None, metavar="DIR",
                        help="also write a Triton model repository of the published artefacts (--triton-* flags)")
    add_triton_arguments(parser)
    parser.add_argument("--quiet", action="store_true", help="print only errors and the summary table")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    argv = list(sys.argv[1:] if argv is None else argv)
    return parser.parse_args(attach_negative_values(argv, ("--hidden-states", "--attention")))


def _terminate(signum, frame):  # SIGTERM: unwind like Ctrl-C so the scratch directory is removed
    raise KeyboardInterrupt


def main(argv=None, prog: str | None = None) -> int:
    prog = prog or ("siglip-export" if Path(sys.argv[0]).name == "siglip-export" else "export.py")
    missing = missing_export_modules()
    if missing:
        print(f"error: {prog} needs the export extra, which is not installed (missing: {', '.join(missing)}); "
              f"install it with: pip install \"siglip-export[export]\" (in a checkout: pip install -e \".[export]\")",
              file=sys.stderr)
        return 2
    args = parse_args(argv, prog)
    signal.signal(signal.SIGTERM, _terminate)
    from .pipeline import ExportOptions, run_export
    from .triton.repository import write_triton_repo
    from .verify.gate import Gate, VerificationError

    options = ExportOptions(
        checkpoint=args.checkpoint, preset=args.preset, output_dir=args.output_dir, towers=args.towers,
        opset=args.opset, verify_batch_sizes=args.verify_batch_sizes, simplify=not args.no_simplify,
        seed=args.seed, gate=Gate(), threads=args.threads, variants=args.variants, target=args.target,
        gates=dict(args.gate),
        calibration_images=args.calibration_images, trt_profile=args.trt_profile,
        hidden_states=args.hidden_states, attention=args.attention, image_size=args.image_size,
    )

    def export() -> None:
        triton = check_triton_request(args) if args.triton_repo is not None else None  # before the long export
        manifest = run_export(options, emit=None if args.quiet else print)
        print("\n".join(report_lines(manifest, args.output_dir)))
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
    from .publication import is_within
    from .triton.flags import triton_options
    from .triton.repository import check_repo_target

    options = triton_options(args)
    check_repo_target(args.triton_repo)
    if is_within(args.triton_repo, args.output_dir) or is_within(args.output_dir, args.triton_repo):
        raise UserError(f"--triton-repo {args.triton_repo} and --output-dir {args.output_dir} must not contain "
                        f"each other (each is replaced whole)")
    built = set(args.variants)
    if args.target is not None:
        from .variants.targets import resolve

        built |= set(resolve(args.target).variants)
    missing = [v for v in options.variants if v is not None and v not in built]
    if missing:
        raise UserError(f"--triton-variants asks for {missing[0]!r}, which --variants (or --target) does not build")
    return options


# --- what is printed when it is done: every artefact with its size and accuracy, and why each
# variant that was asked for is not there

def summary_table(manifest: Manifest, output_dir: Path) -> str:
    """Markdown: one row per published, rejected and skipped artefact."""
    rows = ["| artefact | size | accuracy vs eager fp32 (worst over inputs and batch sizes) | gate | path |",
            "| --- | --- | --- | --- | --- |"]
    for art in manifest.artefacts:
        n = art.parity.worst()
        batches = ",".join(map(str, art.parity.batch_sizes))
        accuracy = (f"pooler cos {n['pooler_output_min_cosine']:.6f}, hidden cos {n['last_hidden_state_min_cosine']:.6f}, "
                    f"hidden rel err {n['last_hidden_state_rel_err']:.1e} (batch {batches})")
        rows.append(f"| {art.file} | {art.size_bytes / 1e6:.1f} MB | {accuracy} | pass | {Path(output_dir) / art.file} |")
    for art in manifest.rejected:
        rows.append(f"| {art.file} | - | {rejection(art)} | REJECTED | not published |")
    for art in manifest.skipped:
        rows.append(f"| {art.file} | - | {art.reason} | skipped | not built |")
    return "\n".join(rows)


def rejection(art) -> str:
    """Why a variant was not published: its numbers against the gate, or what failed."""
    if art.accuracy is None or art.parity is None:
        return art.reason
    return f"pooler cos {art.accuracy['pooler_output_min_cosine']:.6f} < {art.parity.gate.min_cosine}"


def report_lines(manifest: Manifest, output_dir: Path) -> list[str]:
    """The summary table, then a warning per rejected variant and for random weights."""
    lines = [summary_table(manifest, output_dir)]
    for art in manifest.rejected:
        reason = art.reason if art.accuracy is None else (
            f"min cosine {art.accuracy['pooler_output_min_cosine']:.6f} below its gate {art.parity.gate.min_cosine}")
        lines.append(f"WARNING: {art.file} not published: {reason}")
    selection = manifest.selection
    if selection is not None and selection.raced:
        for tower in selection.towers:
            results = selection.results(tower)
            if results:
                runner_up = f"; runner-up {results[1].label}, {results[1].timing()}" if len(results) > 1 else ""
                lines.append(f"fastest {tower} tower on this machine: {results[0].label}, {results[0].timing()}"
                             f"{runner_up} (siglip-runtime runs it by default)")
    elif selection is not None and selection.towers:
        lines.append(f"{selection.target}: {selection.note}")
    if manifest.source.get("random_weights"):
        lines.append(f"\nWARNING: {manifest.source['warning']}")
    return lines


if __name__ == "__main__":
    sys.exit(main())
