"""Serve an artefact directory from a real Triton Inference Server (`siglip-runtime serve`).

    with Server("artifacts", ServeOptions(http_port=8000)) as server:   # started, models ready
        print(server.urls)                                               # ... clients send requests
    # stopped: in-flight requests finished, the workspace removed

The server is NVIDIA's `tritonserver` (the build inside the `nvidia-pytriton` wheel, which
carries the Python backend; `pip install --no-deps nvidia-pytriton==0.7.0`, or a `tritonserver`
on PATH that has a Python backend) with one Python-backend model per served thing, each running
the artefacts through `runtime` (`runtime.serving.backend`):

    <prefix>_vision[_<variant>]   pixel_values [-1, 3, H, W] -> pooler_output, last_hidden_state
    <prefix>_text[_<variant>]     input_ids [-1, L] -> pooler_output, last_hidden_state
    <prefix>_zero_shot            pixel_values [N, 3, H, W], text (UINT8: UTF-8 prompts, one per line)
                                  -> probabilities, logits [N, L]

The towers' names, tensors, dims and dynamic batching are those of the repository `--triton-repo`
writes for a stock Triton (`runtime.serving.model_config`), so a client written for either works
against the other. Triton batches requests (`max_batch`, `queue_delay_us`), checks their data
type, dims and batch size, and answers health (`/v2/health/ready`) and metrics (`/metrics`).

Set-up done here so a user runs one command: the backend stub for this interpreter's Python
version, `LD_LIBRARY_PATH` starting with this interpreter's own libpython (the stub otherwise
links the system's, whose standard library differs from this one's), and the stub's import
path (this environment's site-packages and `runtime`). The workspace is a temporary directory.
"""

from __future__ import annotations

import errno
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from ..artefacts import Artefacts
from ..errors import UserError
from .models import model_py, plan
from .settings import ServeOptions

PYTRITON_INSTALL = "pip install --no-deps nvidia-pytriton==0.7.0"


# After SIGTERM and the exit timeout, how long tritonserver gets to exit before it is killed.
STOP_MARGIN_S = 5


class ServerError(RuntimeError):
    """tritonserver failed after it started (not a user mistake): exit status 1."""


@dataclass(frozen=True)
class TritonDist:
    """Where the Triton server's files are: the binary, the Python backend, its stub, its libraries."""

    binary: Path
    python_backend: Path  # directory with libtriton_python.so and triton_python_backend_utils.py
    stub: Path
    libraries: tuple[Path, ...]


def find_triton() -> TritonDist:
    """The tritonserver inside the installed nvidia-pytriton wheel (found without importing it:
    its Python package pins numpy < 2, which this project does not need)."""
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"serving needs Triton Inference Server: {PYTRITON_INSTALL} (it carries tritonserver "
                        f"and its Python backend for Linux x86_64)")
    root = Path(list(spec.submodule_search_locations)[0]) / "tritonserver"
    stub = root / "python_backend_stubs" / version / "triton_python_backend_stub"
    binary = root / "bin" / "tritonserver"
    if not binary.is_file():
        raise UserError(f"{binary} is missing: reinstall with {PYTRITON_INSTALL}")
    if not stub.is_file():
        have = sorted(p.name for p in (root / "python_backend_stubs").glob("*"))
        raise UserError(f"nvidia-pytriton has no Python backend stub for Python {version} (it has {', '.join(have)})")
    libs = root.parent.parent / "nvidia_pytriton.libs"
    return TritonDist(binary, root / "backends" / "python", stub, (libs,) if libs.is_dir() else ())


def _environment(dist: TritonDist) -> dict[str, str]:
    env = dict(os.environ)
    # This interpreter's libpython first: the stub links libpython3.X.so, and the system's may
    # not match this interpreter's standard library (seen: 3.11.2 against 3.11.7).
    libdirs = [sysconfig.get_config_var("LIBDIR") or "", *map(str, dist.libraries)]
    env["LD_LIBRARY_PATH"] = os.pathsep.join([d for d in libdirs if d] + ([env["LD_LIBRARY_PATH"]]
                                                                          if env.get("LD_LIBRARY_PATH") else []))
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def _port_free(host: str, port: int) -> bool:
    """Whether `port` can be bound on `host`; UserError when `host` is no address of this machine."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server does: TIME_WAIT is no conflict
        try:
            s.bind((host, port))
        except socket.gaierror:
            raise UserError(f"--host {host!r} is not a known address") from None
        except OSError as exc:
            if exc.errno == errno.EADDRNOTAVAIL:
                raise UserError(f"--host {host!r} is not an address of this machine") from None
            return False
    return True


def _die_with_parent():
    """A preexec_fn that makes the server go when this process goes (Linux PR_SET_PDEATHSIG), or
    None. libc is loaded here, before the fork: the child only makes the one call."""
    try:
        import ctypes

        prctl = ctypes.CDLL("libc.so.6", use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return lambda: prctl(1, signal.SIGTERM)


class Server:
    """A tritonserver process serving `artefact_dir`; `start()` returns once every model is ready."""

    def __init__(self, artefact_dir, options: ServeOptions | None = None, *, log=None, verbose: bool = False):
        self.options = options or ServeOptions()
        self.artefacts = Artefacts(artefact_dir)
        self.models = plan(self.artefacts, self.options)
        self.dist = find_triton()
        self.log = log or (lambda message: print(message, file=sys.stderr, flush=True))
        self.verbose = verbose
        self.process: subprocess.Popen | None = None
        self.workspace: Path | None = None

    @property
    def model_names(self) -> list[str]:
        return [m.name for m in self.models]

    @property
    def urls(self) -> dict[str, str]:
        host = f"[{self.options.host}]" if ":" in self.options.host else self.options.host
        return {"http": f"http://{host}:{self.options.http_port}", "grpc": f"{host}:{self.options.grpc_port}",
                "metrics": f"http://{host}:{self.options.metrics_port}/metrics"}

    def _write_workspace(self) -> Path:
        workspace = Path(tempfile.mkdtemp(prefix="siglip-serve-"))
        backend = workspace / "backends" / "python"
        backend.mkdir(parents=True)
        for item in self.dist.python_backend.iterdir():
            if item.is_file():
                shutil.copy2(item, backend / item.name)
        shutil.copy2(self.dist.stub, backend / "triton_python_backend_stub")
        for model in self.models:
            version = workspace / "models" / model.name / "1"
            version.mkdir(parents=True)
            (version.parent / "config.pbtxt").write_text(model.config)
            (version / "model.py").write_text(model_py(model.class_name))
        return workspace

    def _command(self, workspace: Path) -> list[str]:
        o = self.options
        # Input tensors reach the stub through shared memory: start it large enough for a full batch.
        return [str(self.dist.binary), f"--model-repository={workspace / 'models'}",
                f"--backend-directory={workspace / 'backends'}", "--disable-auto-complete-config",
                f"--http-address={o.host}", f"--http-port={o.http_port}",
                f"--grpc-address={o.host}", f"--grpc-port={o.grpc_port}",
                f"--metrics-address={o.host}", f"--metrics-port={o.metrics_port}",
                "--allow-metrics=true", "--allow-gpu-metrics=false", "--strict-readiness=true",
                f"--exit-timeout-secs={o.exit_timeout_s}",
                "--backend-config=python,shm-default-byte-size=16777216",
                "--backend-config=python,shm-growth-byte-size=16777216",
                "--log-verbose=0"]

    def start(self) -> "Server":
        o = self.options
        for label, port in (("--http-port", o.http_port), ("--grpc-port", o.grpc_port),
                            ("--metrics-port", o.metrics_port)):
            if not _port_free(o.host, port):
                raise UserError(f"{label} {port} is in use on {o.host}")
        self.workspace = self._write_workspace()
        self.log_path = self.workspace / "tritonserver.log"
        output = None if self.verbose else open(self.log_path, "wb")
        try:
            self.process = subprocess.Popen(self._command(self.workspace), env=_environment(self.dist),
                                            stdout=output, stderr=subprocess.STDOUT if output else None,
                                            stdin=subprocess.DEVNULL, start_new_session=True,
                                            preexec_fn=_die_with_parent())
        except OSError as exc:
            self._cleanup()
            raise UserError(f"cannot start {self.dist.binary}: {exc.strerror or exc}") from None
        finally:
            if output:
                output.close()
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.options.start_timeout_s
        url = f"{self.urls['http']}/v2/health/ready"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                tail = self.log_tail()
                self._cleanup()
                raise UserError(f"tritonserver exited with status {self.process.returncode} while loading the "
                                f"models{': ' + tail if tail else ''}")
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.25)
        self.stop()
        raise UserError(f"tritonserver did not get ready within {self.options.start_timeout_s:.0f} s")

    def log_tail(self, lines: int = 8) -> str:
        try:
            text = self.log_path.read_text(errors="replace").strip().splitlines()
        except (OSError, AttributeError):
            return ""
        errors = [line for line in text if " E" in line[:2] or "error" in line.lower()]
        return " | ".join((errors or text)[-lines:])

    def stop(self) -> int | None:
        """SIGTERM: Triton stops taking requests, lets open connections and in-flight requests finish
        (up to exit_timeout_s), unloads the models and exits; killed STOP_MARGIN_S later if it has
        not. Returns its exit status."""
        status = None
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                status = self.process.wait(timeout=self.options.exit_timeout_s + STOP_MARGIN_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                status = self.process.wait()
        elif self.process is not None:
            status = self.process.returncode
        self._cleanup()
        return status

    def _cleanup(self) -> None:
        if self.workspace is not None:
            shutil.rmtree(self.workspace, ignore_errors=True)
            self.workspace = None

    def __enter__(self) -> "Server":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def serve_forever(server: Server) -> int:
    """Run in the foreground until SIGINT / SIGTERM (or the server dies); the exit status."""
    stopping = []

    def on_signal(signum, frame):
        stopping.append(signum)

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        server.start()
        urls = server.urls
        server.log(f"serving {', '.join(server.model_names)} from {server.artefacts.directory}")
        for model in server.models:
            server.log(f"  {model.name}: {model.source}")
        server.log(f"listening: HTTP {urls['http']}, gRPC {urls['grpc']}, metrics {urls['metrics']}; "
                   f"health {urls['http']}/v2/health/ready; stop with Ctrl-C or SIGTERM")
        while not stopping and server.process.poll() is None:
            time.sleep(0.2)
        if not stopping:
            server.log(f"tritonserver exited unexpectedly (status {server.process.returncode}): {server.log_tail()}")
            server.stop()
            return 1
        server.log(f"stopping ({signal.Signals(stopping[0]).name}): finishing in-flight requests")
        status = server.stop()
        server.log(f"stopped (tritonserver exit status {status})")
        return 0
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        server.stop()


__all__ = ["PYTRITON_INSTALL", "Server", "ServerError", "find_triton", "serve_forever"]
