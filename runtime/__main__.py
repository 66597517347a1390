"""`siglip-runtime` (or `python -m runtime`): run an exported artefact directory: embed images,
classify them zero-shot, draw attention maps, serve the models from Triton, index an image
collection and search it.

    siglip-runtime embed artifacts cat.jpg dog.jpg --output vectors.npy [--normalize]
    siglip-runtime classify artifacts cat.jpg --labels cat dog "a red car" [--json]
    siglip-runtime embed artifacts cat.jpg --layer -2 --output patches.npy      # [N, patches, hidden]
    siglip-runtime attention artifacts cat.jpg dog.jpg --output-dir maps/ [--layer L] [--json]
    siglip-runtime serve artifacts [--http-port 8000] [--grpc-port 8001] [--max-batch 64] ...
    siglip-runtime index photos/ --artefacts artifacts --output photos.index [--ray [ADDRESS]]
    siglip-runtime search photos.index "a red car" [--top-k 10] [--json]     # or --image query.jpg

Every subcommand that reads an artefact directory takes it as `--artefacts DIR`; embed, classify,
attention and serve also take it as their first argument (`embed DIR IMAGE...`).

Exit status: 0 done; 2 bad input (one line on stderr: a missing or corrupt image, a missing
artefact directory, a model without a text tower or tokenizer, ...); 1 an internal error.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path

import numpy as np

from .cli_support import ArgumentParser, attach_negative_values, non_negative_int, positive_int, run_command
from .contract.kinds import PROVIDERS, variant_names
from .errors import UserError
from .files import write_atomic
from .runners.onnxruntime_model import TensorRTOptions
from .serving.server import PYTRITON_INSTALL


def parse_args(argv=None) -> argparse.Namespace:
    invoked = Path(sys.argv[0]).name
    parser = ArgumentParser(prog=invoked if invoked == "siglip-runtime" else "python -m runtime",
                            description=" ".join(__doc__.split("\n\n")[0].split()))
    common = ArgumentParser(add_help=False)
    common.add_argument("items", nargs="+", metavar="[ARTEFACT_DIR] IMAGE",
                        help="the artefact directory written by export.py (unless --artefacts names it), then the "
                        "image files")
    common.add_argument("--artefacts", type=Path, default=None, metavar="DIR", help="the artefact directory")
    common.add_argument("--provider", choices=("auto", *PROVIDERS), default="auto",
                        help="where to run: ONNX Runtime's cpu, cuda or tensorrt provider, or openvino (OpenVINO's "
                        "CPU plugin); default auto: TensorRT, then CUDA, then CPU, among the runtimes the export "
                        "verified the file in")
    common.add_argument("--allow-unverified", action="store_true",
                        help="run a variant in a runtime where the export did not verify it (or where it failed)")
    common.add_argument("--threads", type=positive_int, default=None, help="ONNX Runtime threads (default: all cores)")
    common.add_argument("--batch-size", type=positive_int, default=32, help="images per model call (default 32)")
    common.add_argument("--variant", default=None,
                        help=f"run one of the image tower's variants ({', '.join(variant_names())}), or fp32 (plain) "
                        "for the plain file; classify uses the text tower's variant too when the export has one. "
                        "Default: the fastest verified file the export's race recorded for the provider in use "
                        "(export.py --target), else fp32; the choice and its reason are printed")
    common.add_argument("--trt-fp16", action="store_true", help="TensorRT provider: build an fp16 engine")
    common.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)
    embed = sub.add_parser("embed", parents=[common], help="write pooled image embeddings to a .npy file")
    embed.add_argument("--output", type=Path, required=True, metavar="FILE.npy", help="float32 [N, hidden] array")
    embed.add_argument("--normalize", action="store_true", help="L2-normalise each embedding")
    embed.add_argument("--layer", type=int, default=None, metavar="I",
                       help="write patch features [N, patches, hidden] of transformers' hidden_states[I] instead "
                       "(e.g. -2; needs an export with --hidden-states)")
    attention = sub.add_parser("attention", parents=[common], help="attention heatmaps over the images (PNG, JSON)")
    attention.add_argument("--output-dir", type=Path, default=None, metavar="DIR",
                           help="write <image name>.png per image: the heatmap blended over the image")
    attention.add_argument("--layer", type=int, default=None, metavar="L",
                           help="an encoder layer's self-attention (attention received per patch, averaged over "
                           "heads and queries) instead of the pooling head's (needs an export with --attention L)")
    attention.add_argument("--json", action="store_true", help='print [{"image": path, "grid": [[...]]}]')
    classify = sub.add_parser("classify", parents=[common], help="zero-shot sigmoid probabilities per label")
    classify.add_argument("--labels", nargs="+", required=True, metavar="LABEL", help="candidate labels")
    classify.add_argument("--template", default=None, help='prompt with {} for the label (default "This is a photo of {}.")')
    classify.add_argument("--json", action="store_true", help='print [{"image": path, "scores": {label: p}}]')
    serve = sub.add_parser("serve", help="serve the artefacts from a Triton Inference Server (HTTP, gRPC, metrics)",
                           description="Serve the image tower, the text tower and zero-shot classification from "
                           "Triton Inference Server (Python backend around runtime), in the foreground until "
                           "Ctrl-C or SIGTERM. Needs: " + PYTRITON_INSTALL)
    serve.add_argument("artefact_dir", type=Path, nargs="?", default=None, metavar="ARTEFACT_DIR",
                       help="directory written by export.py (or --artefacts DIR)")
    serve.add_argument("--artefacts", type=Path, default=None, metavar="DIR", help="the artefact directory")
    serve.add_argument("--variant", default=None,
                       help="serve this variant of each tower that has it, or fp32 (default: each tower's fastest "
                       "verified file from the export's race, else fp32; the model names stay siglip_vision / "
                       "siglip_text)")
    serve.add_argument("--provider", choices=("auto", *PROVIDERS), default="auto", help="as for embed")
    serve.add_argument("--allow-unverified", action="store_true", help="as for embed")
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to listen on (default 127.0.0.1, this machine only; 0.0.0.0 for every interface)")
    serve.add_argument("--http-port", type=positive_int, default=8000, help="default 8000")
    serve.add_argument("--grpc-port", type=positive_int, default=8001, help="default 8001")
    serve.add_argument("--metrics-port", type=positive_int, default=8002, help="default 8002 (Prometheus /metrics)")
    serve.add_argument("--max-batch", type=positive_int, default=64,
                       help="largest batch Triton forms from queued requests or accepts in one (default 64)")
    serve.add_argument("--queue-delay-us", type=non_negative_int, default=100,
                       help="how long a request may wait for others to batch with (default 100)")
    serve.add_argument("--instances", type=positive_int, default=1, help="model copies (processes) per model (default 1)")
    serve.add_argument("--threads", type=positive_int, default=None,
                       help="ONNX Runtime threads per instance (default: the cores divided among the instances)")
    serve.add_argument("--exit-timeout-s", type=non_negative_int, default=20,
                       help="on SIGTERM / Ctrl-C, how long Triton may wait for open HTTP connections (idle keep-alive "
                       "ones too) and in-flight requests (default 20: with the 5 s before a kill, a stop fits "
                       "Kubernetes' default 30 s grace period)")
    serve.add_argument("--no-zero-shot", action="store_true", help="do not serve <prefix>_zero_shot")
    serve.add_argument("--verbose", action="store_true", help="show Triton's own log")
    serve.add_argument("--debug", action="store_true", help="show tracebacks")
    _index_parsers(sub)
    args, extra = parser.parse_known_args(argv)
    # argparse gives the optional TEXT of `search INDEX --top-k 3 TEXT` no place after an option
    if args.command == "search" and args.query is None and len(extra) == 1 and not extra[0].startswith("-"):
        args.query, extra = extra[0], []
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command in ("embed", "classify", "attention"):
        if args.artefacts is None:
            if len(args.items) < 2:
                parser.error(f"{args.command} needs an artefact directory and at least one image "
                             f"({args.command} DIR IMAGE... or {args.command} --artefacts DIR IMAGE...)")
            args.artefacts, args.items = Path(args.items[0]), args.items[1:]
        args.images = list(args.items)
    elif args.command == "serve":
        if args.artefacts is not None and args.artefact_dir is not None and args.artefacts != args.artefact_dir:
            parser.error(f"serve got two artefact directories ({args.artefact_dir} and --artefacts {args.artefacts})")
        args.artefacts = args.artefacts or args.artefact_dir
        if args.artefacts is None:
            parser.error("serve needs an artefact directory (serve DIR or serve --artefacts DIR)")
    return args


def _index_parsers(sub) -> None:
    runs = ArgumentParser(add_help=False)
    runs.add_argument("--provider", choices=("auto", *PROVIDERS), default="auto", help="as for embed")
    runs.add_argument("--allow-unverified", action="store_true", help="as for embed")
    runs.add_argument("--threads", type=positive_int, default=None, help="ONNX Runtime threads (default: all cores)")
    runs.add_argument("--debug", action="store_true", help="show tracebacks")
    index = sub.add_parser("index", parents=[runs], help="embed an image collection into a searchable index",
                           description="Embed every image of SOURCE into an index directory, in shards a re-run "
                           "resumes; unreadable images are listed in INDEX/failures.json, not fatal. Needs: "
                           "pip install 'siglip-export[index]'")
    index.add_argument("source", type=Path, metavar="SOURCE",
                       help="a directory (recursive), a text file of paths (one per line), or a CSV / Parquet file "
                       "with a column of paths")
    index.add_argument("--artefacts", type=Path, required=True, metavar="DIR", help="directory written by export.py")
    index.add_argument("--output", type=Path, required=True, metavar="INDEX", help="index directory (created or resumed)")
    index.add_argument("--column", default=None, help="CSV / Parquet column of paths (default: path, or the only one)")
    index.add_argument("--variant", default=None,
                       help=f"image tower variant ({', '.join(variant_names())}) or fp32 (default: the fastest verified "
                       "file from the export's race, else fp32)")
    index.add_argument("--batch-size", type=positive_int, default=32, help="images per model call (default 32)")
    index.add_argument("--workers", type=positive_int, default=None,
                       help="threads decoding and resizing images while the model runs (default: the cores, at most 8)")
    index.add_argument("--shard-size", type=positive_int, default=1024,
                       help="images per shard, the unit a re-run resumes from (default 1024)")
    index.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                       help="run on Ray Data: a local Ray cluster, or the one at ADDRESS (e.g. auto, ray://head:10001)")
    index.add_argument("--ray-actors", type=positive_int, default=None,
                       help="encoder actors (default: the cluster's CPUs / --ray-cpus-per-actor; GPUs with cuda)")
    index.add_argument("--ray-cpus-per-actor", type=positive_int, default=1, help="CPUs per encoder actor (default 1)")
    search = sub.add_parser("search", parents=[runs], help="search an index by text or by image")
    search.add_argument("index", type=Path, metavar="INDEX", help="directory written by siglip-runtime index")
    search.add_argument("query", nargs="?", default=None, metavar="TEXT", help="text describing the images wanted")
    search.add_argument("--image", type=Path, default=None, metavar="FILE", help="find images like this one instead")
    search.add_argument("--top-k", type=positive_int, default=10, help="results (default 10)")
    search.add_argument("--artefacts", type=Path, default=None, metavar="DIR",
                        help="the artefact directory (default: the one recorded in the index; must be the same model)")
    search.add_argument("--json", action="store_true", help='print [{"rank", "path", "score"[, "probability"]}]')


def _serve(args: argparse.Namespace) -> None:
    from .serving.server import Server, ServerError, serve_forever
    from .serving.settings import ServeOptions

    options = ServeOptions(variant=args.variant, provider=args.provider, host=args.host, http_port=args.http_port,
                           grpc_port=args.grpc_port, metrics_port=args.metrics_port, max_batch=args.max_batch,
                           queue_delay_us=args.queue_delay_us, instances=args.instances, threads=args.threads,
                           allow_unverified=args.allow_unverified, zero_shot=not args.no_zero_shot,
                           exit_timeout_s=args.exit_timeout_s)
    status = serve_forever(Server(args.artefacts, options, verbose=args.verbose))
    if status:
        raise ServerError("tritonserver stopped unexpectedly (see above)")


def _save_npy(path: Path, array: np.ndarray) -> None:
    """Write through a temporary name in the same directory, then rename: never a half-written file."""
    if path.suffix != ".npy":
        raise UserError(f"--output must end in .npy, got {path}")
    if path.is_dir():
        raise UserError(f"--output {path} is a directory")
    blob = io.BytesIO()
    np.save(blob, array)
    write_atomic(path, blob.getvalue())


def _attention(args: argparse.Namespace, encoder) -> None:
    """Heatmaps per image: PNGs in --output-dir and/or the grids as JSON on stdout."""
    from .heatmaps import overlay, patch_grid

    if args.output_dir is None and not args.json:
        raise UserError("attention needs --output-dir DIR (PNG heatmaps) and/or --json (the grids)")
    if args.output_dir is not None and args.output_dir.exists() and not args.output_dir.is_dir():
        raise UserError(f"--output-dir {args.output_dir} is not a directory")
    grids = [patch_grid(w) for w in encoder.attention(args.images, layer=args.layer)]
    if args.output_dir is not None:
        args.output_dir.mkdir(parents=True, exist_ok=True)
    written, names = [], set()
    for image, grid in zip(args.images, grids if args.output_dir is not None else []):
        stem, n = Path(image).stem, 1
        name = f"{stem}.png"
        while name in names:  # two images of one name: cat.png, cat-1.png
            name, n = f"{stem}-{n}.png", n + 1
        names.add(name)
        target = args.output_dir / name
        blob = io.BytesIO()
        overlay(image, grid).save(blob, format="PNG")
        write_atomic(target, blob.getvalue())
        written.append(target)
    what = "pooling head" if args.layer is None else f"layer {args.layer}"
    if args.json:
        print(json.dumps([{"image": image, "layer": args.layer, "grid": np.round(grid, 6).tolist()}
                          for image, grid in zip(args.images, grids)], indent=2))
    if written:
        print(f"wrote {len(written)} {what} attention heatmaps to {args.output_dir} ({encoder.provider})",
              file=sys.stderr)


def _index(args: argparse.Namespace) -> None:
    from .index.build import IndexOptions, build_index

    options = IndexOptions(variant=args.variant, provider=args.provider, threads=args.threads,
                           batch_size=args.batch_size, workers=args.workers, shard_size=args.shard_size,
                           column=args.column, allow_unverified=args.allow_unverified, ray=args.ray,
                           ray_actors=args.ray_actors, ray_cpus_per_actor=args.ray_cpus_per_actor)
    build_index(args.source, args.artefacts, args.output, options,
                emit=lambda line: print(line, file=sys.stderr, flush=True))


def _search(args: argparse.Namespace) -> None:
    from .index.search import ImageIndex

    if (args.query is None) == (args.image is None):
        raise UserError("search takes a text query or --image FILE (one of them)")
    index = ImageIndex(args.index, args.artefacts, provider=args.provider, threads=args.threads,
                       allow_unverified=args.allow_unverified)
    results = (index.search_text(args.query, args.top_k) if args.image is None
               else index.search_image(str(args.image), args.top_k))
    if args.json:
        print(json.dumps(results, indent=2))
        return
    for row in results:
        extra = f"  p={row['probability']:.4f}" if "probability" in row else ""
        print(f"{row['rank']:>3}  {row['score']:.4f}{extra}  {row['path']}")


def run(args: argparse.Namespace) -> None:
    from .encoders import DEFAULT_TEMPLATE, ImageEncoder, ZeroShotClassifier

    if args.command in ("index", "search"):
        (_index if args.command == "index" else _search)(args)
        return

    options = dict(provider=args.provider, threads=args.threads, batch_size=args.batch_size,
                   tensorrt=TensorRTOptions(fp16=args.trt_fp16), allow_unverified=args.allow_unverified)
    if args.command == "attention":
        _attention(args, ImageEncoder(args.artefacts, variant=args.variant, **options))
        return
    if args.command == "embed" and args.layer is not None:
        if args.normalize:
            raise UserError("--normalize applies to pooled embeddings, not to --layer patch features")
        encoder = ImageEncoder(args.artefacts, variant=args.variant, **options)
        features = encoder.features(args.images, layers=[args.layer])[args.layer]
        _save_npy(args.output, features.astype(np.float32))
        print(f"wrote {' x '.join(map(str, features.shape))} patch features of hidden state {args.layer} to "
              f"{args.output} ({encoder.describe()})", file=sys.stderr)
        return
    if args.command == "embed":
        encoder = ImageEncoder(args.artefacts, variant=args.variant, **options)
        vectors = encoder.embed(args.images, normalize=args.normalize)
        _save_npy(args.output, vectors.astype(np.float32))
        print(f"image tower: {encoder.describe()}", file=sys.stderr)  # after the work: an error stays one line
        print(f"wrote {vectors.shape[0]} x {vectors.shape[1]} embeddings to {args.output}", file=sys.stderr)
        return
    classifier = ZeroShotClassifier(args.artefacts, template=args.template or DEFAULT_TEMPLATE,
                                    variant=args.variant, **options)
    results = classifier.classify(args.images, args.labels)
    print(f"image tower: {classifier.images.describe()}\ntext tower: {classifier.text.describe()}", file=sys.stderr)
    if args.json:
        print(json.dumps([{"image": image, "scores": scores} for image, scores in zip(args.images, results)], indent=2))
        return
    width = max(len(label) for label in args.labels)
    for image, scores in zip(args.images, results):
        print(image)
        for label, p in scores.items():
            print(f"  {label:<{width}}  {p:.4f}")


def main(argv=None) -> int:
    args = parse_args(attach_negative_values(list(sys.argv[1:] if argv is None else argv), ("--layer",)))
    if args.command == "serve":
        from .serving.server import ServerError

        return run_command(lambda: _serve(args), debug=args.debug, failures={ServerError: (1, "")})
    return run_command(lambda: run(args), debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
