"""Exceptions shared by the build side (`siglip_export`) and the deploy side (`runtime`).

Both command lines turn a `UserError` into one line on stderr and exit status 2: it means
the input was wrong (a path, a flag, a file), not that the program is broken.
"""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (libraries append pages of detail), or its type."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class UserError(Exception):
    """A problem with what the user gave us. The message names the offending value."""


class ArtefactError(UserError):
    """An artefact directory or model file is missing, truncated or inconsistent."""


class InputError(UserError, ValueError):
    """An input tensor or image that the model cannot take (wrong shape, dtype, values)."""


class ProviderError(UserError):
    """An execution provider that was asked for by name cannot run on this machine."""

