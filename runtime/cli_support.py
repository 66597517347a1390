"""What the command lines share: one-line usage errors, and the mapping of failures to exit codes."""

from __future__ import annotations

import argparse
import re
import sys
from typing import Callable

from .errors import UserError


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a usage error prints one line naming the bad value (no usage block)."""

    def error(self, message: str):
        print(f"error: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)


def attach_negative_values(argv: list[str], options: tuple[str, ...]) -> list[str]:
    """`--opt -2,5` -> `--opt=-2,5` for `options` that take index lists: argparse would read a
    value that starts with '-' and is not a plain negative number as another option."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        if argv[i] in options and i + 1 < len(argv) and re.fullmatch(r"-\d[\d,\s-]*", argv[i + 1]):
            out.append(f"{argv[i]}={argv[i + 1]}")
            i += 2
            continue
        out.append(argv[i])
        i += 1
    return out


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}")
    return value


def int_list(text: str, *, minimum: int | None = 1, allow_empty: bool = False) -> tuple[int, ...]:
    """Comma-separated integers ("1,3,8"), each >= `minimum` (None: any); empty only if allowed.
    Raises argparse.ArgumentTypeError naming the text (argparse turns it into a usage error)."""
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values and not allow_empty:
        raise argparse.ArgumentTypeError(f"expected at least one integer, got {text!r}")
    if minimum is not None and any(v < minimum for v in values):
        wanted = "positive integers" if minimum == 1 else f"integers >= {minimum}"
        raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}")
    return values


def positive_int_list(text: str) -> tuple[int, ...]:
    """argparse type: comma-separated integers >= 1, at least one ("1,3,8")."""
    return int_list(text)


def run_command(action: Callable[[], None], *, debug: bool,
                failures: dict[type[BaseException], tuple[int, str]] | None = None) -> int:
    """Run `action` and turn what it raises into an exit status and stderr lines.

    UserError: 2 and one line; `failures` maps other exception types to (status, prefix);
    Ctrl-C: 130; anything else is a bug: 1 and one line. `debug` re-raises for the traceback.
    """
    handlers = {UserError: (2, ""), **(failures or {})}
    try:
        action()
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if debug:
            raise
        for kind, (status, prefix) in handlers.items():
            if isinstance(exc, kind):
                print(f"error: {prefix}{exc}", file=sys.stderr)
                return status
        print(f"internal error: {type(exc).__name__}: {exc} (rerun with --debug for the traceback)", file=sys.stderr)
        return 1
    return 0
