"""SigLIP 2's text tokenizer (Gemma's sentencepiece) without PyTorch or transformers.

SigLIP 2 checkpoints (`google/siglip2-*`, fixed resolution) ship `tokenizer.model`, a Gemma
sentencepiece model (BPE with byte fallback, no dummy prefix, no normalisation) and a
`tokenizer_config.json` naming `GemmaTokenizer`. `GemmaTokenizer(texts)` gives, id for id, what
transformers' `GemmaTokenizer` gives for `tokenizer(texts, padding="max_length",
truncation=True, max_length=L)`:

1. the text is cut around special and added tokens (leftmost first, longest at one place);
   those become their ids, each piece of text between them is encoded by sentencepiece as is:
   no lower-casing, no punctuation removal (SigLIP 2 was trained on lower-cased text: lower-case
   prompts yourself, as transformers' documentation says);
2. the ids are truncated to leave room for `<bos>` (when `add_bos_token`) and `<eos>` (when
   `add_eos_token`), which are then added. A config that names neither adds neither, as
   transformers 5 does (seen with 5.24: its docstring says bos is on by default, its output
   has none); the checkpoints' own configs name them;
3. padding with `<pad>` (id 0) to `max_length`, on `padding_side` (GemmaTokenizer's default is
   the left; a checkpoint's config may say otherwise).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from ..errors import ArtefactError, InputError
from .sentencepiece_base import NO_LIMIT, SentencePieceTokenizer, read_json

MODEL_FILE = "tokenizer.model"


def is_gemma(directory: str | os.PathLike) -> bool:
    """Whether `directory` holds a Gemma-style tokenizer (SigLIP 2) rather than SigLIP's."""
    directory = Path(directory)
    config = read_json(directory / "tokenizer_config.json")
    return (directory / MODEL_FILE).is_file() and str(config.get("tokenizer_class", "Gemma")).startswith("Gemma")


class GemmaTokenizer(SentencePieceTokenizer):
    """Text -> int64 ids `[N, max_length]` for a SigLIP 2 text tower, as transformers makes them."""

    def __init__(self, model_file: str | os.PathLike, *, max_length: int = 64, add_bos_token: bool = False,
                 add_eos_token: bool = False, bos_token: str = "<bos>", eos_token: str = "<eos>",
                 pad_token: str = "<pad>", unk_token: str = "<unk>", added_tokens: dict[str, int] | None = None,
                 padding_side: str = "left", truncation_side: str = "right"):
        super().__init__(model_file, max_length=max_length, padding_side=padding_side, truncation_side=truncation_side)
        self.add_bos_token, self.add_eos_token = bool(add_bos_token), bool(add_eos_token)
        self._special = dict(added_tokens or {})
        for token in (bos_token, eos_token, pad_token, unk_token):
            if token and token not in self._special:
                self._special[token] = self.piece_id(token)
        self.bos_id, self.eos_id = self._special[bos_token], self._special[eos_token]
        self.pad_id = self._special[pad_token]
        ordered = sorted(self._special, key=len, reverse=True)  # the longest wins at one position
        self._pattern = re.compile("|".join(re.escape(t) for t in ordered))

    @classmethod
    def from_directory(cls, directory: str | os.PathLike, max_length: int | None = None) -> "GemmaTokenizer":
        """`tokenizer.model` and `tokenizer_config.json` of a checkpoint or artefact directory."""
        directory = Path(directory)
        model_file = directory / MODEL_FILE
        if not model_file.is_file():
            raise ArtefactError(f"sentencepiece model not found: {model_file}")
        config = read_json(directory / "tokenizer_config.json")

        def token(name: str, default: str) -> str:
            value = config.get(name, default)
            return str(value.get("content") if isinstance(value, dict) else value)

        added = {str(e["content"]): int(k) for k, e in (config.get("added_tokens_decoder") or {}).items()
                 if isinstance(e, dict) and e.get("content")}
        if max_length is None:
            max_length = config.get("model_max_length", 64)
            if not isinstance(max_length, int) or max_length >= NO_LIMIT:
                max_length = 64  # SigLIP 2's text length; the checkpoint's config sets no limit
        return cls(model_file, max_length=max_length, add_bos_token=config.get("add_bos_token", False),
                   add_eos_token=config.get("add_eos_token", False), bos_token=token("bos_token", "<bos>"),
                   eos_token=token("eos_token", "<eos>"), pad_token=token("pad_token", "<pad>"),
                   unk_token=token("unk_token", "<unk>"), added_tokens=added,
                   padding_side=config.get("padding_side", "left"),
                   truncation_side=config.get("truncation_side", "right"))

    def encode(self, text: str) -> list[int]:
        """Ids of one text: special tokens kept, truncated, <bos> / <eos> added; no padding."""
        if not isinstance(text, str):
            raise InputError(f"text must be a str, got {type(text).__name__}")
        ids: list[int] = []
        last = 0
        for match in self._pattern.finditer(text):
            if match.start() > last:
                ids += self._sp.encode(text[last:match.start()])
            ids.append(self._special[match.group()])
            last = match.end()
        if last < len(text):
            ids += self._sp.encode(text[last:])
        room = max(self.max_length - self.add_bos_token - self.add_eos_token, 0)
        if len(ids) > room:
            ids = ids[len(ids) - room:] if self.truncation_side == "left" else ids[:room]
        return ([self.bos_id] * self.add_bos_token + ids + [self.eos_id] * self.add_eos_token)[:self.max_length]

    def __repr__(self) -> str:
        return (f"GemmaTokenizer({str(self.model_file)!r}, max_length={self.max_length}, "
                f"bos={self.add_bos_token}, eos={self.add_eos_token}, padding_side={self.padding_side!r})")


__all__ = ["GemmaTokenizer", "MODEL_FILE", "is_gemma"]
