"""An artefact directory as `export.py` writes it, or a single `.onnx` file.

The directory is self-contained: `manifest.json` names the models and holds `logit_scale` /
`logit_bias`; `preprocessor_config.json` and the tokenizer files sit beside the models. A
lone `.onnx` file carries its config and preprocessing in its `metadata_props`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .errors import ArtefactError
from .preprocess import PREPROCESSOR_CONFIG, ImageSettings

MANIFEST = "manifest.json"
TOWER_FILES = {"vision": "vision_model", "text": "text_model"}


class Artefacts:
    """Where the models, preprocessing, tokenizer and logit parameters of an export live."""

    def __init__(self, source: str | os.PathLike):
        source = Path(source)
        if not source.exists():
            raise ArtefactError(f"artefact directory not found: {source}")
        self.single_file = source if source.is_file() else None
        self.directory = source.parent if self.single_file else source
        self.manifest: dict = {}
        self._metadata: dict[Path, dict[str, str]] = {}
        if self.single_file is None:
            manifest = self.directory / MANIFEST
            if not manifest.is_file():
                raise ArtefactError(f"{self.directory} has no {MANIFEST}: not an artefact directory written by export.py")
            try:
                self.manifest = json.loads(manifest.read_text(encoding="utf-8"))
                entries = self.manifest["artefacts"]
                if not isinstance(entries, list) or not all(
                        isinstance(a, dict) and isinstance(a.get("file"), str) and a.get("tower") in TOWER_FILES
                        for a in entries):
                    raise TypeError("'artefacts' must be a list of {file, tower} records")
            except (ValueError, KeyError, TypeError) as exc:
                raise ArtefactError(f"{manifest} is not a valid manifest: {exc}") from None
        elif source.suffix != ".onnx":
            raise ArtefactError(f"{source} is neither an artefact directory nor an .onnx file")

    @property
    def towers(self) -> list[str]:
        if self.single_file:
            return [self.metadata(self.single_file).get("siglip.tower", "vision")]
        return [t for t in TOWER_FILES if any(a.get("tower") == t for a in self.manifest["artefacts"])]

    def model_file(self, tower: str, variant: str | None = None) -> Path:
        """A tower's model: `vision_model.onnx`, or a variant: `vision_model.<variant>.onnx`, the
        OpenVINO IR `vision_model.ov-bf16.xml`, the TensorRT engine `vision_model.<precision>.engine`
        (`variant="trt-fp16"` or `"fp16"` when only the engine exists)."""
        if self.single_file:
            found = self.metadata(self.single_file).get("siglip.tower", "vision")
            if found != tower:
                raise ArtefactError(f"{self.single_file} is the {found} tower, not the {tower} tower")
            return self.single_file
        listed = {a["file"] for a in self.manifest["artefacts"]}
        stem = TOWER_FILES[tower]
        candidates = ([f"{stem}.{variant}.onnx", f"{stem}.{variant}.xml", f"{stem}.{variant}.engine",
                       f"{stem}.{variant.removeprefix('trt-')}.engine"] if variant else [f"{stem}.onnx"])
        name = next((c for c in candidates if c in listed), candidates[0])
        if name not in listed:
            raise ArtefactError(
                f"{self.directory} has no {name} (the export has: {', '.join(sorted(listed)) or 'nothing'})"
            )
        path = self.directory / name
        if not path.is_file():
            raise ArtefactError(f"{path} is listed in {MANIFEST} but missing")
        return path

    def has_variant(self, tower: str, variant: str) -> bool:
        try:
            self.model_file(tower, variant)
        except ArtefactError:
            return False
        return True

    def entry(self, path: Path) -> dict:
        """The manifest's record of a model file ({} for a lone file)."""
        return next((a for a in self.manifest.get("artefacts", []) if a["file"] == Path(path).name), {})

    def metadata(self, path: Path) -> dict[str, str]:
        if path not in self._metadata:
            from .session import OnnxModel

            self._metadata[path] = OnnxModel(path).metadata
        return self._metadata[path]

    def image_settings(self) -> ImageSettings:
        config = self.directory / PREPROCESSOR_CONFIG
        if self.single_file is None and config.is_file():
            return ImageSettings.from_file(config)
        if self.manifest.get("model", {}).get("preprocessing"):
            return ImageSettings.from_dict(self.manifest["model"]["preprocessing"])
        if self.single_file:
            text = self.metadata(self.single_file).get("siglip.preprocessing")
            if text:
                return ImageSettings.from_dict(json.loads(text))
        raise ArtefactError(f"no preprocessing settings for {self.single_file or self.directory}")

    def logit_parameters(self) -> tuple[float, float]:
        model = self.manifest.get("model", {})
        if model.get("logit_scale") is None or model.get("logit_bias") is None:
            raise ArtefactError(
                f"{self.directory} has no logit_scale / logit_bias (a vision-only export cannot classify)"
            )
        return float(model["logit_scale"]), float(model["logit_bias"])

    def tokenizer(self, max_length: int):
        """The SigLIP tokenizer from the directory's sentencepiece files."""
        if not (self.directory / "spiece.model").is_file():
            raise ArtefactError(
                f"{self.directory} has no tokenizer (spiece.model); export from a checkpoint that includes it"
            )
        from .tokenizer import SiglipTokenizer

        return SiglipTokenizer.from_directory(self.directory, max_length=max_length)
