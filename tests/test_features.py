"""What VLM builders need from the image tower: layer features, attention maps, other input sizes.

Each new output is checked against transformers (`output_hidden_states`, `output_attentions`,
`interpolate_pos_encoding=True`), through the runtime that ships; the default file keeps its
two outputs.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from conftest import hf_model, rel_err, tiny_config, tiny_vision_config

from runtime import ImageEncoder
from runtime.inputs.images import ImageSettings, preprocess

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = sorted(str(p) for p in (ROOT / "siglip_export" / "photos").glob("*.jpg"))[:3]


@pytest.fixture(scope="module")
def features_export(tmp_path_factory):
    """A tiny full checkpoint exported with every hidden state, every layer's attention and the
    pooling head's: (artefact dir, transformers model)."""
    from siglip_export.pipeline import ExportOptions, run_export

    base = tmp_path_factory.mktemp("features")
    model = hf_model(tiny_config())
    model.save_pretrained(base / "ckpt")
    run_export(ExportOptions(checkpoint=base / "ckpt", output_dir=base / "out", verify_batch_sizes=(2,),
                             hidden_states="all", attention="all"), emit=None)
    return base / "out", model


def hf_vision(model, pixels: np.ndarray, **kwargs):
    vision = model.vision_model
    vision.config._attn_implementation = "eager"  # sdpa returns no attention weights
    with torch.no_grad():
        return vision(pixel_values=torch.from_numpy(pixels), output_hidden_states=True, output_attentions=True,
                      **kwargs)


def test_default_file_keeps_its_contract(features_export):
    directory, _ = features_export
    plain = onnx.load(str(directory / "vision_model.onnx"), load_external_data=False)
    assert [o.name for o in plain.graph.output] == ["last_hidden_state", "pooler_output"]
    manifest = json.loads((directory / "manifest.json").read_text())
    record = next(a for a in manifest["artefacts"] if a["variant"] == "features")
    assert record["file"] == "vision_model.features.onnx" and record["parity"]["passed"]
    assert record["build"] == {"hidden_states": [0, 1, 2], "attention_layers": [0, 1], "pooler_attention": True}
    gated = set(record["parity"]["gate"]["outputs"])
    assert {"hidden_state_0", "hidden_state_2", "attention_1", "pooler_attention"} <= gated


def test_hidden_states_match_transformers(features_export):
    directory, model = features_export
    encoder = ImageEncoder(directory)
    pixels = preprocess(PHOTOS, encoder.settings)
    expected = hf_vision(model, pixels).hidden_states
    got = encoder.features(PHOTOS, layers=[0, -2, -1, 1])
    assert set(got) == {0, -2, -1, 1}
    for layer, array in got.items():
        assert array.shape == (3, 16, 32)
        assert rel_err(array, expected[layer]) <= 1e-4, layer


def test_attention_maps_match_transformers(features_export):
    directory, model = features_export
    encoder = ImageEncoder(directory)
    pixels = preprocess(PHOTOS, encoder.settings)
    out = hf_vision(model, pixels)
    for layer in (0, -1):
        expected = out.attentions[layer].mean(dim=1)  # (B, patches, patches), averaged over heads
        assert rel_err(encoder.attention(PHOTOS, layer=layer), expected) <= 1e-4
    head = model.vision_model.head  # transformers' pooling head: nn.MultiheadAttention
    with torch.no_grad():
        probe = head.probe.repeat(3, 1, 1)
        _, weights = head.attention(probe, out.last_hidden_state, out.last_hidden_state, need_weights=True,
                                    average_attn_weights=True)
    pooled = encoder.attention(PHOTOS)
    assert pooled.shape == (3, 16)
    assert rel_err(pooled, weights[:, 0]) <= 1e-4
    np.testing.assert_allclose(pooled.sum(axis=1), 1.0, atol=1e-5)


def runtime_cli(*args):
    return subprocess.run([sys.executable, "-m", "runtime", *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)


def test_cli_writes_patch_features_and_heatmaps(features_export, tmp_path):
    directory, model = features_export
    done = runtime_cli("embed", directory, *PHOTOS, "--layer", "-2", "--output", tmp_path / "f.npy")
    assert done.returncode == 0, done.stderr
    features = np.load(tmp_path / "f.npy")
    pixels = preprocess(PHOTOS, ImageSettings(height=32, width=32))
    assert rel_err(features, hf_vision(model, pixels).hidden_states[-2]) <= 1e-4

    done = runtime_cli("attention", directory, *PHOTOS, "--output-dir", tmp_path / "maps", "--json")
    assert done.returncode == 0, done.stderr
    grids = json.loads(done.stdout)
    assert [g["image"] for g in grids] == PHOTOS
    assert np.asarray(grids[0]["grid"]).shape == (4, 4)
    from PIL import Image

    for photo in PHOTOS:
        with Image.open(tmp_path / "maps" / f"{Path(photo).stem}.png") as heatmap, Image.open(photo) as original:
            assert heatmap.format == "PNG" and heatmap.size == original.size
    assert not [p for p in (tmp_path / "maps").iterdir() if p.name.startswith(".")]  # no temporary left

    done = runtime_cli("attention", directory, PHOTOS[0], "--layer", "-1", "--json")
    assert done.returncode == 0 and np.asarray(json.loads(done.stdout)[0]["grid"]).shape == (4, 4)


@pytest.mark.parametrize("args, message", [
    (["embed", "{dir}", PHOTOS[0], "--layer", "7", "--output", "{tmp}/x.npy"], "hidden state 7 is out of range"),
    (["attention", "{dir}", PHOTOS[0], "--layer", "5", "--json"], "layer 5 is out of range"),
    (["attention", "{dir}", PHOTOS[0]], "--output-dir DIR"),
    (["attention", "{plain}", PHOTOS[0], "--json"], "no layer features or attention maps"),
])
def test_cli_bad_input_is_one_line(features_export, tiny_artefacts, tmp_path, args, message):
    values = {"dir": features_export[0], "plain": tiny_artefacts[0], "tmp": tmp_path}
    done = runtime_cli(*[a.format(**values) for a in args])
    assert done.returncode == 2, done.stderr
    assert message in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr


def export_cli(*args):
    return subprocess.run([sys.executable, "export.py", *map(str, args)], capture_output=True, text=True, cwd=ROOT,
                          timeout=600)


def test_export_bad_input_is_one_line_and_exit_2(tiny_hf_checkpoint, tmp_path):
    ckpt, _ = tiny_hf_checkpoint
    cases = {
        ("--hidden-states", "3"): "--hidden-states index 3 is out of range",
        ("--hidden-states", "1,x"): "comma-separated integers or 'all'",
        ("--attention", "-3"): "--attention layer -3 is out of range",
        ("--image-size", "36"): "--image-size 36 must be a positive multiple of the patch size 8",
        ("--variants", "features"): "is not a --variants entry",
    }
    for flags, message in cases.items():
        done = export_cli("--checkpoint", ckpt, "--output-dir", tmp_path / "out", *flags)
        assert done.returncode == 2, (flags, done.stderr)
        error = [line for line in done.stderr.splitlines() if line.startswith("error")]
        assert len(error) == 1 and message in error[0], (flags, done.stderr)
        assert not (tmp_path / "out").exists()


def test_naflex_is_refused_by_name(tmp_path):
    from siglip_export.model.config import ConfigError, config_from_dict

    with pytest.raises(ConfigError, match="NaFlex"):
        config_from_dict({"model_type": "siglip2", "vision_config": {}, "text_config": {}})


def test_other_image_sizes_match_transformers_interpolation(tmp_path):
    """Exported at 48 and 64 pixels from a checkpoint trained at 32 (patch 8): equal to
    transformers with interpolate_pos_encoding=True, preprocessing written for the new size."""
    import transformers

    from siglip_export.pipeline import ExportOptions, run_export

    torch.manual_seed(0)
    hf = transformers.SiglipVisionModel(transformers.SiglipVisionConfig.from_dict(tiny_vision_config().to_dict()))
    table = next(m for name, m in hf.named_modules() if name.endswith("position_embedding"))
    with torch.no_grad():
        table.weight.normal_()  # a table worth interpolating
    hf.eval().save_pretrained(tmp_path / "ckpt")
    for size in (48, 64):
        out = tmp_path / f"out{size}"
        run_export(ExportOptions(checkpoint=tmp_path / "ckpt", output_dir=out, verify_batch_sizes=(2,),
                                 image_size=size), emit=None)
        settings = json.loads((out / "preprocessor_config.json").read_text())
        assert (settings["size"]["height"], settings["size"]["width"]) == (size, size)
        assert json.loads((out / "config.json").read_text())["image_size"] == size
        encoder = ImageEncoder(out)
        pixels = preprocess(PHOTOS, encoder.settings)
        with torch.no_grad():
            expected = hf(pixel_values=torch.from_numpy(pixels), interpolate_pos_encoding=True)
        assert rel_err(encoder.embed(PHOTOS), expected.pooler_output) <= 1e-4
        got = encoder.model.run(pixels)["last_hidden_state"]
        assert got.shape == (3, (size // 8) ** 2, 32)
        assert rel_err(got, expected.last_hidden_state) <= 1e-4
