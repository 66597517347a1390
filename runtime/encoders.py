"""The Python API: image and text embeddings, and SigLIP zero-shot classification.

    from runtime import ImageEncoder, ZeroShotClassifier
    vectors = ImageEncoder("artifacts").embed(["cat.jpg", "dog.jpg"])          # (2, 768) float32
    probs = ZeroShotClassifier("artifacts").probabilities(["cat.jpg"], ["cat", "dog"])  # (1, 2)

Large inputs are split into chunks of `batch_size`; each chunk is preprocessed just before it
runs, so memory stays bounded. Every encoder is safe to share between threads.

`variant=None` (the default) runs the fastest verified file the export's race recorded for the
provider in use (`Artefacts.choose`), the plain fp32 file where there is none; `variant="fp32"`
forces the plain file. `describe()` says which file runs, where, and why.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .artefacts import Artefacts
from .contract.layer_outputs import FEATURES, POOLER_ATTENTION, attention_name, hidden_state_name, normalize
from .errors import ArtefactError, InputError
from .inputs.images import image_batch, preprocess
from .runners.onnxruntime_model import TensorRTOptions

DEFAULT_TEMPLATE = "This is a photo of {}."  # the prompt SigLIP's zero-shot evaluation uses


def _artefacts(source) -> Artefacts:
    return source if isinstance(source, Artefacts) else Artefacts(source)


def l2_normalize(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norm, np.finfo(x.dtype).tiny)


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # no overflow for large |z|


class _Encoder:
    tower = ""

    def __init__(self, source, *, variant: str | None = None, provider: str = "auto", threads: int | None = None,
                 batch_size: int = 32, tensorrt: TensorRTOptions | None = None, allow_unverified: bool = False):
        if not isinstance(batch_size, int) or batch_size < 1:
            raise InputError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.artefacts = _artefacts(source)
        self.choice = self.artefacts.choose(self.tower, variant, provider)
        self._open_options = dict(provider=provider, threads=threads, tensorrt=tensorrt, allow_unverified=allow_unverified)
        self.model = self.artefacts.open(self.tower, self.choice.variant, **{**self._open_options,
                                                                              "provider": self.choice.provider})
        self.batch_size = min(batch_size, self.model.max_batch or batch_size)

    @property
    def provider(self) -> str:
        """The execution provider that really runs the model."""
        return self.model.provider

    def describe(self) -> str:
        """Which file runs, on what (the provider, and the IO path where the runner says: OnnxModel.describe),
        and why it was chosen."""
        describe = getattr(self.model, "describe", None)
        runs_on = describe() if describe is not None else self.model.provider
        return f"{self.model.path.name} on {runs_on}: {self.choice.reason}"

    def _chunks(self, items: Sequence):
        if len(items) == 0:
            raise InputError(f"no {'images' if self.tower == 'vision' else 'texts'} given (empty batch)")
        for start in range(0, len(items), self.batch_size):
            yield items[start : start + self.batch_size]

    def _pooled(self, x: np.ndarray) -> np.ndarray:
        return self.model.run(x, outputs=("pooler_output",))["pooler_output"]


class ImageEncoder(_Encoder):
    """Images (paths, PIL images or HWC uint8 arrays; one or a sequence) -> embeddings (N, hidden) float32."""

    tower = "vision"

    def __init__(self, source, **kwargs):
        super().__init__(source, **kwargs)
        self.settings = self.artefacts.image_settings()
        size = tuple(self.model.input_shape[2:])
        if size != (self.settings.height, self.settings.width):
            raise ArtefactError(
                f"preprocessing resizes to {self.settings.height}x{self.settings.width} but "
                f"{self.model.path.name} takes {size[0]}x{size[1]}"
            )

    def embed(self, images: Sequence, normalize: bool = False) -> np.ndarray:
        chunks = self._chunks(image_batch(images))
        out = np.concatenate([self._pooled_images(chunk) for chunk in chunks])
        return l2_normalize(out) if normalize else out

    def _pooled_images(self, chunk: list) -> np.ndarray:
        """Preprocess straight into the runner's input buffer where it has one (ONNX Runtime
        with bound buffers: page-locked on a GPU), else into a new array."""
        run_filled = getattr(self.model, "run_filled", None)
        if run_filled is None:
            return self._pooled(self.pixels(chunk))

        def fill(buffer: np.ndarray) -> None:
            preprocess(chunk, self.settings, dtype=buffer.dtype, out=buffer)

        return run_filled(len(chunk), fill, outputs=("pooler_output",))["pooler_output"]

    def pixels(self, images: Sequence) -> np.ndarray:
        """Images -> what the model takes: float32 `pixel_values`, or the resized uint8 images
        for an artefact that normalises in its graph (`cuda-fp16-u8`)."""
        return preprocess(images, self.settings, dtype=self.model.input_dtype)

    def embed_pixels(self, pixel_values: np.ndarray, normalize: bool = False) -> np.ndarray:
        """Already preprocessed (N, 3, H, W) input, of the model's input dtype (`pixels`)."""
        if not isinstance(pixel_values, np.ndarray):
            raise InputError(f"pixel_values must be a numpy array, got {type(pixel_values).__name__}")
        out = np.concatenate([self._pooled(chunk) for chunk in self._chunks(pixel_values)])
        return l2_normalize(out) if normalize else out

    # --- the `features` artefact: layer features and attention maps (runtime.contract.layer_outputs) -----------

    def _features_runner(self):
        if getattr(self, "_features", None) is None:
            if not self.artefacts.has_variant("vision", FEATURES):
                raise ArtefactError(f"{self.artefacts.directory} has no layer features or attention maps: export "
                                    f"with --hidden-states LIST and/or --attention [LAYERS]")
            self._features = self.artefacts.open("vision", FEATURES, **self._open_options)
        return self._features

    def _feature_outputs(self, images: Sequence, names: list[str]) -> dict[str, np.ndarray]:
        runner = self._features_runner()
        missing = [n for n in names if n not in runner.output_names]
        if missing:
            extra = [n for n in runner.output_names if n not in ("last_hidden_state", "pooler_output")]
            raise InputError(f"{missing[0]} was not exported (the features artefact has: {', '.join(extra)}); "
                             f"re-export with other --hidden-states / --attention")
        parts: dict[str, list] = {n: [] for n in names}
        for chunk in self._chunks(image_batch(images)):
            out = runner.run(preprocess(chunk, self.settings, dtype=runner.input_dtype), outputs=names)
            for n in names:
                parts[n].append(out[n])
        return {n: np.concatenate(v) for n, v in parts.items()}

    def _layers(self) -> int:
        config = self.artefacts.manifest.model.config if self.artefacts.manifest else {}
        return int(config.get("vision_config", config)["num_hidden_layers"])

    def features(self, images: Sequence, layers: Sequence[int] = (-2,)) -> dict[int, np.ndarray]:
        """Patch features {layer: (N, patches, hidden) float32}, keyed by the indices as given:
        transformers' `hidden_states[layer]` (0: the patch embeddings; -2: LLaVA's choice)."""
        count = self._layers() + 1
        names = {layer: hidden_state_name(normalize(layer, count, "hidden state")) for layer in layers}
        outputs = self._feature_outputs(images, list(dict.fromkeys(names.values())))
        return {layer: outputs[name] for layer, name in names.items()}

    def attention(self, images: Sequence, layer: int | None = None) -> np.ndarray:
        """Attention maps, averaged over heads: the pooling head's weights over the patches
        (N, patches), or, with `layer`, that encoder layer's self-attention (N, patches, patches)."""
        name = POOLER_ATTENTION if layer is None else attention_name(normalize(layer, self._layers(), "layer"))
        return self._feature_outputs(images, [name])[name]


class TextEncoder(_Encoder):
    """Texts -> pooled embeddings (N, hidden) float32, tokenised like transformers' SiglipTokenizer."""

    tower = "text"

    def __init__(self, source, **kwargs):
        super().__init__(source, **kwargs)
        length = self.model.input_shape[1]
        self.tokenizer = self.artefacts.tokenizer(max_length=length)

    def embed(self, texts: Sequence[str], normalize: bool = False) -> np.ndarray:
        if isinstance(texts, str):
            texts = [texts]
        out = np.concatenate([self._pooled(self.tokenizer(list(chunk))) for chunk in self._chunks(list(texts))])
        return l2_normalize(out) if normalize else out


class ZeroShotClassifier:
    """SigLIP zero-shot classification: independent sigmoid probabilities, not a softmax.

    p(label | image) = sigmoid(cos(image, text(label)) * exp(logit_scale) + logit_bias); the
    probabilities of one image need not sum to 1 (none, one or several labels can apply).
    """

    def __init__(self, source, *, template: str = DEFAULT_TEMPLATE, **kwargs):
        artefacts = _artefacts(source)
        if "text" not in artefacts.towers:
            raise ArtefactError(f"{artefacts.directory} has no text tower; zero-shot classification needs both towers")
        if "{}" not in template:
            raise InputError(f"template must contain '{{}}' where the label goes, got {template!r}")
        self.logit_scale, self.logit_bias = artefacts.logit_parameters()
        self.template = template
        # A variant applies to the image tower; the text tower uses the same variant when the
        # export has one for it (int8-qdq and engines are image-only), else its own default.
        text_kwargs = dict(kwargs)
        if kwargs.get("variant") and not artefacts.has_variant("text", kwargs["variant"]):
            text_kwargs["variant"] = None
        self.text = TextEncoder(artefacts, **text_kwargs)
        self.images = ImageEncoder(artefacts, **kwargs)

    def probabilities(self, images: Sequence, labels: Sequence[str]) -> np.ndarray:
        """(N images, L labels) float32 probabilities."""
        labels = list(labels)
        if not labels or not all(isinstance(label, str) and label.strip() for label in labels):
            raise InputError(f"labels must be non-empty strings, got {labels!r}")
        text = self.text.embed([self.template.format(label) for label in labels], normalize=True)
        image = self.images.embed(images, normalize=True)
        logits = image @ text.T * np.exp(self.logit_scale) + self.logit_bias
        return sigmoid(logits).astype(np.float32)

    def classify(self, images: Sequence, labels: Sequence[str]) -> list[dict[str, float]]:
        """One {label: probability} dict per image, in the labels' order."""
        probs = self.probabilities(images, labels)
        return [{label: float(p) for label, p in zip(labels, row)} for row in probs]


__all__ = ["ImageEncoder", "TextEncoder", "ZeroShotClassifier", "DEFAULT_TEMPLATE", "l2_normalize", "sigmoid"]
