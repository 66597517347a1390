"""How `siglip-runtime serve` serves: its options, checked on construction (UserError naming the value)."""

from __future__ import annotations

from dataclasses import dataclass

from ..contract.kinds import PROVIDERS
from ..errors import UserError


@dataclass(frozen=True)
class ServeOptions:
    """How to serve. Validated on construction (UserError naming the value)."""

    variant: str | None = None
    provider: str = "auto"
    host: str = "127.0.0.1"
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    max_batch: int = 64
    queue_delay_us: int = 100
    instances: int = 1
    threads: int | None = None  # ONNX Runtime threads per instance (default: the cores shared among instances)
    allow_unverified: bool = False
    zero_shot: bool = True  # serve `<prefix>_zero_shot` when the export has both towers
    prefix: str = "siglip"
    # How long a stop lets Triton drain: it waits for open HTTP connections to close (idle
    # keep-alive ones included) and for in-flight requests, out of this one budget. 20 s, so that
    # with the kill after STOP_MARGIN_S the whole stop fits Kubernetes' default 30 s grace period.
    exit_timeout_s: int = 20
    start_timeout_s: float = 300.0

    def __post_init__(self):
        for name in ("http_port", "grpc_port", "metrics_port"):
            port = getattr(self, name)
            if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
                raise UserError(f"--{name.replace('_', '-')} must be a port number 1-65535, got {port!r}")
        ports = [self.http_port, self.grpc_port, self.metrics_port]
        if len(set(ports)) != 3:
            raise UserError(f"the HTTP, gRPC and metrics ports must differ, got {ports}")
        for name in ("max_batch", "instances"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UserError(f"--{name.replace('_', '-')} must be a positive integer, got {value!r}")
        if not isinstance(self.queue_delay_us, int) or self.queue_delay_us < 0:
            raise UserError(f"--queue-delay-us must be an integer >= 0, got {self.queue_delay_us!r}")
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise UserError(f"--threads must be a positive integer, got {self.threads!r}")
        if self.provider not in ("auto", *PROVIDERS):
            raise UserError(f"--provider must be one of auto, {', '.join(PROVIDERS)}; got {self.provider!r}")
        if not self.host:
            raise UserError("--host is empty")


__all__ = ["ServeOptions"]
