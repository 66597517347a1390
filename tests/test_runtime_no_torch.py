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
class _NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is blocked in this test")
sys.meta_path.insert(0, _NoTorch())
"""


def test_runtime_sources_never_import_torch():
    for path in (ROOT / "runtime").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(n == "torch" or n.startswith("torch.") for n in names), f"{path} imports torch"


def test_runtime_runs_with_torch_unavailable(tiny_artefacts):
    artefacts, _ = tiny_artefacts
    script = BLOCK_TORCH + f"""
import importlib, pkgutil
try:
    import torch
except ImportError:
    pass
else:
    raise SystemExit("the torch block did not work")
import runtime
for info in pkgutil.walk_packages(runtime.__path__, "runtime."):
    if info.name != "runtime.__main__":
        importlib.import_module(info.name)
import numpy as np
from runtime.preprocess import preprocess
from runtime.session import OnnxModel
photos = sorted(p for p in __import__("pathlib").Path({str(ROOT / "siglip_export" / "photos")!r}).glob("*.jpg"))
pixels = preprocess(photos[:3], __import__("runtime.preprocess").preprocess.ImageSettings(height=32, width=32))
out = OnnxModel({str(artefacts / "vision_model.onnx")!r}).run(pixels)
assert out["pooler_output"].shape == (3, 32), out["pooler_output"].shape
ids = np.ones((2, 16), dtype=np.int64)
assert OnnxModel({str(artefacts / "text_model.onnx")!r}).run(ids)["pooler_output"].shape == (2, 32)
assert not any(m == "torch" or m.startswith("torch.") for m in sys.modules), "torch got imported"
print("ok")
"""
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr
