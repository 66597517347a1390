"""What an export run is asked to do, checked before any work starts."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from runtime.contract.kinds import ENGINE, KINDS, variant_names
from runtime.contract.layer_outputs import FEATURES, parse_indices, parse_layers
from runtime.errors import UserError

from .graph.torch_export import DEFAULT_EXTERNAL_DATA_THRESHOLD, DEFAULT_OPSET, check_opset
from .model.feature_tower import FeatureRequest
from .verify.gate import Gate


@dataclass
class ExportOptions:
    checkpoint: Path | None = None
    preset: str | None = None  # used when no checkpoint is given; DEFAULT_PRESET when neither
    output_dir: Path = Path("artifacts")
    towers: tuple[str, ...] | None = None  # None: every tower the model has
    opset: int = DEFAULT_OPSET
    verify_batch_sizes: tuple[int, ...] = (1, 3, 8)
    simplify: bool = True
    seed: int = 0
    gate: Gate = field(default_factory=Gate)
    external_data_threshold: int = DEFAULT_EXTERNAL_DATA_THRESHOLD
    threads: int | None = None  # ONNX Runtime threads for verification (None: all cores)
    variants: tuple[str, ...] = ()  # faster variants to build, each behind its gate (runtime.contract.KINDS)
    # What the export is for (siglip_export.variants.targets): its variants are built too, and the
    # published files race on this machine; None: only `variants`, no race.
    target: str | None = None
    # The int8 searches' quick form (int8_search.quick: fewer search rows, one search); --target sets it.
    quick_search: bool = False
    gates: dict[str, float] = field(default_factory=dict)  # variant -> min cosine, over each kind's default
    calibration_images: Path | None = None  # int8-qdq / ov-int8 calibration (default: the packaged photos)
    trt_profile: tuple[int, int, int] = (1, 8, 64)  # TensorRT batch profile min / opt / max
    # The `features` artefact (runtime.contract.layer_outputs): layer indices as given ("-2", "4,8,-1", "all"),
    # resolved against the model's depth once it is loaded; attention "" is the pooling head's only.
    hidden_states: str | None = None
    attention: str | None = None
    image_size: int | None = None  # export for this input size (position embeddings interpolated)

    def feature_request(self, layers: int) -> FeatureRequest:
        """What the features artefact outputs, for a tower of `layers` encoder layers."""
        hidden = parse_layers(self.hidden_states, layers + 1, "--hidden-states index") if self.hidden_states else ()
        attention = (parse_layers(self.attention, layers, "--attention layer") if self.attention else ())
        return FeatureRequest(hidden_states=hidden, attention_layers=attention,
                              pooler_attention=self.attention is not None)

    def gate_for(self, variant: str) -> Gate:
        """A variant's gate: a minimum cosine of pooler_output (--gate, else its kind's default)."""
        return Gate(max_rel_err=None, min_cosine=self.gates.get(variant, KINDS[variant].gate),
                    outputs=("pooler_output",))

    def check(self) -> None:
        """Raise UserError naming the first bad value."""
        check_opset(self.opset)
        if not self.verify_batch_sizes or any(b < 1 for b in self.verify_batch_sizes):
            raise UserError(f"verify batch sizes must be positive integers, got {self.verify_batch_sizes}")
        if FEATURES in self.variants:
            raise UserError(f"{FEATURES!r} is not a --variants entry: ask for --hidden-states and/or --attention")
        # The syntax now; the range once the model's depth is known (the pipeline, after loading).
        for text, what in ((self.hidden_states, "--hidden-states index"), (self.attention, "--attention layer")):
            if text:
                parse_indices(text, what)
        if self.image_size is not None and (isinstance(self.image_size, bool) or not isinstance(self.image_size, int)
                                            or self.image_size < 1):
            raise UserError(f"--image-size must be a positive integer, got {self.image_size!r}")
        known = variant_names()
        unknown = [v for v in self.variants if v not in known]
        if unknown:
            raise UserError(f"unknown variant {unknown[0]!r} (choose from {', '.join(known)})")
        for variant, value in self.gates.items():
            if variant not in known:
                raise UserError(f"--gate names unknown variant {variant!r} (choose from {', '.join(known)})")
            if not -1.0 <= value <= 1.0:
                raise UserError(f"--gate {variant}={value}: a minimum cosine must lie in [-1, 1]")
        self._check_trt_profile()
        if self.calibration_images is not None and not Path(self.calibration_images).is_dir():
            raise UserError(f"--calibration-images {self.calibration_images} is not a directory")

    def _check_trt_profile(self) -> None:
        if len(self.trt_profile) != 3:
            raise UserError(f"--trt-profile needs three batch sizes MIN,OPT,MAX, got {self.trt_profile}")
        low, opt, high = self.trt_profile
        if not 1 <= low <= opt <= high:
            raise UserError(f"--trt-profile {low},{opt},{high}: need 1 <= min <= opt <= max")
        engines = [v for v in self.variants if KINDS[v].format == ENGINE]
        sizes = self.verify_batch_sizes
        if engines and not low <= min(sizes) <= max(sizes) <= high:
            raise UserError(f"--trt-profile {low},{opt},{high} must cover the verification batch sizes "
                            f"{','.join(map(str, sizes))}")
