"""The models `siglip-runtime serve` runs inside Triton's Python backend.

Triton's Python backend starts one stub process per model instance; the `model.py` that
`runtime.serving.server` writes for each model imports one of these classes as `TritonPythonModel`.
They read their settings from the model's `config.pbtxt` parameters (the artefact directory,
variant, provider, threads) and run the artefacts through `runtime`, as `siglip-runtime embed`
does, so the served path is the same fast path.

Triton has already checked every request against the config (data type, dims, batch size
<= max_batch_size) before `execute` sees it. What is left here: an empty batch and values the
model refuses (a token id outside the vocabulary) get an error response for that request
alone; the requests batched with it still succeed.
"""

from __future__ import annotations

import json

import numpy as np

from ..artefacts import Artefacts
from ..encoders import TextEncoder, l2_normalize, sigmoid
from ..errors import UserError


def _settings(args: dict) -> tuple[dict, dict]:
    config = json.loads(args["model_config"])
    parameters = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
    return config, parameters


def _tensor(pb_utils, name: str, array: np.ndarray):
    """An output tensor, handed over through DLPack: the backend's numpy interface predates
    numpy 2 and reads a numpy 2 array's item size as 0 (an empty output)."""
    return pb_utils.Tensor.from_dlpack(name, np.ascontiguousarray(array))


def _array(pb_utils, request, name: str) -> np.ndarray:
    """An input tensor as numpy, through DLPack (see `_tensor`); a copy owned here."""
    return np.array(np.from_dlpack(pb_utils.get_input_tensor_by_name(request, name)))


def _run_options(parameters: dict) -> dict:
    """The parameters `runtime.serving.server` wrote, as runtime's keyword arguments."""
    return dict(provider=parameters.get("provider") or "auto",
                threads=int(parameters["threads"]) if parameters.get("threads") else None,
                allow_unverified=parameters.get("allow_unverified") == "1")


def _open(parameters: dict, tower: str):
    """(Artefacts, runner) as the parameters say; a variant the tower lacks falls back to its fp32 file."""
    artefacts = Artefacts(parameters["artefacts"])
    variant = parameters.get("variant") or None
    if variant and not artefacts.has_variant(tower, variant):
        variant = None
    return artefacts, artefacts.open(tower, variant, **_run_options(parameters))


class TowerModel:
    """`<prefix>_vision` / `<prefix>_text`: one tower, batched by Triton; the outputs a request
    asks for (all of them when it names none)."""

    def initialize(self, args: dict) -> None:
        import triton_python_backend_utils as pb_utils  # only inside Triton's stub

        self.pb = pb_utils
        config, parameters = _settings(args)
        self.tower = parameters["tower"]
        _, self.model = _open(parameters, self.tower)
        self.input_name = config["input"][0]["name"]
        self.output_names = [o["name"] for o in config["output"]]

    def _error(self, message: str):
        return self.pb.InferenceResponse(output_tensors=[], error=self.pb.TritonError(message))

    def _respond(self, request, outputs: dict[str, np.ndarray]):
        wanted = request.requested_output_names() or self.output_names
        return self.pb.InferenceResponse(output_tensors=[
            _tensor(self.pb, name, outputs[name]) for name in self.output_names if name in wanted])

    def execute(self, requests: list) -> list:
        inputs = [_array(self.pb, r, self.input_name) for r in requests]
        responses: list = [None] * len(requests)
        good = []
        for i, x in enumerate(inputs):
            if x.shape[0] == 0:
                responses[i] = self._error(f"{self.input_name}: empty batch (shape {list(x.shape)})")
            else:
                good.append(i)
        if good:
            try:  # the common case: one model call for every request Triton batched together
                outputs = self.model.run(np.concatenate([inputs[i] for i in good]))
            except UserError:
                outputs = None  # some request holds a value the model refuses: run them one by one
            if outputs is not None:
                offset = 0
                for i in good:
                    n = inputs[i].shape[0]
                    responses[i] = self._respond(requests[i], {k: v[offset:offset + n] for k, v in outputs.items()})
                    offset += n
            else:
                for i in good:
                    try:
                        responses[i] = self._respond(requests[i], self.model.run(inputs[i]))
                    except UserError as exc:
                        responses[i] = self._error(str(exc))
        return responses

    def finalize(self) -> None:
        self.model = None


class ZeroShotModel:
    """`<prefix>_zero_shot`: `pixel_values` [N, 3, H, W] and raw `text` (UINT8: the prompts in
    UTF-8, one per line, used as given) -> sigmoid `probabilities` and `logits` [N, L]. Not
    batched by Triton: every request brings its own labels. Text embeddings are kept per prompt,
    so repeated labels cost nothing.

    Why not Triton's BYTES type: this Python backend (Triton 2.51) builds a BYTES input with a
    numpy interface older than numpy 2 and hands the model corrupted bytes (every byte a copy
    of the first); numeric tensors cross intact through DLPack."""

    cache_size = 4096

    def initialize(self, args: dict) -> None:
        import triton_python_backend_utils as pb_utils

        self.pb = pb_utils
        _, parameters = _settings(args)
        artefacts, self.images = _open(parameters, "vision")
        self.text = TextEncoder(artefacts, **{**_run_options(parameters), "variant": parameters.get("text_variant") or "fp32",
                                              "provider": parameters.get("text_provider") or "auto"})
        self.logit_scale, self.logit_bias = artefacts.logit_parameters()
        self.cache: dict[str, np.ndarray] = {}

    def _text(self, prompts: list[str]) -> np.ndarray:
        missing = [p for p in dict.fromkeys(prompts) if p not in self.cache]
        if missing:
            if len(self.cache) + len(missing) > self.cache_size:
                self.cache.clear()
            for prompt, vector in zip(missing, self.text.embed(missing, normalize=True)):
                self.cache[prompt] = vector
        return np.stack([self.cache[p] for p in prompts])

    def _one(self, request):
        pixels = _array(self.pb, request, "pixel_values")
        prompts = _array(self.pb, request, "text").tobytes().decode("utf-8").split("\n")
        if pixels.shape[0] == 0:
            raise ValueError("pixel_values: empty batch")
        if not prompts or not all(p.strip() for p in prompts):
            raise ValueError(f"text must hold non-empty prompts, got {prompts!r}")
        image = l2_normalize(self.images.run(pixels, outputs=("pooler_output",))["pooler_output"])
        logits = (image @ self._text(prompts).T * np.exp(self.logit_scale) + self.logit_bias).astype(np.float32)
        wanted = request.requested_output_names() or ("probabilities", "logits")
        outputs = {"probabilities": sigmoid(logits).astype(np.float32), "logits": logits}
        return self.pb.InferenceResponse(output_tensors=[_tensor(self.pb, k, v) for k, v in outputs.items() if k in wanted])

    def execute(self, requests: list) -> list:
        responses = []
        for request in requests:
            try:
                responses.append(self._one(request))
            except (UserError, ValueError) as exc:
                responses.append(self.pb.InferenceResponse(output_tensors=[], error=self.pb.TritonError(str(exc))))
        return responses

    def finalize(self) -> None:
        self.images = self.text = None


__all__ = ["TowerModel", "ZeroShotModel"]
