"""An artefact directory as `export.py` writes it, or a single `.onnx` file.

The directory is self-contained: `manifest.json` (read into `contract.Manifest`) lists the
models and holds `logit_scale` / `logit_bias`; `preprocessor_config.json` and the tokenizer
files sit beside the models. A lone `.onnx` file carries its config and preprocessing in its
`metadata_props`. Models are found by their manifest record (tower, variant), never by name.

`choose` answers which file to run when no variant is asked for: the fastest verified one the
export's race recorded for the provider in use (`runtime.contract.selection`), else the plain
fp32 file, with the reason either way.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from .contract.kinds import KINDS, ArtefactKind, Runner, kind_of, open_runner, runtime_of
from .contract.manifest import ArtefactRecord, Manifest
from .contract.selection import CPU_RUNTIMES, GPU_RUNTIMES, RaceEntry, same_machine
from .errors import ArtefactError, InputError, ProviderError
from .inputs.images import PREPROCESSOR_CONFIG, ImageSettings

PLAIN = ("fp32", "plain")  # what `--variant` / `variant=` accepts for the plain fp32 file


def plain_or(variant: str | None) -> str | None:
    """`variant`, with "fp32" / "plain" meaning the plain file (None)."""
    return None if variant in PLAIN else variant


@dataclass(frozen=True)
class Choice:
    """Which file of a tower to run and how: `variant` (None: the plain file), the `provider` to
    open it with, and why, for messages and `describe()`."""

    variant: str | None
    provider: str
    file: str
    reason: str


class Artefacts:
    """Where the models, preprocessing, tokenizer and logit parameters of an export live."""

    def __init__(self, source: str | os.PathLike):
        source = Path(source)
        if not source.exists():
            raise ArtefactError(f"artefact directory not found: {source}")
        self.single_file = source if source.is_file() else None
        self.directory = source.parent if self.single_file else source
        self._metadata: dict[Path, dict[str, str]] = {}
        self.manifest: Manifest | None = None
        if self.single_file is None:
            self.manifest = Manifest.read(self.directory)
        elif source.suffix != ".onnx":
            raise ArtefactError(f"{source} is neither an artefact directory nor an .onnx file")

    @property
    def towers(self) -> list[str]:
        if self.manifest is None:
            return [self._single_tower()]
        return self.manifest.towers

    def _single_tower(self) -> str:
        return self.metadata(self.single_file).get("siglip.tower", "vision")

    def record(self, tower: str, variant: str | None = None) -> ArtefactRecord:
        """The manifest's record of a tower's plain export or of one of its variants."""
        variant = plain_or(variant)
        if self.manifest is None:
            raise ArtefactError(f"{self.single_file} is a single file; it has no manifest records")
        found = self.manifest.find(tower, variant)
        if found is None:
            kind = kind_of(variant)  # an unknown name: InputError listing the known ones
            wanted = (kind.file(tower) if kind.applies_to(tower)
                      else f"{kind.name} artefact for the {tower} tower ({kind.name} is made for {kind.made_for} only)")
            listed = ", ".join(a.file for a in self.manifest.artefacts) or "nothing"
            raise ArtefactError(f"{self.directory} has no {wanted} (the export has: {listed})")
        return found

    def model_file(self, tower: str, variant: str | None = None) -> Path:
        """The path of a tower's model (`variant`: a registered variant name, see runtime.contract)."""
        if self.single_file:
            found = self._single_tower()
            if found != tower:
                raise ArtefactError(f"{self.single_file} is the {found} tower, not the {tower} tower")
            return self.single_file
        return self._path_of(self.record(tower, variant))

    def _path_of(self, record: ArtefactRecord) -> Path:
        path = self.directory / record.file
        if not path.is_file():
            raise ArtefactError(f"{path} is listed in manifest.json but missing")
        return path

    def kind(self, tower: str, variant: str | None = None) -> ArtefactKind:
        """The kind of file `model_file(tower, variant)` is."""
        if self.single_file:  # the exporter stamps variants into the file's metadata
            stamped = self.metadata(self.single_file).get("siglip.variant")
            return KINDS.get(stamped, KINDS[None])
        return self.record(tower, variant).kind

    def has_variant(self, tower: str, variant: str) -> bool:
        return self.manifest is not None and self.manifest.find(tower, plain_or(variant)) is not None

    def choose(self, tower: str, variant: str | None = None, provider: str = "auto") -> Choice:
        """What to run for `tower`: `variant` when one is asked for ("fp32" / "plain": the plain
        file); else the fastest artefact the export's race recorded for `provider` among those
        verified in that runtime, falling back to the plain file, with the reason."""
        if variant is not None:
            wanted = plain_or(variant)
            file = self.record(tower, wanted).file if self.manifest is not None else self.model_file(tower).name
            return Choice(wanted, provider, file, f"--variant {variant} asked for" if wanted else "the plain fp32 file, "
                          f"asked for (--variant {variant})")
        if self.manifest is None:
            return Choice(None, provider, self.single_file.name, "a single file")
        plain = self.record(tower).file
        selection = self.manifest.selection
        if selection is None or not selection.towers.get(tower):
            return Choice(None, provider, plain, "the fp32 file: this export has no race records (made before "
                          "--target existed, or with --target portable); re-export with --target cpu or cuda to run "
                          "the fastest verified file by default")
        runtimes = _runtimes_for(provider)
        listed = [e for e in selection.results(tower) if e.runtime in runtimes
                  and (provider == "auto" or self._runtime_with(tower, e, provider) == e.runtime)]
        usable = [e for e in listed if self._verified(tower, e)]
        where = "this machine's GPU" if set(runtimes) == set(GPU_RUNTIMES) else \
            ("the CPU" if provider == "auto" else f"provider {provider}")
        if not usable:
            why = (f"the export's pick for {where}, {listed[0].file}, was never verified there (export on the "
                   f"machine that runs it, or ask for it: --variant {listed[0].variant or 'fp32'} --allow-unverified)"
                   if listed else f"the export's race has no result for {where} "
                   f"(target {selection.target})")
            return Choice(None, provider, plain, f"the fp32 file: {why}")
        absent = sorted({e.runtime for e in usable if not _installed(e.runtime)})
        usable = [e for e in usable if e.runtime not in absent]
        missing = f" ({', '.join(absent)} left out: not installed here)" if absent else ""
        if not usable:
            return Choice(None, provider, plain, f"the fp32 file: the export's picks for {where} run in "
                          f"{', '.join(absent)}, which is not installed here")
        best = usable[0]
        if not selection.raced:
            reason = f"chosen at export by the {selection.target} target's rule, not raced ({selection.note})"
        else:
            reason = f"the fastest verified file for {where} in the export's race, {best.timing()}"
            if len(usable) > 1:
                reason += f"; runner-up {usable[1].label}, {usable[1].timing()}"
            reason += missing
            if best.runtime in CPU_RUNTIMES:
                from .runners.environment import cpu_identity

                here = cpu_identity()
                if not same_machine(selection.machine, here):
                    raced_on = selection.machine or {}
                    reason += (f"; the race ran on another CPU ({raced_on.get('cpu', 'unknown')}, "
                               f"{' '.join(raced_on.get('isa') or []) or 'no listed ISA'}), this one is "
                               f"{here['cpu']} ({' '.join(here['isa']) or 'no listed ISA'}): the winner there may "
                               f"not be the fastest here")
        return Choice(best.variant, best.provider if provider == "auto" else provider, best.file, reason)

    def _runtime_with(self, tower: str, entry: RaceEntry, provider: str) -> str | None:
        """The runtime `entry`'s file runs in with `provider`, None where the kind does not take it."""
        record = self.manifest.find(tower, entry.variant)
        if record is None or record.variant not in KINDS:
            return None
        kind = record.kind
        if provider not in kind.providers:
            return None
        return runtime_of(kind, provider)

    def _verified(self, tower: str, entry: RaceEntry) -> bool:
        """Whether the entry's file is in the manifest, takes the contract's float32 input, and
        passed its gate in the entry's runtime."""
        record = self.manifest.find(tower, entry.variant)
        if record is None or record.variant != entry.variant or record.file != entry.file:
            return False
        if record.variant not in KINDS or record.kind.image_input != "float32":
            return False
        parity = record.gate_in(entry.runtime)
        return parity is not None and parity.passed

    def open(self, tower: str, variant: str | None = None, *, provider: str = "auto", threads: int | None = None,
             tensorrt=None, allow_unverified: bool = False) -> Runner:
        """Load a tower's model (or variant) with the runner its kind names, in a runtime where the
        export verified it: a runtime where its gate failed is refused, and for a variant one where
        it was never measured too, unless `allow_unverified` (ProviderError naming both)."""
        variant = plain_or(variant)
        if variant and self.single_file:
            raise InputError(f"variant {variant!r} needs an artefact directory; {self.single_file} is one file")
        if self.single_file:
            return open_runner(self.kind(tower), self.model_file(tower), provider=provider, threads=threads,
                               tensorrt=tensorrt)
        record = self.record(tower, variant)  # looked up once: its file, its kind and its gates
        path, kind = self._path_of(record), record.kind
        auto = None
        if not allow_unverified:
            if provider == "auto":
                auto = tuple(p for p in kind.providers if _refusal(record, kind, p) is None)
                if not auto:
                    raise ProviderError(f"{record.file} passed its gate in none of the runtimes it runs in "
                                        f"({', '.join(kind.providers)}); pass --allow-unverified to run it anyway")
            else:
                refusal = _refusal(record, kind, provider) if provider in kind.providers else None
                if refusal:
                    raise ProviderError(refusal)
        return open_runner(kind, path, provider=provider, threads=threads, tensorrt=tensorrt, auto_providers=auto)

    def metadata(self, path: Path) -> dict[str, str]:
        if path not in self._metadata:
            from .runners.onnxruntime_model import OnnxModel

            self._metadata[path] = OnnxModel(path).metadata
        return self._metadata[path]

    def image_settings(self) -> ImageSettings:
        config = self.directory / PREPROCESSOR_CONFIG
        if self.manifest is not None and config.is_file():
            return ImageSettings.from_file(config)
        if self.manifest is not None:
            return ImageSettings.from_dict(self.manifest.model.preprocessing)
        text = self.metadata(self.single_file).get("siglip.preprocessing")
        if text:
            return ImageSettings.from_dict(json.loads(text))
        raise ArtefactError(f"no preprocessing settings for {self.single_file}")

    def logit_parameters(self) -> tuple[float, float]:
        model = self.manifest.model if self.manifest is not None else None
        if model is None or model.logit_scale is None or model.logit_bias is None:
            raise ArtefactError(
                f"{self.directory} has no logit_scale / logit_bias (a vision-only export cannot classify)"
            )
        return model.logit_scale, model.logit_bias

    def has_tokenizer(self) -> bool:
        """Whether the directory holds a tokenizer: SigLIP's `spiece.model` or SigLIP 2's (Gemma) `tokenizer.model`."""
        from .inputs.gemma_tokenizer import is_gemma

        return (self.directory / "spiece.model").is_file() or is_gemma(self.directory)

    def tokenizer(self, max_length: int):
        """The text tokenizer of the directory: SigLIP 2's Gemma sentencepiece (`tokenizer.model`)
        or SigLIP's (`spiece.model`), configured by `tokenizer_config.json`."""
        from .inputs.gemma_tokenizer import GemmaTokenizer, is_gemma

        if is_gemma(self.directory):
            return GemmaTokenizer.from_directory(self.directory, max_length=max_length)
        if not (self.directory / "spiece.model").is_file():
            raise ArtefactError(
                f"{self.directory} has no tokenizer (spiece.model or tokenizer.model); export from a checkpoint "
                f"that includes it"
            )
        from .inputs.siglip_tokenizer import SiglipTokenizer

        return SiglipTokenizer.from_directory(self.directory, max_length=max_length)


def _refusal(record: ArtefactRecord, kind: ArtefactKind, provider: str) -> str | None:
    """Why `record` must not run with `provider` (its gate failed there, or, for a variant, was
    never measured there), or None. The plain fp32 file is the portable contract: it runs where
    it was not measured."""
    runtime = runtime_of(kind, provider)
    parity = record.gate_in(runtime)
    verified = [p.runtime for p in (record.parity, *record.runtimes.values()) if p.passed]
    where = f"; it passed in: {', '.join(verified)}" if verified else ""
    how = " Pass --allow-unverified (allow_unverified=True) to run it there anyway."
    if parity is None:
        if kind.variant is None:
            return None
        return f"{record.file} was never verified in {runtime} (the export could not run it there{where}).{how}"
    if parity.passed:
        return None
    worst = min(r.outputs["pooler_output"].min_cosine for r in parity.results if "pooler_output" in r.outputs)
    return (f"{record.file} missed its gate in {runtime} at export (pooler cosine {worst:.6f} < "
            f"{parity.gate.min_cosine}{where}).{how}")


def _runtimes_for(provider: str) -> tuple[str, ...]:
    """The runtimes `provider` means: "auto" is the GPU's where this machine runs CUDA, else the
    CPU's (ONNX Runtime's and OpenVINO's)."""
    if provider == "auto":
        from .runners.environment import cuda_provider_here

        return GPU_RUNTIMES if cuda_provider_here() else CPU_RUNTIMES
    return {"cpu": CPU_RUNTIMES, "openvino": ("openvino-cpu",), "cuda": ("onnxruntime-cuda",),
            "tensorrt": ("onnxruntime-tensorrt", "tensorrt")}.get(provider, ())


RUNTIME_MODULES = {"openvino-cpu": "openvino", "tensorrt": "tensorrt"}  # runtimes that are a module of their own


def _installed(runtime: str) -> bool:
    """Whether `runtime` can load files on this host: OpenVINO and TensorRT are optional installs (a
    deployment may carry onnxruntime alone), ONNX Runtime's providers are checked when a file opens."""
    import importlib.util

    module = RUNTIME_MODULES.get(runtime)
    return module is None or importlib.util.find_spec(module) is not None
