"""`pip install siglip-export` without extras is the deploy side alone: no PyTorch, and the
console scripts work on an export the development environment made."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from runtime import ImageEncoder, ZeroShotClassifier

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = sorted((ROOT / "siglip_export" / "photos").glob("*.jpg"))
SOURCES = ("pyproject.toml", "README.md", "runtime", "siglip_export")


def run(*args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=600, **kwargs)


@pytest.fixture(scope="module")
def runtime_venv(tmp_path_factory) -> Path:
    """A fresh virtual environment with the package installed from a copy of this checkout
    (so the build leaves nothing in the working tree), without extras. pip uses its cache and
    the package registry, as any install does."""
    base = tmp_path_factory.mktemp("install")
    source = base / "src"
    source.mkdir()
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(path, source / name)
    venv = base / "venv"
    made = run(sys.executable, "-m", "venv", venv)
    assert made.returncode == 0, made.stderr
    python = venv / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    installed = run(python, "-m", "pip", "install", "--disable-pip-version-check", "--no-input", source, env=env)
    assert installed.returncode == 0, installed.stdout[-2000:] + installed.stderr[-2000:]
    return venv


def in_venv(venv: Path, *args, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    return run(*args, env=env, cwd=cwd)  # cwd away from the checkout: nothing imports from it


def test_plain_install_has_no_torch_and_no_exporter(runtime_venv, tmp_path):
    python = runtime_venv / "bin" / "python"
    listed = in_venv(runtime_venv, python, "-m", "pip", "list", "--format=json", cwd=tmp_path)
    names = {p["name"].lower() for p in json.loads(listed.stdout)}
    assert not names & {"torch", "onnxsim", "onnxscript", "transformers", "onnx"}, names
    assert names & {"onnxruntime", "onnxruntime-gpu"} and {"numpy", "pillow", "sentencepiece"} <= names
    probe = in_venv(runtime_venv, python, "-c", "import torch", cwd=tmp_path)
    assert probe.returncode != 0 and "No module named 'torch'" in probe.stderr
    # The export command says which extra it needs, in one line, exit 2.
    export = in_venv(runtime_venv, "siglip-export", "--checkpoint", "x", cwd=tmp_path)
    assert export.returncode == 2, export.stderr
    lines = export.stderr.strip().splitlines()
    assert len(lines) == 1 and 'pip install "siglip-export[export]"' in lines[0] and "torch" in lines[0], lines


def test_console_scripts_embed_and_classify(runtime_venv, text_artefacts, tmp_path):
    artefacts = text_artefacts[0]
    out = tmp_path / "vectors.npy"
    embed = in_venv(runtime_venv, "siglip-runtime", "embed", artefacts, *PHOTOS[:3], "--output", out,
                    "--provider", "cpu", cwd=tmp_path)
    assert embed.returncode == 0, embed.stderr
    expected = ImageEncoder(artefacts, provider="cpu").embed(PHOTOS[:3])
    assert np.allclose(np.load(out), expected, atol=1e-6)

    classify = in_venv(runtime_venv, "siglip-runtime", "classify", artefacts, PHOTOS[0], "--labels", "cat", "dog",
                       "--json", cwd=tmp_path)
    assert classify.returncode == 0, classify.stderr
    scores = json.loads(classify.stdout)[0]["scores"]
    reference = ZeroShotClassifier(artefacts, provider="cpu").classify([PHOTOS[0]], ["cat", "dog"])[0]
    assert scores.keys() == reference.keys()
    assert all(abs(scores[k] - reference[k]) < 1e-6 for k in scores)


def test_index_without_its_extra_says_which_to_install(runtime_venv, text_artefacts, tmp_path):
    """The plain install has no vector store or Ray: `index` names the extra, in one line, before any work."""
    index = in_venv(runtime_venv, "siglip-runtime", "index", PHOTOS[0].parent, "--artefacts", text_artefacts[0],
                    "--output", tmp_path / "index", cwd=tmp_path)
    lines = index.stderr.strip().splitlines()
    assert index.returncode == 2 and len(lines) == 1 and "siglip-export[index]" in lines[0], index.stderr
    assert not (tmp_path / "index").exists()
