"""The Triton flags, shared by `export.py --triton-repo DIR` and `python -m siglip_export.triton
ARTEFACTS DIR` (for an export that already exists)."""

from __future__ import annotations

from runtime.cli_support import int_list, positive_int

from .repository import TritonOptions


def _batch_list(text: str) -> tuple[int, ...]:
    """argparse type: comma-separated batch sizes, possibly none."""
    return int_list(text, allow_empty=True)


def add_triton_arguments(parser) -> None:
    """The --triton-* flags (all but --triton-repo) on an argparse parser."""
    group = parser.add_argument_group("Triton model repository")
    group.add_argument("--triton-max-batch", type=positive_int, default=64, metavar="N",
                       help="max_batch_size of every model (default 64; a TensorRT engine: at most its profile's max)")
    group.add_argument("--triton-preferred-batch", type=_batch_list, default=(8, 16, 32), metavar="8,16,32",
                       help="batch sizes the dynamic batcher prefers to form (default 8,16,32; empty: none)")
    group.add_argument("--triton-queue-delay-us", type=int, default=100, metavar="US",
                       help="how long a request may wait for others to batch with, microseconds (default 100)")
    group.add_argument("--triton-instances", type=positive_int, default=1, metavar="N",
                       help="model instances per device (default 1)")
    group.add_argument("--triton-kind", choices=("auto", "gpu", "cpu"), default="auto",
                       help="where instances run: auto (GPU if there is one), gpu or cpu (default auto)")
    group.add_argument("--triton-tensorrt", action="store_true",
                       help="run the ONNX models through ONNX Runtime's TensorRT execution provider")
    group.add_argument("--triton-tensorrt-precision", choices=("fp32", "fp16", "int8"), default="fp16",
                       help="precision for --triton-tensorrt (default fp16; int8 needs a QDQ variant)")
    group.add_argument("--triton-variants", default="plain", metavar="plain,opt,...",
                       help="ONNX files to serve: plain (<tower>_model.onnx) and/or variant names (default plain)")
    group.add_argument("--no-triton-engines", action="store_true",
                       help="leave out the TensorRT engines the export built (served as tensorrt_plan by default)")
    group.add_argument("--triton-prefix", default="siglip", metavar="NAME",
                       help="first part of every model name (default siglip: siglip_vision, siglip_text, ...)")


def triton_options(args) -> TritonOptions:
    """TritonOptions from parsed --triton-* flags (UserError naming a bad value)."""
    variants = [v.strip() for v in args.triton_variants.split(",") if v.strip()]
    return TritonOptions(
        max_batch_size=args.triton_max_batch, preferred_batch_sizes=args.triton_preferred_batch,
        max_queue_delay_us=args.triton_queue_delay_us, instance_count=args.triton_instances,
        instance_kind=f"KIND_{args.triton_kind.upper()}", tensorrt_accelerator=args.triton_tensorrt,
        tensorrt_precision=args.triton_tensorrt_precision.upper(),
        variants=tuple(None if v == "plain" else v for v in variants),
        include_engines=not args.no_triton_engines, prefix=args.triton_prefix,
    )


__all__ = ["add_triton_arguments", "triton_options"]
