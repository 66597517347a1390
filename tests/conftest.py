"""Shared fixtures: tiny configs (fast) and helpers that build checkpoints the way transformers writes them."""

from __future__ import annotations

import io
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from siglip_export.model.config import SiglipConfig, SiglipTextConfig, SiglipVisionConfig

# Words for a sentencepiece corpus (with accents and CJK) and syllables that make up unseen words.
REAL_WORDS = (
    "a an the of on in with and at two three photo picture image painting close up view cat cats dog dogs "
    "bird red blue green yellow small large old young man woman child children car bicycle street road city "
    "night day snow beach mountain river tree flower flowers table chair kitchen window house playing "
    "running sitting standing eating looking café crème brûlée naïve résumé über straße 東京 北京 夜景 猫 写真"
).split()
SYLLABLES = "ka ri to na mo shi be la po du vex dra ting ler ous ment ion pre con ist".split()


def _sentencepiece_corpus() -> list[str]:
    rng = random.Random(0)
    words = REAL_WORDS + ["".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 4))) for _ in range(400)]
    return [" ".join(rng.choice(words) for _ in range(rng.randint(3, 12))) for _ in range(3000)]


def train_sentencepiece(path: Path, vocab_size: int = 400) -> Path:
    """A unigram sentencepiece model in the released SigLIP layout: <pad> 0, </s> 1, <unk> 2, no <s>."""
    import sentencepiece as spm

    blob = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_sentencepiece_corpus()), model_writer=blob, model_type="unigram",
        vocab_size=vocab_size, pad_id=0, eos_id=1, unk_id=2, bos_id=-1, character_coverage=1.0, minloglevel=2,
    )
    path.write_bytes(blob.getvalue())
    return path


def train_gemma_sentencepiece(path: Path, vocab_size: int = 400) -> Path:
    """A sentencepiece model in SigLIP 2's (Gemma's) layout: BPE with byte fallback, no dummy
    prefix, no normalisation; <pad> 0, <eos> 1, <bos> 2, <unk> 3, <mask> 4."""
    import sentencepiece as spm

    blob = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_sentencepiece_corpus()), model_writer=blob, model_type="bpe", vocab_size=vocab_size,
        pad_id=0, eos_id=1, bos_id=2, unk_id=3, pad_piece="<pad>", eos_piece="<eos>", bos_piece="<bos>",
        unk_piece="<unk>", user_defined_symbols=["<mask>"], byte_fallback=True, add_dummy_prefix=False,
        normalization_rule_name="identity", remove_extra_whitespaces=False, split_digits=True,
        character_coverage=1.0, minloglevel=2,
    )
    path.write_bytes(blob.getvalue())
    return path


TINY_TOWER = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)


def tiny_vision_config() -> SiglipVisionConfig:
    return SiglipVisionConfig(image_size=32, patch_size=8, **TINY_TOWER)


def tiny_text_config() -> SiglipTextConfig:
    # pad/eos inside the tiny vocabulary, as in the released files (the </s> piece is id 1).
    return SiglipTextConfig(
        vocab_size=99, max_position_embeddings=16, pad_token_id=1, eos_token_id=1, bos_token_id=None, **TINY_TOWER
    )


def tiny_config() -> SiglipConfig:
    return SiglipConfig(text_config=tiny_text_config(), vision_config=tiny_vision_config())


def rel_err(a, b) -> float:
    """max |a - b| / max |b|: the parity measure used throughout."""
    a = np.asarray(a.detach() if hasattr(a, "detach") else a, dtype=np.float64)
    b = np.asarray(b.detach() if hasattr(b, "detach") else b, dtype=np.float64)
    return float(np.abs(a - b).max() / np.abs(b).max())


def randomize_norms(model, seed: int = 0) -> None:
    """Give every LayerNorm non-trivial weight and bias, so a swapped or skipped norm shows."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.weight.copy_(1 + 0.5 * torch.randn(module.weight.shape, generator=gen))
                module.bias.copy_(0.5 * torch.randn(module.bias.shape, generator=gen))


def hf_model(config, seed: int = 0):
    """A transformers SigLIP model (full or vision-only) with random weights and norms."""
    import transformers

    torch.manual_seed(seed)
    if isinstance(config, SiglipConfig):
        model = transformers.SiglipModel(transformers.SiglipConfig.from_dict(config.to_dict()))
        with torch.no_grad():  # transformers zero-initialises these; make them count
            model.logit_scale.fill_(2.3)
            model.logit_bias.fill_(-4.0)
    else:
        model = transformers.SiglipVisionModel(transformers.SiglipVisionConfig.from_dict(config.to_dict()))
    randomize_norms(model, seed)
    return model.eval()


def write_checkpoint(directory: Path, config_dict: dict, state: dict) -> Path:
    """A checkpoint directory in HF layout from a config dict and a state dict."""
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config_dict))
    save_file({k: v.contiguous() for k, v in state.items()}, str(directory / "model.safetensors"))
    return directory


@pytest.fixture
def tiny_hf_checkpoint(tmp_path):
    """A tiny full SigLIP checkpoint written by transformers' save_pretrained: (dir, hf model)."""
    model = hf_model(tiny_config())
    model.save_pretrained(tmp_path / "ckpt")
    return tmp_path / "ckpt", model


@pytest.fixture(scope="session")
def tiny_artefacts(tmp_path_factory):
    """A tiny full checkpoint exported once per session: (artefact dir, hf model)."""
    from siglip_export.pipeline import ExportOptions, run_export

    base = tmp_path_factory.mktemp("tiny_artefacts")
    model = hf_model(tiny_config())
    model.save_pretrained(base / "ckpt")
    run_export(ExportOptions(checkpoint=base / "ckpt", output_dir=base / "artefacts"), emit=None)
    return base / "artefacts", model


@pytest.fixture(scope="session")
def text_artefacts(tmp_path_factory):
    """A tiny checkpoint with a real (trained) tokenizer and transformers' image processor files,
    exported once: (artefact dir, hf model, hf tokenizer, hf image processor)."""
    import transformers

    from siglip_export.pipeline import ExportOptions, run_export

    base = tmp_path_factory.mktemp("text_artefacts")
    ckpt = base / "ckpt"
    config = tiny_config()
    config.text_config.vocab_size = 400
    model = hf_model(config)
    model.save_pretrained(ckpt)
    tokenizer = transformers.SiglipTokenizer(vocab_file=str(train_sentencepiece(base / "spiece.model")),
                                             model_max_length=16)
    tokenizer.save_pretrained(ckpt)
    processor = transformers.SiglipImageProcessorPil(size={"height": 32, "width": 32})
    processor.save_pretrained(ckpt)
    run_export(ExportOptions(checkpoint=ckpt, output_dir=base / "artefacts", verify_batch_sizes=(2,)), emit=None)
    return base / "artefacts", model, tokenizer, processor
