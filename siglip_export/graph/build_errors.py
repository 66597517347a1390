"""How building an artefact can fail without being the user's fault: the exporter broke the contract
(`ExportError`, a bug: exit 1), a variant cannot be built on this machine (`VariantSkipped`, listed
in the manifest's `skipped` with the reason), or it was built wrong (`VariantFailed`: rejected)."""


class ExportError(Exception):
    """The exporter produced something that breaks the artefact contract (a bug, not user input)."""


class VariantSkipped(Exception):
    """This machine cannot build the variant (a missing library or GPU): the reason is the message."""


class VariantFailed(Exception):
    """The variant was built but is structurally wrong (e.g. a fusion did not happen)."""


__all__ = ["ExportError", "VariantFailed", "VariantSkipped"]
