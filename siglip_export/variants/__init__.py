"""The faster variants of a tower: `registry` (the builders' registry and the on-demand builder),
`builders` (one per kind), `gating` (build, verify, gate; what is published).

Adding a kind is one `register(ArtefactKind(...))` in `runtime.contract.kinds` plus one
`@builder("name")` function (in `builders`, or a plugin's module imported before the export).
"""

from . import builders  # noqa: F401  (registers every builder in registry.BUILDERS)
from .gating import VariantResults, build_variants, check_buildable
from .registry import BUILDERS, Built, TowerExport, VariantBuilder, builder

__all__ = ["BUILDERS", "Built", "TowerExport", "VariantBuilder", "VariantResults", "build_variants", "builder",
           "check_buildable"]
