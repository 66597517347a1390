"""Build, verify and gate the faster variants of one tower.

Verification and gating are the same for every kind: the file is loaded with the runner its kind
names (the code path users deploy) and compared with the eager model on the photos and random
inputs; the gate in the kind's reference runtime decides publication, the others are recorded.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import onnx

from runtime.contract.kinds import KINDS, ONNX, ArtefactKind
from runtime.contract.manifest import ArtefactRecord, Unpublished
from runtime.errors import UserError

from ..graph.build_errors import VariantFailed, VariantSkipped
from ..graph.torch_export import io_signature
from ..options import ExportOptions
from ..progress import Progress
from ..records import artefact_record
from ..verify.gate import measure, measure_elsewhere, reference_provider
from .registry import BUILDERS, Built, TowerExport, VariantBuilder


def check_buildable(variants: tuple[str, ...]) -> None:
    """UserError naming a variant that is registered as a kind but has no builder."""
    unbuildable = [v for v in variants if v not in BUILDERS]
    if unbuildable:
        raise UserError(f"variant {unbuildable[0]!r} is registered but has no builder (siglip_export.variants)")


@dataclass
class VariantResults:
    published: list[ArtefactRecord] = field(default_factory=list)
    rejected: list[Unpublished] = field(default_factory=list)
    skipped: list[Unpublished] = field(default_factory=list)
    shared_files: list[str] = field(default_factory=list)


def build_variants(tower: TowerExport, options: ExportOptions, progress: Progress) -> VariantResults:
    """Build, verify and gate each requested variant of one tower. A rejected variant's files stay
    in the scratch directory, unlisted, and are pruned before publication."""
    out = VariantResults()
    variants = VariantBuilder(tower, options, progress)
    for variant in options.variants:
        kind = KINDS[variant]
        base = dict(file=kind.file(tower.name), tower=tower.name, variant=variant, precision=kind.precision)
        if not kind.applies_to(tower.name):
            out.skipped.append(Unpublished(**base, reason=f"{variant} is made for {kind.made_for} only"))
            continue
        built = _build(variants, kind, base, out, progress)
        if built is not None:
            _verify(tower, kind, built, base, options, out, progress)
    return out


def _build(variants: VariantBuilder, kind: ArtefactKind, base: dict, out: VariantResults,
           progress: Progress) -> Built | None:
    with progress.step(f"build {base['file']}") as step:
        try:
            return variants.build(kind.variant)
        except VariantSkipped as exc:
            out.skipped.append(Unpublished(**base, reason=str(exc)))
            step["note"] = f"skipped: {exc}"
        except (VariantFailed, UserError) as exc:
            out.rejected.append(Unpublished(**base, reason=str(exc)))
            step["note"] = f"REJECTED: {exc}"
        except Exception as exc:  # a variant's failure must not cost the fp32 files that passed
            out.rejected.append(Unpublished(**base, reason=f"build failed: {type(exc).__name__}: {exc}"))
            step["note"] = f"REJECTED: build failed: {type(exc).__name__}"
    return None


def _verify(tower: TowerExport, kind: ArtefactKind, built: Built, base: dict, options: ExportOptions,
            out: VariantResults, progress: Progress) -> None:
    """The gate in the kind's reference runtime decides publication; the others are recorded."""
    gate = options.gate_for(kind.variant)
    reference, samples = tower.gate_inputs(kind)
    with progress.step(f"verify {base['file']}") as step:
        try:
            parity = measure(kind, built.path, reference_provider(kind), reference, samples, gate, options.threads)
        except Exception as exc:
            out.rejected.append(Unpublished(**base, reason=f"verification failed: {type(exc).__name__}: {exc}"))
            step["note"] = f"REJECTED: verification failed: {type(exc).__name__}"
            return
        numbers = parity.worst()
        step["note"] = (f"min cosine {numbers['pooler_output_min_cosine']:.6f} (gate {gate.min_cosine})"
                        + ("" if parity.passed else "  REJECTED"))
    if not parity.passed:
        out.rejected.append(Unpublished(**base, reason="missed its gate", accuracy=numbers, parity=parity))
        return
    others = measure_elsewhere(kind, built.path, reference, samples, gate, options.threads, progress, parity.runtime)
    if kind.format == ONNX:
        signature = io_signature(onnx.load(str(built.path), load_external_data=False))
    else:  # an IR or engine built from the plain graph takes and gives what it does (the contract)
        signature = (tower.plain_record.inputs, tower.plain_record.outputs)
    out.published.append(artefact_record(built.path, built.data_files, tower=tower.name, kind=kind, opset=options.opset,
                                         signature=signature, parity=parity, runtimes=others, accuracy=numbers,
                                         build=built.info))
    out.shared_files += [f for f in built.shared_files if f not in out.shared_files]


__all__ = ["VariantResults", "build_variants", "check_buildable"]
