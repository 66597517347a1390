"""`runtime/` must import and run on a host without PyTorch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Makes `import torch` (and any torch submodule) fail in the child, as on a host without it.
BLOCK_TORCH = """
import sys
ATTEMPTS = []
class _NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            ATTEMPTS.append(name)  # recorded even when the importer catches the ImportError
            raise ImportError("torch is blocked in this test")
sys.meta_path.insert(0, _NoTorch())
"""


def test_runtime_sources_never_import_torch_or_transformers():
    """Nor transformers / torchvision: the deploy side reproduces their preprocessing and tokenizer."""
    for path in (ROOT / "runtime").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            forbidden = [n for n in names if n.split(".")[0] in ("torch", "torchvision", "transformers")]
            assert not forbidden, f"{path} imports {forbidden}"


def test_runtime_runs_with_torch_unavailable(text_artefacts, tmp_path):
    """Every runtime module imports, and the whole deploy path runs, with torch unimportable:
    sessions, the encoders, zero-shot classification and the `python -m runtime` CLI (index and
    search too, where the [index] extra is installed)."""
    artefacts = text_artefacts[0]
    photos = sorted(str(p) for p in (ROOT / "siglip_export" / "photos").glob("*.jpg"))[:3]
    script = BLOCK_TORCH + f"""
import importlib, pkgutil
try:
    import torch
except ImportError:
    ATTEMPTS.clear()
else:
    raise SystemExit("the torch block did not work")
import runtime
for info in pkgutil.walk_packages(runtime.__path__, "runtime."):
    importlib.import_module(info.name)
import numpy as np
from runtime import ImageEncoder, OnnxModel, TextEncoder, ZeroShotClassifier
from runtime.__main__ import main
photos = {photos!r}
assert ImageEncoder({str(artefacts)!r}, provider="cpu").embed(photos).shape == (3, 32)
assert TextEncoder({str(artefacts)!r}, provider="cpu").embed(["a cat"]).shape == (1, 32)
assert ZeroShotClassifier({str(artefacts)!r}, provider="cpu").probabilities(photos, ["cat", "dog"]).shape == (3, 2)
assert OnnxModel({str(artefacts / "text_model.onnx")!r}).run(np.ones((2, 16), np.int64))["pooler_output"].shape == (2, 32)
assert main(["embed", {str(artefacts)!r}, *photos, "--output", {str(tmp_path / "v.npy")!r}, "--provider", "cpu"]) == 0
assert main(["classify", {str(artefacts)!r}, photos[0], "--labels", "cat", "--provider", "cpu", "--json"]) == 0
try:
    import faiss  # the [index] extra
except ImportError:
    pass
else:
    index = {str(tmp_path / "index")!r}
    assert main(["index", {str(ROOT / "siglip_export" / "photos")!r}, "--artefacts", {str(artefacts)!r},
                 "--output", index, "--provider", "cpu"]) == 0
    assert main(["search", index, "a cat", "--provider", "cpu", "--json"]) == 0
assert not ATTEMPTS, f"runtime tried to import {{ATTEMPTS}}"
print("ok")
"""
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]
