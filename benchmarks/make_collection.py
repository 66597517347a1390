"""A generated image collection: crops of the packaged photos, resized and re-encoded.

    python benchmarks/make_collection.py DIR --images 2000 [--min-side 320 --max-side 800] [--corrupt 5]

Writes DIR/<group>/<n>.jpg (and a PNG every tenth image) in 20 sub-directories, deterministic
for a seed; `--corrupt N` adds N files that are not images (an empty file, text named .jpg, a
truncated JPEG) so the index's handling of bad files is exercised too. Used by the index tests
(small sides) and benchmarks/index_throughput.py (photo-like sides).
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import numpy as np

PHOTOS = Path(__file__).resolve().parents[1] / "siglip_export" / "photos"


def make_collection(directory: Path, images: int, *, min_side: int = 320, max_side: int = 800, corrupt: int = 0,
                    seed: int = 0) -> list[Path]:
    """Write the collection; returns the paths of the good images, then of the corrupt files."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    sources = [Image.open(p).convert("RGB") for p in sorted(PHOTOS.glob("*.jpg"))]
    directory = Path(directory)
    written = []
    for n in range(images):
        source = sources[n % len(sources)]
        w, h = source.size
        cw, ch = int(w * rng.uniform(0.4, 1.0)), int(h * rng.uniform(0.4, 1.0))
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        side = int(rng.integers(min_side, max_side + 1))
        scale = side / max(cw, ch)
        image = source.crop((x, y, x + cw, y + ch)).resize((max(1, int(cw * scale)), max(1, int(ch * scale))))
        if rng.random() < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        group = directory / f"group-{n % 20:02d}"
        group.mkdir(parents=True, exist_ok=True)
        path = group / (f"{n:06d}.png" if n % 10 == 9 else f"{n:06d}.jpg")
        image.save(path, quality=90) if path.suffix == ".jpg" else image.save(path)
        written.append(path)
    bad = directory / "bad"
    for n in range(corrupt):
        bad.mkdir(parents=True, exist_ok=True)
        path = bad / f"bad-{n:03d}.jpg"
        if n % 3 == 0:
            path.write_bytes(b"")
        elif n % 3 == 1:
            path.write_text("not an image\n")
        else:
            blob = io.BytesIO()
            sources[0].save(blob, format="JPEG", quality=90)
            path.write_bytes(blob.getvalue()[: len(blob.getvalue()) // 3])
        written.append(path)
    return written


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("directory", type=Path)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--min-side", type=int, default=320)
    parser.add_argument("--max-side", type=int, default=800)
    parser.add_argument("--corrupt", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    paths = make_collection(args.directory, args.images, min_side=args.min_side, max_side=args.max_side,
                            corrupt=args.corrupt, seed=args.seed)
    print(f"wrote {len(paths)} files to {args.directory}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
