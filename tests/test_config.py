"""Configs: HF field names, presets from the released files, config.json in and out."""

from __future__ import annotations

import json

import pytest
from conftest import tiny_config, tiny_vision_config

from siglip_export.model.config import (
    PRESETS,
    ConfigError,
    SiglipConfig,
    SiglipTextConfig,
    SiglipVisionConfig,
    config_from_dict,
    load_config,
    preset,
    save_config,
)


def test_defaults_are_siglip_base():
    v, t = SiglipVisionConfig(), SiglipTextConfig()
    assert (v.hidden_size, v.intermediate_size, v.num_hidden_layers, v.num_attention_heads) == (768, 3072, 12, 12)
    assert (v.image_size, v.patch_size, v.num_patches, v.layer_norm_eps) == (224, 16, 196, 1e-6)
    assert v.hidden_act == "gelu_pytorch_tanh" and v.attention_dropout == 0.0
    assert (t.vocab_size, t.max_position_embeddings, t.projection_size) == (32000, 64, 768)


# (text max positions, vision hidden, layers, heads, intermediate, image, patch), from the released config.json files.
RELEASED = {
    "siglip-base-patch16-224": (64, 768, 12, 12, 3072, 224, 16),
    "siglip-base-patch16-256": (64, 768, 12, 12, 3072, 256, 16),
    "siglip-base-patch16-384": (64, 768, 12, 12, 3072, 384, 16),
    "siglip-base-patch16-512": (64, 768, 12, 12, 3072, 512, 16),
    "siglip-large-patch16-256": (64, 1024, 24, 16, 4096, 256, 16),
    "siglip-large-patch16-384": (64, 1024, 24, 16, 4096, 384, 16),
    "siglip-so400m-patch14-224": (16, 1152, 27, 16, 4304, 224, 14),
    "siglip-so400m-patch14-384": (64, 1152, 27, 16, 4304, 384, 14),
}


@pytest.mark.parametrize("name", sorted(RELEASED))
def test_presets_match_released_configs(name):
    config = preset(name)
    positions, hidden, layers, heads, inter, image, patch = RELEASED[name]
    v, t = config.vision_config, config.text_config
    assert (v.hidden_size, v.num_hidden_layers, v.num_attention_heads, v.intermediate_size) == (hidden, layers, heads, inter)
    assert (t.hidden_size, t.num_hidden_layers, t.num_attention_heads, t.intermediate_size) == (hidden, layers, heads, inter)
    assert (v.image_size, v.patch_size, t.max_position_embeddings, t.vocab_size) == (image, patch, positions, 32000)
    assert preset(f"google/{name}") == config


# SigLIP 2, fixed resolution: the same towers with Gemma's 256k vocabulary and 64 text positions.
RELEASED_2 = {
    **{f"siglip2-base-patch16-{s}": (768, 12, 12, 3072, s) for s in (224, 256, 384, 512)},
    **{f"siglip2-large-patch16-{s}": (1024, 24, 16, 4096, s) for s in (256, 384, 512)},
    **{f"siglip2-so400m-patch16-{s}": (1152, 27, 16, 4304, s) for s in (256, 384, 512)},
}


@pytest.mark.parametrize("name", sorted(RELEASED_2))
def test_siglip2_presets(name):
    config = preset(name)
    hidden, layers, heads, inter, image = RELEASED_2[name]
    v, t = config.vision_config, config.text_config
    assert (v.hidden_size, v.num_hidden_layers, v.num_attention_heads, v.intermediate_size) == (hidden, layers, heads, inter)
    assert (t.hidden_size, t.num_hidden_layers, t.num_attention_heads, t.intermediate_size) == (hidden, layers, heads, inter)
    assert (v.image_size, v.patch_size, t.max_position_embeddings, t.vocab_size) == (image, 16, 64, 256000)
    assert (t.pad_token_id, t.eos_token_id, t.bos_token_id) == (0, 1, 2)


def test_presets_cover_the_family_and_unknown_is_named():
    assert set(PRESETS) == set(RELEASED) | set(RELEASED_2)
    with pytest.raises(ConfigError, match="'siglip-huge'"):
        preset("siglip-huge")


def test_so400m_patch_count_drops_the_remainder():
    assert preset("siglip-so400m-patch14-384").vision_config.num_patches == 27 * 27


def test_released_base_config_json_reads():
    # The released google/siglip-base-patch16-224 config.json, verbatim.
    released = {
        "architectures": ["SiglipModel"], "initializer_factor": 1.0, "model_type": "siglip",
        "text_config": {"hidden_size": 768, "intermediate_size": 3072, "model_type": "siglip_text_model",
                        "num_attention_heads": 12, "vocab_size": 32000},
        "torch_dtype": "float32", "transformers_version": "4.37.0.dev0",
        "vision_config": {"model_type": "siglip_vision_model", "patch_size": 16},
    }
    assert config_from_dict(released) == preset("siglip-base-patch16-224")


def test_roundtrip_through_file_and_transformers(tmp_path):
    import transformers

    for config in (tiny_config(), tiny_vision_config()):
        path = tmp_path / "config.json"
        save_config(config, path)
        assert load_config(path) == config
        assert load_config(tmp_path) == config
        hf_cls = transformers.SiglipConfig if isinstance(config, SiglipConfig) else transformers.SiglipVisionConfig
        hf = hf_cls.from_dict(json.loads(path.read_text()))
        hf_dir = tmp_path / "hf"
        hf.save_pretrained(hf_dir)  # what transformers writes, with all its extra keys
        assert load_config(hf_dir) == config


def test_image_size_pair_and_flat_vision_json():
    assert config_from_dict({"image_size": [256, 256], "patch_size": [16, 16]}).image_size == 256
    assert isinstance(config_from_dict({"model_type": "siglip_vision_model"}), SiglipVisionConfig)


@pytest.mark.parametrize(
    "values, message",
    [
        ({"model_type": "clip"}, "'clip'"),
        ({"model_type": "siglip2", "vision_config": {}}, "'siglip2'"),
        ({"hidden_size": 770}, "770"),
        ({"hidden_size": -1}, "-1"),
        ({"hidden_act": "relu"}, "'relu'"),
        ({"image_size": [224, 256]}, r"\[224, 256\]"),
        ({"vision_use_head": False}, "vision_use_head"),
        ({"num_hidden_layers": "12"}, "'12'"),
        ({"model_type": "siglip", "vision_config": {"hidden_size": 64, "num_attention_heads": 4}}, "projection_size 768"),
    ],
)
def test_bad_values_are_named(values, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict(values)


def test_missing_or_invalid_config_json(tmp_path):
    with pytest.raises(ConfigError, match="config.json not found"):
        load_config(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_config(tmp_path)
