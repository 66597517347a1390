"""The reference model: the seed's contract, the attention switch, parity with transformers, the loss."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import hf_model, randomize_norms, rel_err, tiny_config, tiny_text_config, tiny_vision_config

from siglip_export import (
    SiglipModel,
    SiglipTextModel,
    SiglipVisionConfig,
    SiglipVisionModel,
    build_model,
    load_pretrained,
    preset,
    sigmoid_loss,
)
from siglip_export.model.checkpoint import convert_hf_state_dict, load_state_dict_strict


def test_seed_contract_base_shape():
    model = SiglipVisionModel(
        SiglipVisionConfig(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, image_size=224, patch_size=16)
    )
    with torch.no_grad():
        out = model(torch.randn(4, 3, 224, 224))
    assert isinstance(out, torch.Tensor)
    assert out.shape == (4, 196, 768)


def test_features_shapes_and_fresh_logit_params():
    model = SiglipModel(tiny_config()).eval()
    pixels, ids = torch.randn(3, 3, 32, 32), torch.randint(0, 99, (2, 16))
    assert model.get_image_features(pixels).shape == (3, 32)
    assert model.get_text_features(ids).shape == (2, 32)
    assert model.logit_scale.item() == pytest.approx(math.log(10))
    assert model.logit_bias.item() == pytest.approx(-10.0)
    out = model(ids, pixels)
    assert out.logits_per_image.shape == (3, 2) and out.logits_per_text.shape == (2, 3)
    assert out.loss is None
    assert torch.equal(out.logits_per_image, out.logits_per_text.t())


@pytest.mark.parametrize("tower", ["vision", "text"])
def test_fused_and_explicit_attention_agree(tower):
    torch.manual_seed(0)
    if tower == "vision":
        model, x, features = SiglipVisionModel(tiny_vision_config()), torch.randn(5, 3, 32, 32), "get_image_features"
    else:
        model, x, features = SiglipTextModel(tiny_text_config()), torch.randint(0, 99, (5, 16)), "get_text_features"
    randomize_norms(model)
    model.eval()
    with torch.no_grad():
        fused = (model(x), getattr(model, features)(x))
        model.set_fused_attn(False)
        explicit = (model(x), getattr(model, features)(x))
    assert all(not m.fused_attn for m in model.modules() if hasattr(m, "fused_attn"))
    for a, b in zip(fused, explicit):
        assert rel_err(a, b) <= 1e-6


def test_parity_with_transformers_full_tiny(tiny_hf_checkpoint):
    directory, hf = tiny_hf_checkpoint
    ours = load_pretrained(directory)
    assert isinstance(ours, SiglipModel) and not ours.training
    torch.manual_seed(1)
    pixels, ids = torch.randn(4, 3, 32, 32), torch.randint(0, 99, (3, 16))
    with torch.no_grad():
        theirs = hf(input_ids=ids, pixel_values=pixels, return_loss=False)
        for fused in (True, False):
            ours.set_fused_attn(fused)
            out = ours(ids, pixels)
            assert rel_err(ours.get_image_features(pixels), hf.get_image_features(pixel_values=pixels).pooler_output) <= 1e-5
            assert rel_err(ours.get_text_features(ids), hf.get_text_features(input_ids=ids).pooler_output) <= 1e-5
            assert rel_err(ours.vision_model(pixels)[0], theirs.vision_model_output.last_hidden_state) <= 1e-5
            assert rel_err(ours.text_model(ids)[0], theirs.text_model_output.last_hidden_state) <= 1e-5
            assert rel_err(out.logits_per_image, theirs.logits_per_image) <= 1e-5
            assert rel_err(out.logits_per_text, theirs.logits_per_text) <= 1e-5


@pytest.mark.parametrize("layout", ["transformers5-no-prefix", "transformers4-prefixed"])
def test_parity_with_transformers_vision_only(tmp_path, layout):
    from conftest import write_checkpoint

    config = tiny_vision_config()
    hf = hf_model(config)
    state = hf.state_dict()  # transformers 5.x: no `vision_model.` prefix
    assert not any(k.startswith("vision_model.") for k in state)
    if layout == "transformers4-prefixed":
        state = {f"vision_model.{k}": v for k, v in state.items()}
    ours = load_pretrained(write_checkpoint(tmp_path / layout, config.to_dict(), state))
    assert isinstance(ours, SiglipVisionModel)
    pixels = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        theirs = hf(pixel_values=pixels)
        assert rel_err(ours(pixels), theirs.last_hidden_state) <= 1e-5
        assert rel_err(ours.get_image_features(pixels), theirs.pooler_output) <= 1e-5


def test_parity_with_transformers_full_depth_base():
    """One forward at the real base size (12 layers, 768 wide, 224 px, 64 tokens)."""
    config = preset("siglip-base-patch16-224")
    config.text_config.bos_token_id = config.text_config.eos_token_id = None
    hf = hf_model(config, seed=3)
    ours = build_model(config)
    load_state_dict_strict(ours, convert_hf_state_dict(hf.state_dict(), ours), "transformers base model")
    ours.eval()
    torch.manual_seed(2)
    pixels, ids = torch.randn(2, 3, 224, 224), torch.randint(0, 32000, (2, 64))
    with torch.no_grad():
        theirs = hf(input_ids=ids, pixel_values=pixels)
        out = ours(ids, pixels)
        assert rel_err(out.image_embeds, theirs.image_embeds) <= 1e-5
        assert rel_err(out.text_embeds, theirs.text_embeds) <= 1e-5
        assert rel_err(ours.get_image_features(pixels), theirs.vision_model_output.pooler_output) <= 1e-5
        assert rel_err(ours.get_text_features(ids), theirs.text_model_output.pooler_output) <= 1e-5
        assert rel_err(out.logits_per_image, theirs.logits_per_image) <= 1e-5


def _paper_loss(img, txt, t, b):
    """The SigLIP paper's loss, transcribed literally: -1/|B| sum_i sum_j log sigmoid(z_ij (t x_i.y_j + b))."""
    n = img.shape[0]
    total = 0.0
    for i in range(n):
        for j in range(n):
            z = 1.0 if i == j else -1.0
            logit = t * float(img[i] @ txt[j]) + b
            total += math.log(1.0 / (1.0 + math.exp(-z * logit)))
    return -total / n


def test_sigmoid_loss_matches_paper_and_transformers(tiny_hf_checkpoint):
    directory, hf = tiny_hf_checkpoint
    ours = load_pretrained(directory)
    torch.manual_seed(4)
    pixels, ids = torch.randn(4, 3, 32, 32), torch.randint(0, 99, (4, 16))
    with torch.no_grad():
        out = ours(ids, pixels, return_loss=True)
        theirs = hf(input_ids=ids, pixel_values=pixels, return_loss=True)
    paper = _paper_loss(
        out.image_embeds.double(), out.text_embeds.double(), ours.logit_scale.exp().item(), ours.logit_bias.item()
    )
    assert out.loss.item() == pytest.approx(paper, rel=1e-5)
    assert out.loss.item() == pytest.approx(theirs.loss.item(), rel=1e-5)
    # The loss is symmetric in its two views of the same pairs.
    assert sigmoid_loss(out.logits_per_image).item() == pytest.approx(out.loss.item(), rel=1e-6)


def test_sigmoid_loss_rejects_non_square():
    with pytest.raises(ValueError, match=r"\(2, 3\)"):
        sigmoid_loss(torch.zeros(2, 3))


def test_loss_backpropagates_to_both_towers():
    model = SiglipModel(tiny_config()).train()
    out = model(torch.randint(0, 99, (3, 16)), torch.randn(3, 3, 32, 32), return_loss=True)
    out.loss.backward()
    assert model.vision_model.embeddings.patch_embedding.weight.grad.abs().sum() > 0
    assert model.text_model.embeddings.token_embedding.weight.grad.abs().sum() > 0
    assert model.logit_bias.grad is not None


def test_input_validation_names_the_shape():
    model = SiglipVisionModel(tiny_vision_config())
    with pytest.raises(ValueError, match=r"\(2, 3, 64, 64\)"):
        model(torch.randn(2, 3, 64, 64))
    text = SiglipTextModel(tiny_text_config())
    with pytest.raises(ValueError, match="17 tokens"):
        text(torch.zeros(1, 17, dtype=torch.long))
    with pytest.raises(ValueError, match="integer"):
        text(torch.zeros(1, 16))


def test_gelu_variants():
    exact = SiglipVisionModel(SiglipVisionConfig(image_size=32, patch_size=8, hidden_act="gelu", hidden_size=32,
                                                 intermediate_size=64, num_hidden_layers=1, num_attention_heads=4))
    act = exact.vision_model.encoder.layers[0].mlp.activation_fn
    x = torch.linspace(-3, 3, 7)
    assert torch.allclose(act(x), F.gelu(x))
    tanh = SiglipVisionModel(tiny_vision_config()).vision_model.encoder.layers[0].mlp.activation_fn
    assert torch.allclose(tanh(x), F.gelu(x, approximate="tanh"))
