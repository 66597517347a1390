"""The README's quick start, run as written: its commands, with the checkpoint, the images and the
output folder replaced by a tiny checkpoint (with a trained tokenizer), the packaged photos and a
temporary folder. Every flag the README names in its fenced blocks must exist, too."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import transformers

from conftest import hf_model, tiny_config, train_sentencepiece
from siglip_export.verify.samples import PHOTOS_DIR

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()


def quick_start() -> list[str]:
    """The commands of the first ```bash block under the "Quick start" heading."""
    section = re.search(r"^## Quick start\b(.*?)(?=^## )", README, re.S | re.M)
    assert section, "README.md has no '## Quick start' section"
    block = re.search(r"```bash\n(.*?)```", section.group(1), re.S)
    assert block, "the quick start has no ```bash block"
    return [line.split("  #")[0].strip() for line in block.group(1).splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    base = tmp_path_factory.mktemp("readme")
    config = tiny_config()
    config.text_config.vocab_size = 400
    hf_model(config).save_pretrained(base / "ckpt")
    tokenizer = transformers.SiglipTokenizer(vocab_file=str(train_sentencepiece(base / "spiece.model")),
                                             model_max_length=16)
    tokenizer.save_pretrained(base / "ckpt")
    return base / "ckpt"


def test_the_quick_start_runs_as_written(checkpoint, tmp_path):
    pytest.importorskip("openvino", reason="the quick start's --target cpu races OpenVINO's files")
    commands = quick_start()
    assert [c.split()[0:2] for c in commands] == [["python", "export.py"], ["siglip-runtime", "embed"],
                                                  ["siglip-runtime", "classify"]], commands
    photos = sorted(PHOTOS_DIR.glob("*.jpg"))
    swap = {"path/to/siglip-base-patch16-224": str(checkpoint), "artifacts": str(tmp_path / "artifacts"),
            "photo1.jpg": str(photos[0]), "photo2.jpg": str(photos[1]),
            "embeddings.npy": str(tmp_path / "embeddings.npy")}
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    printed = []
    for command in commands:
        argv = [swap.get(word, word) for word in shlex.split(command)]
        if argv[0] == "python":
            argv[0] = sys.executable
        done = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, (command, done.stderr[-2000:])
        printed.append(done.stdout + done.stderr)
    export, embed, classify = printed
    assert "fastest vision tower on this machine:" in export
    assert (tmp_path / "artifacts" / "manifest.json").exists() and (tmp_path / "embeddings.npy").exists()
    assert "image tower: " in embed and "the fastest verified file for the CPU in the export's race" in embed
    assert "a cat" in classify and "a dog" in classify and "text tower: " in classify


def test_every_flag_in_the_readme_exists():
    """Each `--flag` in the README's shell blocks appears in the help of the command it follows."""
    helps = {}
    for block in re.findall(r"```bash\n(.*?)```", README, re.S):
        for line in block.splitlines():
            words = line.split("#")[0].split()
            if not words:
                continue
            if words[:2] == ["python", "export.py"] or words[0] == "siglip-export":
                key, argv = "export", [sys.executable, "export.py", "--help"]
            elif words[0] == "siglip-runtime" and len(words) > 1 and not words[1].startswith("-"):
                key, argv = words[1], [sys.executable, "-m", "runtime", words[1], "--help"]
            else:
                continue
            if key not in helps:
                helps[key] = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=120).stdout
            for flag in (w.split("=")[0] for w in words if w.startswith("--")):
                assert flag in helps[key], f"README: {line.strip()!r}: {flag} is not a flag of {key}"
