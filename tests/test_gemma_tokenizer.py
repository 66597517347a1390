"""SigLIP 2's tokenizer (Gemma's sentencepiece) in runtime, id for id against transformers'
GemmaTokenizer, on a sentencepiece model trained here in that format; and a SigLIP 2-style
export classifying zero-shot through it."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from conftest import REAL_WORDS, hf_model, tiny_config, train_gemma_sentencepiece

from runtime.inputs.gemma_tokenizer import GemmaTokenizer, is_gemma

CONFIGS = {
    "transformers defaults (left padding)": {},
    "bos, left padding": {"add_bos_token": True},
    "bos and eos, right padding": {"add_bos_token": True, "add_eos_token": True, "padding_side": "right"},
    "no bos, eos, right padding": {"add_bos_token": False, "add_eos_token": True, "padding_side": "right"},
}


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    return train_gemma_sentencepiece(tmp_path_factory.mktemp("gemma") / "tokenizer.model")


def directory_with(model_file, tmp_path, settings: dict):
    (tmp_path / "tokenizer.model").write_bytes(model_file.read_bytes())
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "GemmaTokenizer", **settings}))
    return tmp_path


def texts(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    alphabet = (list("abcdeXYZ  \t\n\u3000\u00a0.,!?'\"-()/_0123456789") + REAL_WORDS
                + ["<eos>", "<bos>", "<pad>", "<unk>", "<mask>", "<EOS>", "\u2581", "😀", "ﬁ", "İ", " Cat ", "\u200b"])
    return ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 50))) for _ in range(n)]


FIXED = ["a photo of a cat", "A Photo Of A CAT!", "  leading and trailing  ", "tabs\tand\nnewlines", "",
         "digits 12345 and ２", "emoji 😀 and ﬁ", "<eos> in the middle <bos>", "<mask>x<pad>", "▁word▁boundary"]


@pytest.mark.parametrize("label", list(CONFIGS))
@pytest.mark.parametrize("max_length", [64, 8, 2])
def test_matches_transformers_id_for_id(model_file, tmp_path, label, max_length):
    import transformers

    directory = directory_with(model_file, tmp_path, CONFIGS[label])
    hf = transformers.AutoTokenizer.from_pretrained(directory)
    assert type(hf).__name__ == "GemmaTokenizer"
    ours = GemmaTokenizer.from_directory(directory, max_length=max_length)
    batch = FIXED + texts(300, seed=max_length)
    expected = hf(batch, padding="max_length", truncation=True, max_length=max_length, return_tensors="np")["input_ids"]
    got = ours(batch)
    mismatched = [(t, list(e), list(g)) for t, e, g in zip(batch, expected, got) if not np.array_equal(e, g)]
    assert not mismatched, mismatched[:3]


def test_is_gemma_tells_the_two_apart(model_file, tmp_path, text_artefacts):
    assert is_gemma(directory_with(model_file, tmp_path, {}))
    assert not is_gemma(text_artefacts[0])  # SigLIP's spiece.model


def test_siglip2_style_export_classifies_through_runtime(model_file, tmp_path):
    """A tiny SigLIP 2-style checkpoint (Gemma tokenizer files, pad 0 / eos 1 / bos 2): the export
    copies tokenizer.model, and runtime's text embeddings equal transformers' on its own ids."""
    import transformers

    from runtime import TextEncoder, ZeroShotClassifier
    from siglip_export.pipeline import ExportOptions, run_export

    config = tiny_config()
    config.text_config.vocab_size = 400
    config.text_config.pad_token_id, config.text_config.eos_token_id, config.text_config.bos_token_id = 0, 1, 2
    model = hf_model(config)
    ckpt = tmp_path / "ckpt"
    model.save_pretrained(ckpt)
    directory_with(model_file, ckpt, {"add_bos_token": True, "add_eos_token": True, "padding_side": "right",
                                      "model_max_length": 16})
    run_export(ExportOptions(checkpoint=ckpt, output_dir=tmp_path / "out", verify_batch_sizes=(2,)), emit=None)
    assert (tmp_path / "out" / "tokenizer.model").is_file()

    prompts = ["a photo of a cat", "A red car."]
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(ckpt)
    ids = hf_tokenizer(prompts, padding="max_length", truncation=True, max_length=16, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        expected = model.get_text_features(input_ids=ids)
    expected = getattr(expected, "pooler_output", expected).numpy()
    encoder = TextEncoder(tmp_path / "out")
    np.testing.assert_array_equal(encoder.tokenizer(prompts), ids.numpy())
    assert np.abs(encoder.embed(prompts) - expected).max() <= 1e-4 * np.abs(expected).max()
    probs = ZeroShotClassifier(tmp_path / "out", template="{}").probabilities(
        [np.zeros((32, 32, 3), np.uint8)], prompts)
    assert probs.shape == (1, 2) and np.all((probs >= 0) & (probs <= 1))
