"""The models `siglip-runtime serve` puts in Triton's repository: one per tower (its variant where
it has one) and zero-shot classification with both towers, each a config.pbtxt (the tensors,
dims and batching of the `--triton-repo` configs, runtime.serving.model_config) and a model.py
that loads its class from runtime.serving.backend inside Triton's Python backend."""

from __future__ import annotations

import os
import site
import sys
from dataclasses import dataclass
from pathlib import Path

from ..artefacts import Artefacts, Choice, plain_or
from ..contract.manifest import TensorInfo
from ..errors import UserError
from .model_config import batching_lines, instance_lines, model_name, parameter_lines, tensor_block
from .settings import ServeOptions

BACKEND_MODULE = "runtime.serving.backend"


def model_py(class_name: str) -> str:
    """The model.py Triton loads: this environment's import path, then the class from runtime."""
    site_dirs = [d for d in site.getsitepackages() + [site.getusersitepackages()] if Path(d).is_dir()]
    paths = [p or os.getcwd() for p in sys.path]
    return "\n".join([
        "# Written by siglip-runtime serve for Triton's Python backend: this environment's import path,",
        "# then the model class from runtime.",
        "import site",
        "import sys",
        "",
        f"for _d in {site_dirs!r}:",
        "    site.addsitedir(_d)",
        f"for _p in reversed({paths!r}):",
        "    if _p not in sys.path:",
        "        sys.path.insert(0, _p)",
        "",
        f"from {BACKEND_MODULE} import {class_name} as TritonPythonModel  # noqa: E402,F401",
        "",
    ])


@dataclass
class ServedModel:
    name: str
    config: str
    class_name: str
    source: str = ""  # which file it serves and why, for the start-up log


def _choice(artefacts: Artefacts, tower: str, options: ServeOptions) -> tuple[Choice, str]:
    """(what a tower serves, its model name): `--variant` where the tower has it (the name says
    so), fp32 where it lacks it; with no `--variant`, the export's recorded fastest verified file
    under the plain name, so that clients keep `<prefix>_<tower>`."""
    if options.variant is None:
        return artefacts.choose(tower, None, options.provider), model_name(options.prefix, tower, None)
    wanted = plain_or(options.variant)
    variant = wanted if wanted and artefacts.has_variant(tower, wanted) else None
    return artefacts.choose(tower, variant or "fp32", options.provider), model_name(options.prefix, tower, variant)


def plan(artefacts: Artefacts, options: ServeOptions) -> list[ServedModel]:
    """The models to serve: each tower (its variant where it has one), and zero-shot with both towers."""
    wanted = plain_or(options.variant)
    if wanted and not any(artefacts.has_variant(t, wanted) for t in artefacts.towers):
        raise UserError(f"--variant {options.variant!r}: {artefacts.directory} has no such artefact "
                        f"(towers: {', '.join(artefacts.towers)})")
    cores = os.cpu_count() or 1
    threads = options.threads or max(1, cores // options.instances)
    common = {"artefacts": str(artefacts.directory.resolve()), "threads": str(threads),
              "allow_unverified": "1" if options.allow_unverified else "0"}
    models = []
    chosen = {}
    for tower in artefacts.towers:
        choice, name = chosen[tower] = _choice(artefacts, tower, options)
        record = artefacts.record(tower, choice.variant)
        lines = [f'name: "{name}"', 'backend: "python"', f"max_batch_size: {options.max_batch}"]
        lines += tensor_block("input", record.inputs, record.file)
        lines += tensor_block("output", record.outputs, record.file)
        lines += batching_lines((), options.queue_delay_us)
        lines += instance_lines(options.instances, "KIND_CPU")
        lines += parameter_lines({**common, "tower": tower, "variant": choice.variant or "",
                                  "provider": choice.provider})
        models.append(ServedModel(name, "\n".join(lines) + "\n", "TowerModel", f"{record.file}: {choice.reason}"))
    if options.zero_shot and _can_classify(artefacts):
        (vision_choice, _), (text_choice, _) = chosen["vision"], chosen["text"]
        vision = artefacts.record("vision", vision_choice.variant)
        pixels = TensorInfo("pixel_values", vision.inputs[0].dtype, vision.inputs[0].shape)
        lines = [f'name: "{options.prefix}_zero_shot"', 'backend: "python"', "max_batch_size: 0"]
        lines += tensor_block("input", [pixels, TensorInfo("text", "uint8", ["bytes"])], vision.file, batched=False)
        lines += tensor_block("output", [TensorInfo("probabilities", "float32", ["images", "labels"]),
                                         TensorInfo("logits", "float32", ["images", "labels"])], vision.file,
                              batched=False)
        lines += instance_lines(options.instances, "KIND_CPU")
        lines += parameter_lines({**common, "variant": vision_choice.variant or "", "provider": vision_choice.provider,
                                  "text_variant": text_choice.variant or "fp32", "text_provider": text_choice.provider})
        models.append(ServedModel(f"{options.prefix}_zero_shot", "\n".join(lines) + "\n", "ZeroShotModel",
                                  f"{vision.file} and {artefacts.record('text', text_choice.variant).file}"))
    return models


def _can_classify(artefacts: Artefacts) -> bool:
    """Zero-shot needs both towers, the tokenizer and the logit scale and bias."""
    model = artefacts.manifest.model if artefacts.manifest is not None else None
    return ({"vision", "text"} <= set(artefacts.towers) and artefacts.has_tokenizer()
            and model is not None and model.logit_scale is not None)


__all__ = ["BACKEND_MODULE", "ServedModel", "model_py", "plan"]
