"""What SigLIP's and SigLIP 2's (Gemma's) tokenizers share: a sentencepiece model loaded with a
clear error, the special tokens' ids looked up in it, the layout checks, `tokenizer_config.json`
read, and the batch of ids padded to the text tower's full length. numpy + sentencepiece only."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from ..errors import ArtefactError, InputError, first_line

# transformers writes this (int(1e30)) as model_max_length when a tokenizer has no limit.
NO_LIMIT = 10**20


def import_sentencepiece():
    try:
        import sentencepiece
    except ImportError as exc:  # pragma: no cover - a broken install, reported plainly
        raise ArtefactError(f"sentencepiece is not importable ({exc}); install sentencepiece") from None
    return sentencepiece


class SentencePieceTokenizer:
    """Text -> int64 ids `[N, max_length]`: `encode` (one text, truncated, no padding) is the
    subclass's; loading, special-token ids and padding are here."""

    def __init__(self, model_file: str | os.PathLike, *, max_length: int, padding_side: str, truncation_side: str):
        spm = import_sentencepiece()
        self.model_file = Path(model_file)
        if not self.model_file.is_file():
            raise ArtefactError(f"sentencepiece model not found: {self.model_file}")
        check_layout(max_length, padding_side, truncation_side)
        try:
            proto = self.model_file.read_bytes()
            if not proto:
                raise ValueError("the file is empty")
            self._sp = spm.SentencePieceProcessor(model_proto=self.model_proto(proto))
        except Exception as exc:  # sentencepiece raises RuntimeError / OSError for unreadable or corrupt models
            raise ArtefactError(f"cannot load sentencepiece model {self.model_file}: {first_line(exc)}") from None
        self.vocab_size = int(self._sp.get_piece_size())
        self.max_length = int(max_length)
        self.padding_side, self.truncation_side = padding_side, truncation_side
        self.pad_id = 0  # set by the subclass

    def model_proto(self, proto: bytes) -> bytes:
        """The serialised model as sentencepiece gets it (a subclass may rewrite a field)."""
        return proto

    def piece_id(self, token: str) -> int:
        """The id of a special token, which must be a piece of the model (ArtefactError otherwise)."""
        piece = self._sp.piece_to_id(token)
        if self._sp.id_to_piece(piece) != token:
            raise ArtefactError(f"special token {token!r} is not a piece of {self.model_file}")
        return int(piece)

    def encode(self, text: str) -> list[int]:  # pragma: no cover - every tokenizer defines it
        raise NotImplementedError

    def __call__(self, texts: str | list[str]) -> np.ndarray:
        """int64 ids `[N, max_length]`: each text encoded, truncated and padded with pad_id on `padding_side`."""
        return padded_ids(texts, self.encode, self.max_length, self.pad_id, self.padding_side)


def check_layout(max_length, padding_side: str, truncation_side: str) -> None:
    """InputError naming a max_length that is not an integer >= 1, or a side not left / right."""
    if isinstance(max_length, bool) or not isinstance(max_length, (int, np.integer)) or max_length < 1:
        raise InputError(f"max_length must be an integer >= 1, got {max_length!r}")
    for name, side in (("padding_side", padding_side), ("truncation_side", truncation_side)):
        if side not in ("left", "right"):
            raise InputError(f"{name} must be 'left' or 'right', got {side!r}")


def padded_ids(texts, encode, max_length: int, pad_id: int, padding_side: str) -> np.ndarray:
    """int64 `[N, max_length]`: `encode(text)` of each text (already truncated), padded with
    `pad_id` on `padding_side`. InputError for anything but a str or a non-empty list of str."""
    if isinstance(texts, str):
        texts = [texts]
    elif isinstance(texts, (list, tuple)):
        if not texts:
            raise InputError("texts is an empty list")
    else:
        raise InputError(f"texts must be a str or a list of str, got {type(texts).__name__}")
    out = np.full((len(texts), max_length), pad_id, dtype=np.int64)
    for row, text in enumerate(texts):
        if not isinstance(text, str):
            raise InputError(f"texts[{row}] must be a str, got {type(text).__name__}")
        ids = encode(text)
        if padding_side == "left":
            out[row, max_length - len(ids):] = ids
        else:
            out[row, :len(ids)] = ids
    return out


def read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtefactError(f"cannot read {path}: {exc}") from None
    if not isinstance(value, dict):
        raise ArtefactError(f"{path} must hold a JSON object, got {type(value).__name__}")
    return value


__all__ = ["NO_LIMIT", "SentencePieceTokenizer", "check_layout", "import_sentencepiece", "padded_ids", "read_json"]
