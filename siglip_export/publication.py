"""Publishing a directory atomically: build it in a hidden scratch directory beside the target,
then swap it into place. A run killed at any moment leaves no partial file under the final
names, and a failed run leaves the previous directory untouched.

`Staging` is the one sequence every publication goes through (artefact directories in
pipeline.py, Triton repositories in siglip_export.triton): resolve the target, check it may be
replaced, build in the scratch directory, publish by swapping it in, and remove the scratch
whatever happens. A target is only ever replaced when it is empty or holds exactly what an
earlier run of ours wrote (as its record file lists): anything else in it is a user's file and
is never deleted.
"""

from __future__ import annotations

import ctypes
import os
import shutil
from pathlib import Path
from typing import Callable

from runtime.errors import UserError


def resolve_target(path: str | os.PathLike) -> Path:
    """The real directory behind `path` (a symbolic link is followed, so the link keeps working)."""
    path = Path(path)
    return path.resolve() if path.is_symlink() else path


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def scratch_path(target: Path, kind: str = "tmp", pid: int | None = None) -> Path:
    return target.parent / f".{target.name}.{kind}-{os.getpid() if pid is None else pid}"


def remove_stale_scratch(target: Path) -> None:
    """Remove scratch directories that runs killed earlier left beside `target`."""
    for kind in ("tmp", "old"):
        for path in target.parent.glob(f".{target.name}.{kind}-*"):
            pid = path.name.rsplit("-", 1)[-1]
            if pid.isdigit() and not _pid_alive(int(pid)):
                if path.is_symlink() or not path.is_dir():
                    path.unlink(missing_ok=True)
                else:
                    shutil.rmtree(path, ignore_errors=True)


def check_replaceable(target: Path, record: str, owned: Callable[[Path], set[str]], what: str) -> None:
    """Raise UserError unless `target` is absent, empty, or exactly an earlier run's output.

    `record` is the file that marks our output; `owned(target)` lists the names it accounts for.
    """
    if target.exists() and not target.is_dir():
        raise UserError(f"{what} {target} is a file, not a directory")
    if not target.is_dir() or not any(target.iterdir()):
        return
    if not (target / record).is_file():
        raise UserError(f"{what} {target} exists and was not written by siglip-export (no {record}); "
                        f"choose another directory or empty it")
    foreign = sorted(p.name for p in target.iterdir() if p.name not in owned(target) | {record})
    if foreign:
        shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
        raise UserError(f"{what} {target} holds files siglip-export did not write ({shown}); replacing it would "
                        f"delete them: move them out or choose another directory")


def make_scratch(target: Path, what: str) -> Path:
    """Create the scratch directory beside `target` (clearing what killed runs left there)."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_scratch(target)
        scratch = scratch_path(target)
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir()
    except OSError as exc:
        raise UserError(f"{what} {target} is not writable: {exc.strerror or exc}") from None
    return scratch


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def publish(scratch: Path, target: Path) -> None:
    """Move the finished scratch directory to `target`, replacing an earlier output whole."""
    if not target.exists():
        os.rename(scratch, target)
        return
    if _exchange(scratch, target):
        shutil.rmtree(scratch)  # now holds the previous output
        return
    old = scratch_path(target, "old")
    os.rename(target, old)
    os.rename(scratch, target)
    shutil.rmtree(old)


def is_within(path: Path, other: Path) -> bool:
    """Whether `path` is `other` or lies inside it (both resolved)."""
    path, other = Path(path).resolve(), Path(other).resolve()
    return path == other or other in path.parents


class Staging:
    """A directory published atomically.

        stage = Staging(target, MANIFEST, owned_by_manifest, "output directory")
        with stage:                       # checked replaceable, scratch directory made beside it
            ...write into stage.scratch...
            stage.publish()               # swapped into place
        # left without publishing (an error, Ctrl-C): the scratch is removed, the target untouched

    `record` is the file that marks our output; `owned(target)` lists the names it accounts for;
    `what` names the target in messages.
    """

    def __init__(self, path: str | os.PathLike, record: str, owned: Callable[[Path], set[str]], what: str):
        self.target = resolve_target(path)
        self.record, self.owned, self.what = record, owned, what
        self.scratch: Path | None = None

    def check(self) -> Path:
        """UserError unless the target may be (re)placed; returns it."""
        check_replaceable(self.target, self.record, self.owned, self.what)
        return self.target

    def __enter__(self) -> "Staging":
        self.check()
        self.scratch = make_scratch(self.target, self.what)
        return self

    def publish(self) -> None:
        publish(self.scratch, self.target)

    def __exit__(self, *exc) -> None:
        if self.scratch is not None and self.scratch.exists():
            shutil.rmtree(self.scratch, ignore_errors=True)


__all__ = ["Staging", "is_within", "remove_stale_scratch", "resolve_target"]
