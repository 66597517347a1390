"""`siglip-runtime index` against the model alone: does decoding keep up with the encoder?

    python benchmarks/index_throughput.py --artefacts artifacts --batch-size 8 --images 400
        [--variant int8] [--backend ort-cpu] [--collection DIR] [--json out.json]

1. A photo-like collection (benchmarks/make_collection.py: JPEG/PNG crops of the packaged photos,
   320-800 px on the long side), unless --collection names one.
2. The model alone: `benchmarks/run.py --backends BACKEND --batch-sizes B` on the same artefact
   (pre-made inputs, no decoding).
3. `siglip-runtime index` on the collection with the same artefact, provider and batch size;
   its rate counts from the loaded model to the last shard written (decode, resize, encode,
   shards), as index.json's last_run records it.
Prints both rates per round and the median of the rounds' ratios (the target is >= 0.9 on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.make_collection import make_collection  # noqa: E402

PROVIDERS = {"ort-cpu": "cpu", "openvino-fp32": "openvino", "openvino-default": "openvino", "ort-cuda": "cuda"}


def model_rate(artefacts: Path, backend: str, batch: int, file: str, iterations: int, work: Path) -> float:
    out = work / "run.json"
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run.py"), "--artefacts", str(artefacts), "--backends",
                    backend, "--batch-sizes", str(batch), "--iterations", str(iterations), "--budget-s", "120",
                    "--json", str(out)], check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    rows = [r for r in json.loads(out.read_text())["results"] if r["artefact"] == file and not r.get("skipped")]
    if not rows:
        raise SystemExit(f"benchmarks/run.py measured no {file} with {backend}")
    return rows[0]["throughput_ips"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--artefacts", type=Path, default=ROOT / "artifacts")
    parser.add_argument("--variant", default=None)
    parser.add_argument("--backend", default="ort-cpu", choices=sorted(PROVIDERS))
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--iterations", type=int, default=30, help="benchmarks/run.py timed calls")
    parser.add_argument("--collection", type=Path, default=None, help="index this directory instead of a generated one")
    parser.add_argument("--repeats", type=int, default=3,
                        help="alternate the two measurements this many times (the machine's speed drifts); the "
                        "ratio reported is the median of the rounds' ratios")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    from runtime.artefacts import Artefacts

    file = Artefacts(args.artefacts).record("vision", args.variant).file
    with tempfile.TemporaryDirectory(prefix="index-bench-") as tmp:
        work = Path(tmp)
        collection = args.collection or work / "collection"
        if args.collection is None:
            make_collection(collection, args.images)
        rounds = []
        for round_ in range(args.repeats):
            alone = model_rate(args.artefacts, args.backend, args.batch_size, file, args.iterations, work)
            output = work / f"index-{round_}"
            command = [sys.executable, "-m", "runtime", "index", str(collection), "--artefacts", str(args.artefacts),
                       "--output", str(output), "--batch-size", str(args.batch_size), "--provider",
                       PROVIDERS[args.backend], *(["--variant", args.variant] if args.variant else [])]
            subprocess.run(command, check=True, cwd=ROOT)
            info = json.loads((output / "index.json").read_text())
            indexed = info["last_run"]["images_per_s"]
            rounds.append(dict(model_images_per_s=round(alone, 2), index_images_per_s=indexed,
                               ratio=round(indexed / alone, 3), store_build_s=info["store"]["build_s"]))
            print(f"round {round_ + 1}: model alone {alone:.2f} img/s, index {indexed:.2f} img/s, "
                  f"ratio {indexed / alone:.2f}", flush=True)
    ratio = statistics.median(r["ratio"] for r in rounds)
    result = dict(artefact=file, backend=args.backend, batch_size=args.batch_size, images=info["source"]["images"],
                  rounds=rounds, median_ratio=ratio)
    print(f"| {file} | {args.backend} | {args.batch_size} | {result['images']} | "
          f"{', '.join(str(r['model_images_per_s']) for r in rounds)} | "
          f"{', '.join(str(r['index_images_per_s']) for r in rounds)} | {ratio:.2f} |")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
