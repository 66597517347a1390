"""runtime.inputs.siglip_tokenizer against transformers' SiglipTokenizer, id for id.

The sentencepiece model is trained here, once per module, in the released SigLIP layout
(`<pad>` = 0, `</s>` = 1, `<unk>` = 2, no `<s>`; unigram; default nmt_nfkc normaliser with
the dummy prefix on), so the test needs no download.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import REAL_WORDS, train_sentencepiece

from runtime.errors import ArtefactError, InputError
from runtime.inputs.siglip_tokenizer import SiglipTokenizer

transformers = pytest.importorskip("transformers")
spm = pytest.importorskip("sentencepiece")

# transformers warns when a text already ends in </s>; that case is tested on purpose.
pytestmark = pytest.mark.filterwarnings("ignore:This sequence already has")

ROOT = Path(__file__).resolve().parents[1]

# Letters that never occur in the corpus, so they are outside the vocabulary: j, q, w, z, emoji.
UNKNOWN = "jazz quiz wowzy 😀🐱"

TEXTS = [
    "a photo of a cat",
    "two dogs playing in the snow on the beach",
    "A PHOTO OF A CAT",
    "A Painting Of Flowers In The Kitchen",
    "hello, world!!! (it's) a \"test\"; #1 @home $5 50% a&b *x* [y] {z} ~ ` ^ | \\ / : ? ... -- __ +=",
    "a.photo.of.a.cat",
    "  a\t\tphoto \n\n of   a  cat  ",
    "\t",
    "\n\n",
    " ",
    "\u3000full\u3000width space\u00a0nbsp\u2009thin",
    "naïve résumé über straße café crème brûlée",
    "東京の夜景 北京 写真 猫",
    "😀🐱 a cat 🐶",
    "ﬁne ligature ＡＢＣ full width １２３",
    "İstanbul ΣΊΣΥΦΟΣ",
    "zero\u200bwidth joiner\u200d",
    "",
    UNKNOWN,
    "a cat called jazz in a quiz",
    "</s>",
    "a cat </s>",
    "a cat</s>",
    "</s> a cat",
    "</s>a cat",
    "a </s> cat </s></s>",
    "A CAT</S>",
    "<unk>",
    "x <unk> y",
    "<unk>cat",
    "<pad> a cat",
    "a cat <s> </ s>",
    "\u2581a \u2581cat\u2581",
    "\u2581",
    " ".join(["a large red car parked in the street at night"] * 12),
    " ".join(REAL_WORDS * 3),
    " ".join(["cat"] * 63) + " </s>",
    " ".join(["cat"] * 70) + "</s>",
]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A directory holding only `spiece.model`: a 400-piece unigram model in SigLIP's id layout."""
    directory = tmp_path_factory.mktemp("spiece")
    train_sentencepiece(directory / "spiece.model", vocab_size=400)
    return directory


@pytest.fixture(scope="module")
def model_file(model_dir) -> Path:
    return model_dir / "spiece.model"


@pytest.fixture(scope="module")
def hf(model_file):
    return transformers.SiglipTokenizer(vocab_file=str(model_file))


def hf_ids(tokenizer, texts, max_length: int) -> np.ndarray:
    return tokenizer(texts, padding="max_length", truncation=True, max_length=max_length, return_tensors="np")["input_ids"]


def random_texts(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    alphabet = (list("abcdeXYZ  \t\n\u3000\u00a0.,!?'\"-()<>/_") + REAL_WORDS
                + ["</s>", "<unk>", "<pad>", "</S>", "\u2581", "😀", "ﬁ", "İ", " cat ", "Dog", "\u200b", "２", "jq"])
    return ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 60))) for _ in range(n)]


def test_model_has_the_released_layout(model_file, hf):
    sp = spm.SentencePieceProcessor(model_file=str(model_file))
    assert [sp.id_to_piece(i) for i in range(3)] == ["<pad>", "</s>", "<unk>"]
    assert sp.get_piece_size() == 400
    assert sp.piece_to_id("😀") == sp.unk_id() == 2  # the UNKNOWN text really is unknown
    # transformers' defaults: eos and pad are both </s>
    assert (hf.eos_token_id, hf.pad_token_id, hf.unk_token_id) == (1, 1, 2)


def test_transformers_has_one_siglip_tokenizer(model_dir, hf, tmp_path):
    """In transformers 5 the only SigLIP tokenizer is the sentencepiece one: SiglipTokenizerFast is an alias
    of it and AutoTokenizer picks it even with use_fast=True. If a real fast variant ever appears, this fails
    and the parity below has to be checked against it too."""
    assert type(hf).__mro__[1].__name__ == "SentencePieceBackend"
    assert getattr(transformers, "SiglipTokenizerFast", transformers.SiglipTokenizer) is transformers.SiglipTokenizer
    hf.save_pretrained(tmp_path)
    for use_fast in (True, False):
        assert type(transformers.AutoTokenizer.from_pretrained(tmp_path, use_fast=use_fast)) is transformers.SiglipTokenizer


def test_defaults(model_file):
    tok = SiglipTokenizer(model_file)
    assert (tok.max_length, tok.pad_id, tok.eos_id, tok.vocab_size, tok.do_lower_case) == (64, 1, 1, 400, True)


@pytest.mark.parametrize("max_length", [64, 16, 2, 1])
def test_encode_matches_transformers(model_file, hf, max_length):
    tok = SiglipTokenizer(model_file, max_length=max_length)
    for text in TEXTS:
        assert tok.tokenize(text) == hf.tokenize(text), repr(text)
        expected = hf(text, truncation=True, max_length=max_length)["input_ids"]
        assert tok.encode(text) == expected, repr(text)
        assert len(tok.encode(text)) <= max_length


@pytest.mark.parametrize("max_length", [64, 16])
def test_padded_batch_matches_transformers(model_file, hf, max_length):
    tok = SiglipTokenizer(model_file, max_length=max_length)
    got = tok(TEXTS)
    assert got.dtype == np.int64 and got.shape == (len(TEXTS), max_length)
    np.testing.assert_array_equal(got, hf_ids(hf, TEXTS, max_length))
    # one string is a batch of one
    np.testing.assert_array_equal(tok("a photo of a cat"), hf_ids(hf, "a photo of a cat", max_length))
    np.testing.assert_array_equal(tok(tuple(TEXTS[:3])), hf_ids(hf, TEXTS[:3], max_length))


def test_eos_kept_at_every_truncation_boundary(model_file, hf):
    """Texts whose ids end exactly around max_length, with and without a literal </s> at the end:
    truncation keeps max_length - 1 ids and appends </s>, unless the ids already end in it."""
    tok = SiglipTokenizer(model_file, max_length=16)
    texts = [" ".join(["cat"] * n) + tail for n in range(4, 22) for tail in ("", " </s>", "</s>", " </s></s>")]
    for text in texts:
        assert tok.encode(text) == hf(text, truncation=True, max_length=16)["input_ids"], repr(text)
    np.testing.assert_array_equal(tok(texts), hf_ids(hf, texts, 16))
    assert tok.encode(" ".join(["cat"] * 40))[-1] == tok.eos_id


def test_random_texts_match_transformers(model_file, hf):
    texts = random_texts(600, seed=0)
    for max_length in (64, 16):
        tok = SiglipTokenizer(model_file, max_length=max_length)
        np.testing.assert_array_equal(tok(texts), hf_ids(hf, texts, max_length))


def test_legacy_false_and_no_lower_case_match_transformers(model_file):
    """legacy=False makes transformers switch off sentencepiece's dummy prefix; do_lower_case=False keeps case."""
    texts = TEXTS + random_texts(200, seed=1)
    for kwargs in ({"legacy": False}, {"do_lower_case": False}):
        ref = transformers.SiglipTokenizer(vocab_file=str(model_file), **kwargs)
        tok = SiglipTokenizer(model_file, max_length=16, **kwargs)
        np.testing.assert_array_equal(tok(texts), hf_ids(ref, texts, 16))


def test_from_directory_reads_save_pretrained(model_file, tmp_path):
    saved = tmp_path / "saved"
    transformers.SiglipTokenizer(
        vocab_file=str(model_file), pad_token="<pad>", do_lower_case=False, model_max_length=16
    ).save_pretrained(saved)
    assert json.loads((saved / "tokenizer_config.json").read_text())["pad_token"] == "<pad>"
    ref = transformers.AutoTokenizer.from_pretrained(saved)
    tok = SiglipTokenizer.from_directory(saved)
    assert (tok.max_length, tok.pad_id, tok.eos_id, tok.do_lower_case) == (16, 0, 1, False)
    texts = TEXTS + random_texts(100, seed=2)
    np.testing.assert_array_equal(tok(texts), hf_ids(ref, texts, 16))
    # max_length overrides model_max_length
    tok64 = SiglipTokenizer.from_directory(saved, max_length=64)
    assert tok64.max_length == 64
    np.testing.assert_array_equal(tok64(texts), hf_ids(ref, texts, 64))


def test_from_directory_defaults_match_transformers_defaults(model_dir, hf, tmp_path):
    saved = tmp_path / "default"
    hf.save_pretrained(saved)
    for directory in (model_dir, saved):  # spiece.model alone, and with transformers' tokenizer_config.json
        tok = SiglipTokenizer.from_directory(directory)
        assert (tok.max_length, tok.pad_id, tok.eos_id, tok.do_lower_case) == (64, 1, 1, True)
        np.testing.assert_array_equal(tok(TEXTS), hf_ids(hf, TEXTS, 64))


def test_from_directory_reads_special_tokens_map(model_file, tmp_path):
    """The older layout: tokenizer_config.json without added_tokens_decoder, and special_tokens_map.json."""
    directory = tmp_path / "older"
    directory.mkdir()
    shutil.copy(model_file, directory / "spiece.model")
    (directory / "tokenizer_config.json").write_text(json.dumps(
        {"do_lower_case": True, "model_max_length": 16, "pad_token": "</s>", "tokenizer_class": "SiglipTokenizer"}))
    flags = {"lstrip": True, "rstrip": True, "normalized": False, "single_word": False}
    (directory / "special_tokens_map.json").write_text(json.dumps({
        "eos_token": {"content": "</s>", **flags}, "pad_token": {"content": "<pad>", **flags}, "unk_token": "<unk>"}))
    ref = transformers.SiglipTokenizer.from_pretrained(directory)
    tok = SiglipTokenizer.from_directory(directory)
    assert (ref.pad_token_id, tok.pad_id, tok.max_length) == (0, 0, 16)
    texts = TEXTS + random_texts(100, seed=3)
    np.testing.assert_array_equal(tok(texts), hf_ids(ref, texts, 16))


# --- errors ---

def test_missing_model_file(tmp_path):
    with pytest.raises(ArtefactError, match="nope.model"):
        SiglipTokenizer(tmp_path / "nope.model")
    with pytest.raises(ArtefactError, match="spiece.model"):
        SiglipTokenizer.from_directory(tmp_path)


@pytest.mark.parametrize("corruption", ["empty", "junk", "truncated", "json"])
def test_corrupt_model_file(model_file, tmp_path, corruption):
    data = model_file.read_bytes()
    blob = {"empty": b"", "junk": b"\x00\xffnot a sentencepiece model" * 10, "truncated": data[: len(data) // 2],
            "json": b'{"model": {"type": "Unigram"}}'}[corruption]
    bad = tmp_path / "spiece.model"
    bad.write_bytes(blob)
    for legacy in (True, False):
        with pytest.raises(ArtefactError, match=str(bad)):
            SiglipTokenizer(bad, legacy=legacy)
    with pytest.raises(ArtefactError, match=str(bad)):
        SiglipTokenizer.from_directory(tmp_path)


def test_corrupt_tokenizer_config(model_file, tmp_path):
    shutil.copy(model_file, tmp_path / "spiece.model")
    (tmp_path / "tokenizer_config.json").write_text("{not json")
    with pytest.raises(ArtefactError, match="tokenizer_config.json"):
        SiglipTokenizer.from_directory(tmp_path)


@pytest.mark.parametrize("texts, named", [
    (None, "NoneType"), (3, "int"), (b"a cat", "bytes"), (["a cat", 1], "int"), (["a cat", None], "NoneType"),
    (np.array(["a cat"]), "ndarray"),
])
def test_non_string_text(model_file, texts, named):
    with pytest.raises(InputError, match=named):
        SiglipTokenizer(model_file)(texts)


def test_non_string_text_to_encode(model_file):
    with pytest.raises(InputError, match="bytes"):
        SiglipTokenizer(model_file).encode(b"a cat")


def test_empty_list(model_file):
    with pytest.raises(InputError, match="empty"):
        SiglipTokenizer(model_file)([])


@pytest.mark.parametrize("max_length", [0, -1, 2.5, "64", True])
def test_bad_max_length(model_file, max_length):
    with pytest.raises(InputError, match="max_length"):
        SiglipTokenizer(model_file, max_length=max_length)


def test_explicit_ids(model_file):
    tok = SiglipTokenizer(model_file, max_length=8, pad_id=0, eos_id=1)
    assert tok("a cat")[0].tolist()[-3:] == [0, 0, 0] and tok.encode("a cat")[-1] == 1
    for bad in (-1, 400, 1.0, True):
        with pytest.raises(InputError, match="pad_id"):
            SiglipTokenizer(model_file, pad_id=bad)
