"""SigLIP's text tokenizer without PyTorch or transformers: sentencepiece + numpy.

`SiglipTokenizer(texts)` gives, id for id, what transformers' `SiglipTokenizer` gives for
`tokenizer(texts, padding="max_length", truncation=True, max_length=L)`: int64 `[N, L]`, the
ids padded to exactly the text tower's sequence length (SigLIP pools the last token, so the
text must be padded to full length, the way it was trained).

What transformers does, and so what this does, for one text:

1. prefix the text with "▁" (U+2581, sentencepiece's word boundary), after turning any "▁"
   already in the text into a space;
2. cut the text around special tokens (`</s>`, `<unk>`, the pad token, any extra ones):
   leftmost match first, the longest where several start at the same place. Matching is
   exact and happens before lower-casing, so "</S>" is text, not a token;
3. each piece of text between them is canonicalised (lower-cased when `do_lower_case`, ASCII
   punctuation removed, whitespace runs collapsed to one space, stripped) and encoded by
   sentencepiece *behind the unknown token's text*: "<unk>" + piece is encoded and the
   pieces that "<unk>" alone encodes to are dropped from the front;
4. pieces become ids (a piece outside the vocabulary, e.g. an emoji, becomes the unk id);
5. truncation keeps the first `max_length - 1` ids, then `</s>` is appended unless the ids
   already end with it (text ending in a literal "</s>" gets no second one);
6. `__call__` pads with the pad id, which for the released files is `</s>` (id 1), not
   `<pad>` (id 0).
"""

from __future__ import annotations

import os
import re
import string
from pathlib import Path

import numpy as np

from ..errors import ArtefactError, InputError
from .sentencepiece_base import NO_LIMIT, SentencePieceTokenizer, read_json

WORD_BOUNDARY = "\u2581"  # "▁"
MODEL_FILE = "spiece.model"
_PUNCTUATION = str.maketrans("", "", string.punctuation)
_WHITESPACE = re.compile(r"\s+")


def canonicalize(text: str, lower: bool) -> str:
    """big_vision's text canonicalisation, as transformers applies it to each piece of text."""
    if lower:
        text = text.lower()
    text = text.translate(_PUNCTUATION)
    return _WHITESPACE.sub(" ", text).strip()


# --- sentencepiece's model is a protobuf message. transformers' legacy=False flips one field in
# it; that is done here on the wire format directly, because the generated protobuf classes
# sentencepiece ships refuse to load under a protobuf runtime older than the one they were
# generated with (seen here: gencode 7.36 vs runtime 6.33), and protobuf's version is set by
# whatever else is installed.

def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        out.append((value & 0x7F) | (0x80 if value > 0x7F else 0))
        value >>= 7
        if not value:
            return bytes(out)


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data):
            raise ValueError("truncated varint")
        byte = data[pos]
        value |= (byte & 0x7F) << shift
        pos += 1
        if byte < 0x80:
            return value, pos
        shift += 7


def _fields(data: bytes):
    """Top-level fields of a protobuf message: (number, wire type, field start, payload start, end)."""
    pos = 0
    while pos < len(data):
        field_start = pos
        key, pos = _read_varint(data, pos)
        number, wire = key >> 3, key & 7
        start = pos
        if wire == 0:
            _, pos = _read_varint(data, pos)
        elif wire == 1:
            pos += 8
        elif wire == 2:
            size, start = _read_varint(data, pos)
            pos = start + size
        elif wire == 5:
            pos += 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        if pos > len(data):
            raise ValueError("truncated field")
        yield number, wire, field_start, start, pos


def _without_dummy_prefix(proto: bytes) -> bytes:
    """The model with NormalizerSpec.add_dummy_prefix = false, as transformers makes it for
    `legacy=False`. ModelProto field 3 is the NormalizerSpec; its field 3 is add_dummy_prefix."""
    out = bytearray()
    for number, wire, field_start, start, end in _fields(proto):
        if number != 3 or wire != 2:
            out += proto[field_start:end]
            continue
        spec = proto[start:end]
        kept = b"".join(spec[f:e] for n, _, f, _, e in _fields(spec) if n != 3) + _varint(3 << 3) + _varint(0)
        out += _varint((3 << 3) | 2) + _varint(len(kept)) + kept
    return bytes(out)


class SiglipTokenizer(SentencePieceTokenizer):
    """Text -> int64 ids `[N, max_length]` for the SigLIP text tower, as transformers makes them.

    `model_file` is the sentencepiece model (`spiece.model`). `pad_id` / `eos_id` default to
    the ids of `pad_token` / `eos_token` in it (both `</s>` for the released models).
    The keyword arguments after those mirror `tokenizer_config.json`; `from_directory` reads
    them from there.
    """

    def __init__(self, model_file: str | os.PathLike, *, max_length: int = 64, do_lower_case: bool = True,
                 pad_id: int | None = None, eos_id: int | None = None, eos_token: str = "</s>",
                 pad_token: str = "</s>", unk_token: str = "<unk>", extra_special_tokens=(),
                 added_tokens: dict[str, int] | None = None, legacy: bool = True,
                 split_special_tokens: bool = False, padding_side: str = "right",
                 truncation_side: str = "right"):
        self.legacy = bool(legacy)  # before loading: legacy=False rewrites the model (model_proto)
        super().__init__(model_file, max_length=max_length, padding_side=padding_side, truncation_side=truncation_side)
        self.do_lower_case = bool(do_lower_case)
        self.split_special_tokens = bool(split_special_tokens)
        self.eos_token, self.pad_token, self.unk_token = eos_token, pad_token, unk_token

        # Text that is never handed to sentencepiece: special tokens and added tokens -> id.
        self._special: dict[str, int] = dict(added_tokens or {})
        self._special_names = {t for t in (eos_token, unk_token, pad_token, *extra_special_tokens) if t}
        for token in self._special_names:
            if token not in self._special:
                self._special[token] = self.piece_id(token)
        for name, value in (("eos_id", eos_id), ("pad_id", pad_id)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer))
                                      or not 0 <= value < self.vocab_size):
                raise InputError(f"{name} must be an id in [0, {self.vocab_size}) of {self.model_file}, "
                                 f"got {value!r}")
        self.eos_id = self._special[eos_token] if eos_id is None else int(eos_id)
        self.pad_id = self._special[pad_token] if pad_id is None else int(pad_id)
        # Longest first, so that at one position the longest token wins (as transformers' trie does).
        ordered = sorted(self._special, key=len, reverse=True)
        self._special_pattern = re.compile("|".join(re.escape(t) for t in ordered)) if ordered else None
        # How many pieces the unknown token's text encodes to: they are dropped from each encoding.
        self._unk_prefix_len = len(self._sp.encode(unk_token, out_type=str))

    def model_proto(self, proto: bytes) -> bytes:
        return proto if self.legacy else _without_dummy_prefix(proto)

    @classmethod
    def from_directory(cls, directory: str | os.PathLike, max_length: int | None = None) -> "SiglipTokenizer":
        """The tokenizer saved in a model or artefact directory.

        Reads `spiece.model`, and `tokenizer_config.json` / `special_tokens_map.json` when
        present (do_lower_case, model_max_length, eos / pad / unk tokens, ...). `max_length`
        overrides `model_max_length`.
        """
        directory = Path(directory)
        model_file = directory / MODEL_FILE
        if not model_file.is_file():
            raise ArtefactError(f"sentencepiece model not found: {model_file}")
        config = read_json(directory / "tokenizer_config.json")
        # As transformers 5 does: special_tokens_map.json (the older layout) is read only when
        # tokenizer_config.json has no added_tokens_decoder, and then its values win.
        special_map = {} if "added_tokens_decoder" in config else read_json(directory / "special_tokens_map.json")
        sources = (special_map, config)

        def token(name: str, default: str):
            for source in sources:
                value = source.get(name)
                if isinstance(value, dict):
                    value = value.get("content")
                if value is not None:
                    return str(value)
            return default

        extra = []
        for key in ("extra_special_tokens", "additional_special_tokens"):
            for source in sources:
                for value in source.get(key) or []:
                    value = value.get("content") if isinstance(value, dict) else value
                    if value and value not in extra:
                        extra.append(str(value))
        added = {}
        for key, entry in (config.get("added_tokens_decoder") or {}).items():
            if isinstance(entry, dict) and entry.get("content"):
                if entry.get("single_word"):
                    raise ArtefactError(f"{directory / 'tokenizer_config.json'}: added token "
                                        f"{entry['content']!r} is single_word, which is not supported")
                added[str(entry["content"])] = int(key)
        if config.get("sp_model_kwargs"):
            raise ArtefactError(f"{directory / 'tokenizer_config.json'}: sp_model_kwargs "
                                f"{config['sp_model_kwargs']!r} are not supported")
        if max_length is None:
            max_length = config.get("model_max_length", 64)
            if not isinstance(max_length, int) or max_length >= NO_LIMIT:
                raise ArtefactError(f"{directory / 'tokenizer_config.json'}: model_max_length {max_length!r} "
                                    f"sets no usable limit; pass max_length")
        return cls(
            model_file,
            max_length=max_length,
            do_lower_case=config.get("do_lower_case", True),
            eos_token=token("eos_token", "</s>"),
            pad_token=token("pad_token", "</s>"),
            unk_token=token("unk_token", "<unk>"),
            extra_special_tokens=extra,
            added_tokens=added,
            legacy=config.get("legacy", True) is not False,
            split_special_tokens=config.get("split_special_tokens", False),
            padding_side=config.get("padding_side", "right"),
            truncation_side=config.get("truncation_side", "right"),
        )

    # --- encoding ---

    def _encode_piece_of_text(self, text: str) -> list[str]:
        text = canonicalize(text, self.do_lower_case)
        pieces = self._sp.encode(self.unk_token + text, out_type=str)
        n = self._unk_prefix_len
        return pieces[n:] if len(pieces) >= n else pieces

    def tokenize(self, text: str) -> list[str]:
        """The pieces and special tokens of `text`, before ids, eos and truncation."""
        if not isinstance(text, str):
            raise InputError(f"text must be a str, got {type(text).__name__}")
        text = WORD_BOUNDARY + text.replace(WORD_BOUNDARY, " ")
        if self._special_pattern is None or self.split_special_tokens:
            parts = [text]
        else:
            parts, last = [], 0
            for match in self._special_pattern.finditer(text):
                parts += [text[last:match.start()], match.group()]
                last = match.end()
            parts.append(text[last:])
        # (transformers' lstrip / rstrip flags of special tokens strip the neighbouring text;
        # canonicalisation strips each piece of text anyway, so they change nothing here.)
        tokens: list[str] = []
        for i, part in enumerate(parts):
            if not part:
                continue
            if i % 2 and not self.split_special_tokens:  # odd positions hold the matched special tokens
                tokens.append(part)
            else:
                tokens += self._encode_piece_of_text(part)
        # A lone leading "▁" before a special token is dropped.
        if len(tokens) > 1 and tokens[0] == WORD_BOUNDARY and tokens[1] in self._special_names:
            tokens = tokens[1:]
        return tokens

    def encode(self, text: str) -> list[int]:
        """Ids of one text, truncated to max_length, ending in eos; no padding."""
        ids = [self._special[t] if t in self._special else int(self._sp.piece_to_id(t)) for t in self.tokenize(text)]
        excess = len(ids) + 1 - self.max_length  # + 1: room for eos
        if excess > 0:
            ids = ids[excess:] if self.truncation_side == "left" else ids[:len(ids) - excess]
        if not ids or ids[-1] != self.eos_id:
            ids.append(self.eos_id)
        return ids

    def __repr__(self) -> str:
        return (f"SiglipTokenizer({str(self.model_file)!r}, max_length={self.max_length}, "
                f"do_lower_case={self.do_lower_case}, pad_id={self.pad_id}, eos_id={self.eos_id})")


__all__ = ["MODEL_FILE", "SiglipTokenizer", "canonicalize"]
