"""Checkpoint loading: every key layout in the wild, and every way a checkpoint can be wrong."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import hf_model, rel_err, tiny_config, write_checkpoint

from siglip_export import CheckpointError, ConfigError, SiglipModel, load_pretrained
from siglip_export.model.checkpoint import weight_files


@pytest.fixture
def full_state():
    model = hf_model(tiny_config())
    return tiny_config().to_dict(), dict(model.state_dict()), model


def test_head_in_proj_is_split_in_qkv_order(tmp_path, full_state):
    config, state, _ = full_state
    model = load_pretrained(write_checkpoint(tmp_path / "c", config, state))
    packed_w = state["vision_model.head.attention.in_proj_weight"]
    d = packed_w.shape[1]
    attn = model.vision_model.head.attention
    assert torch.equal(attn.q_proj.weight, packed_w[:d])
    assert torch.equal(attn.k_proj.weight, packed_w[d : 2 * d])
    assert torch.equal(attn.v_proj.weight, packed_w[2 * d :])
    assert torch.equal(attn.v_proj.bias, state["vision_model.head.attention.in_proj_bias"][2 * d :])


def test_legacy_position_ids_buffers_are_dropped(tmp_path, full_state):
    config, state, hf = full_state
    state["vision_model.embeddings.position_ids"] = torch.arange(16).unsqueeze(0)
    state["text_model.embeddings.position_ids"] = torch.arange(16).unsqueeze(0)
    model = load_pretrained(write_checkpoint(tmp_path / "c", config, state))
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert rel_err(model.get_image_features(pixels), hf.get_image_features(pixel_values=pixels).pooler_output) <= 1e-5


def test_half_precision_checkpoint_loads_as_fp32(tmp_path, full_state):
    config, state, _ = full_state
    state = {k: v.to(torch.bfloat16) for k, v in state.items()}
    model = load_pretrained(write_checkpoint(tmp_path / "c", config, state))
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_sharded_checkpoint(tmp_path, full_state):
    from safetensors.torch import save_file

    config, state, hf = full_state
    directory = tmp_path / "sharded"
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps(config))
    keys = sorted(state)
    shards = {"model-00001-of-00002.safetensors": keys[::2], "model-00002-of-00002.safetensors": keys[1::2]}
    weight_map = {}
    for name, part in shards.items():
        save_file({k: state[k].contiguous() for k in part}, str(directory / name))
        weight_map.update({k: name for k in part})
    (directory / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    assert [p.name for p in weight_files(directory)] == sorted(shards)
    model = load_pretrained(directory)
    ids = torch.randint(0, 99, (2, 16))
    with torch.no_grad():
        assert rel_err(model.get_text_features(ids), hf.get_text_features(input_ids=ids).pooler_output) <= 1e-5

    # An index naming a shard that is not there, and an index that forgets a tensor.
    (directory / "model-00002-of-00002.safetensors").rename(directory / "gone.safetensors")
    with pytest.raises(CheckpointError, match="model-00002-of-00002.safetensors"):
        load_pretrained(directory)
    (directory / "gone.safetensors").rename(directory / "model-00002-of-00002.safetensors")
    del weight_map[keys[0]]
    (directory / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(CheckpointError, match="present but unlisted: " + keys[0]):
        load_pretrained(directory)


def test_missing_tensor_is_named(tmp_path, full_state):
    config, state, _ = full_state
    del state["vision_model.post_layernorm.weight"]
    with pytest.raises(CheckpointError, match=r"missing tensors: vision_model.post_layernorm.weight \(1 in all\)"):
        load_pretrained(write_checkpoint(tmp_path / "c", config, state))


def test_extra_tensors_are_named_with_count(tmp_path, full_state):
    config, state, _ = full_state
    for i in range(7):
        state[f"classifier.{i}.weight"] = torch.zeros(2)
    with pytest.raises(CheckpointError, match=r"unexpected tensors: classifier.0.weight, .*, \.\.\. \(7 in all\)"):
        load_pretrained(write_checkpoint(tmp_path / "c", config, state))


def test_wrong_shape_is_named_with_both_shapes(tmp_path, full_state):
    config, state, _ = full_state
    state["text_model.head.weight"] = torch.zeros(32, 16)
    with pytest.raises(CheckpointError, match=r"text_model.head.weight: checkpoint \(32, 16\) vs model \(32, 32\)"):
        load_pretrained(write_checkpoint(tmp_path / "c", config, state))


def test_prefix_mismatch_is_an_error_not_random_weights(tmp_path, full_state):
    # A full checkpoint whose keys were written under another prefix: every tensor is reported.
    config, state, _ = full_state
    state = {f"model.{k}": v for k, v in state.items()}
    with pytest.raises(CheckpointError, match="missing tensors: .*unexpected tensors: model"):
        load_pretrained(write_checkpoint(tmp_path / "c", config, state))


def test_vision_config_with_full_checkpoint_reports_text_tensors(tmp_path, full_state):
    config, state, _ = full_state
    with pytest.raises(CheckpointError, match=r"unexpected tensors: logit_bias, logit_scale, text_model"):
        load_pretrained(write_checkpoint(tmp_path / "c", config["vision_config"], state))


def test_corrupt_and_truncated_safetensors(tmp_path, full_state):
    config, state, _ = full_state
    directory = write_checkpoint(tmp_path / "c", config, state)
    weights = directory / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_pretrained(directory)
    weights.write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_pretrained(directory)


def test_pickle_checkpoint_is_refused_and_never_unpickled(tmp_path, full_state, monkeypatch):
    config, state, _ = full_state
    directory = tmp_path / "pickled"
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps(config))
    torch.save(state, directory / "pytorch_model.bin")

    def no_unpickling(*args, **kwargs):
        raise AssertionError("torch.load was called")

    monkeypatch.setattr(torch, "load", no_unpickling)
    with pytest.raises(CheckpointError, match="pytorch_model.bin is a pickle checkpoint.*safetensors"):
        load_pretrained(directory)


def test_missing_directory_config_and_weights(tmp_path, full_state):
    config, _, _ = full_state
    with pytest.raises(CheckpointError, match="checkpoint directory not found: .*nowhere"):
        load_pretrained(tmp_path / "nowhere")
    (tmp_path / "file").write_text("x")
    with pytest.raises(CheckpointError, match="not a directory"):
        load_pretrained(tmp_path / "file")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError, match="config.json not found"):
        load_pretrained(empty)
    (empty / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="no weights file"):
        load_pretrained(empty)


def test_full_checkpoint_gives_siglip_model(tiny_hf_checkpoint):
    directory, _ = tiny_hf_checkpoint
    assert isinstance(load_pretrained(directory), SiglipModel)
