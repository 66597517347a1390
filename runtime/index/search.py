"""`siglip-runtime search`: text -> image and image -> image queries against an index.

    from runtime.index.search import ImageIndex
    index = ImageIndex("photos.index")                  # the artefacts recorded in the index
    index.search_text("a red car", k=10)                 # [{"rank", "path", "score", "probability"}]
    index.search_image("query.jpg", k=10)                # [{"rank", "path", "score"}]

A query is embedded by the model that built the index, and only by it: the artefact directory's
manifest must have the sha256 the index recorded (ArtefactError otherwise). `score` is the
cosine; a text query's `probability` is SigLIP's sigmoid of the scaled, biased cosine (the
zero-shot probability that the text describes the image).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..artefacts import Artefacts
from ..contract.manifest import MANIFEST
from ..encoders import ImageEncoder, TextEncoder, sigmoid
from ..errors import ArtefactError, InputError, UserError
from ..files import sha256_file
from .shards import INDEX_FILE, INDEX_FORMAT, read_json
from .store import Store


class ImageIndex:
    def __init__(self, path, artefacts=None, *, provider: str = "auto", threads: int | None = None,
                 allow_unverified: bool = False):
        self.path = Path(path)
        if not (self.path / INDEX_FILE).is_file():
            raise UserError(f"{self.path} is not an index (no {INDEX_FILE}); build one with siglip-runtime index")
        self.info = read_json(self.path / INDEX_FILE)
        if self.info.get("format") != INDEX_FORMAT:
            raise UserError(f"{self.path / INDEX_FILE} is not a siglip-export index")
        if not self.info.get("complete"):
            raise UserError(f"{self.path} is not finished; re-run the same siglip-runtime index command to resume it")
        model = self.info["model"]
        self.artefacts = Artefacts(artefacts if artefacts is not None else model["artefacts"])
        found = sha256_file(self.artefacts.directory / MANIFEST)
        if found != model["manifest_sha256"]:
            raise ArtefactError(f"{self.artefacts.directory} is not the model that built {self.path} (manifest sha256 "
                                f"{found[:12]}, the index's {model['manifest_sha256'][:12]}); query with the artefacts "
                                f"at {model['artefacts']}")
        self.variant = model.get("variant")
        self._options = dict(provider=provider, threads=threads, allow_unverified=allow_unverified)
        self._images: ImageEncoder | None = None
        self._texts: TextEncoder | None = None
        self.store = Store(self.path)

    def __len__(self) -> int:
        return len(self.store)

    def _results(self, vector, k: int) -> list[dict]:
        if not isinstance(k, int) or k < 1:
            raise InputError(f"k must be a positive integer, got {k!r}")
        return [dict(rank=rank, path=path, score=round(score, 6))
                for rank, (path, score) in enumerate(self.store.search(vector, k), 1)]

    def search_image(self, image, k: int = 10) -> list[dict]:
        """The k indexed images nearest to `image` (a path, PIL image or uint8 array)."""
        if self._images is None:
            self._images = ImageEncoder(self.artefacts, variant=self.variant or "fp32", batch_size=1, **self._options)
        return self._results(self._images.embed([image], normalize=True)[0], k)

    def search_text(self, text: str, k: int = 10) -> list[dict]:
        """The k indexed images that `text` describes best, with SigLIP's probability."""
        if not isinstance(text, str) or not text.strip():
            raise InputError(f"the query must be non-empty text, got {text!r}")
        if self._texts is None:
            if "text" not in self.artefacts.towers or not self.artefacts.has_tokenizer():
                raise ArtefactError(f"{self.artefacts.directory} has no text tower and tokenizer; text queries need "
                                    f"both (search by --image instead)")
            variant = self.variant if self.variant and self.artefacts.has_variant("text", self.variant) else None
            self._texts = TextEncoder(self.artefacts, variant=variant, batch_size=1, **self._options)
            self._logits = self.artefacts.logit_parameters()
        results = self._results(self._texts.embed([text], normalize=True)[0], k)
        scale, bias = self._logits
        for row in results:
            row["probability"] = round(float(sigmoid(np.float64(row["score"]) * np.exp(scale) + bias)), 6)
        return results


__all__ = ["ImageIndex"]
