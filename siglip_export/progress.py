"""Progress of a long export: one line per finished step, with its time and the total elapsed."""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from typing import Callable, Iterator


class Progress:
    """`with progress.step("export vision_model.onnx") as step: ...; step["note"] = "475 nodes"`.

    On a terminal the running step is shown (overwritten when it ends); `emit=None` is silent.
    """

    def __init__(self, emit: Callable[[str], None] | None = print):
        self.emit = emit or (lambda line: None)
        self.start = time.perf_counter()
        self.live = bool(emit is print and sys.stdout.isatty())

    def info(self, line: str) -> None:
        if self.live:  # over the running step's line: clear it first
            sys.stdout.write("\r\033[K")
        self.emit(line)

    @contextmanager
    def step(self, name: str) -> Iterator[dict]:
        if self.live:
            sys.stdout.write(f"[{time.perf_counter() - self.start:6.1f}s] {name} ...\r")
            sys.stdout.flush()
        begun = time.perf_counter()
        detail: dict = {}
        yield detail
        took = time.perf_counter() - begun
        note = f"  {detail['note']}" if detail.get("note") else ""
        self.emit(f"[{time.perf_counter() - self.start:6.1f}s] {name:<42} {took:6.1f}s{note}")
