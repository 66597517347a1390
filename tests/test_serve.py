"""`siglip-runtime serve`: a real Triton server (the tritonserver inside nvidia-pytriton) on free
localhost ports, asked by real Triton clients (tritonclient, HTTP and gRPC).

Checked: embeddings equal runtime's own within 1e-5 (both towers, zero-shot); concurrent single
requests are batched (Triton's statistics); bad requests get Triton's error while good ones keep
succeeding; health and metrics answer; SIGTERM lets an in-flight request finish and exits 0; bad
flags and a busy port give one line and exit 2.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import numpy as np
import pytest

pytestmark = pytest.mark.skipif(importlib.util.find_spec("pytriton") is None,
                                reason="no Triton server here: pip install --no-deps nvidia-pytriton==0.7.0")

http = pytest.importorskip("tritonclient.http")
grpc = pytest.importorskip("tritonclient.grpc")
from tritonclient.utils import InferenceServerException  # noqa: E402

from runtime import ImageEncoder, TextEncoder, ZeroShotClassifier  # noqa: E402
from runtime.serving.server import Server  # noqa: E402
from runtime.serving.settings import ServeOptions

MAX_BATCH = 8


def free_ports(n: int) -> list[int]:
    sockets = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        sockets.append(s)
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


@pytest.fixture(scope="module")
def server(text_artefacts):
    directory = text_artefacts[0]
    h, g, m = free_ports(3)
    # A queue delay long enough that concurrent requests meet in the batcher on a loaded CI machine.
    options = ServeOptions(http_port=h, grpc_port=g, metrics_port=m, max_batch=MAX_BATCH, queue_delay_us=20000,
                           threads=1)
    with Server(directory, options, log=lambda message: None) as running:
        yield running
        # An open keep-alive connection holds Triton's exit for the whole exit timeout (30 s).
        while CLIENTS:
            CLIENTS.pop().close()


def pixels(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, (n, 3, 32, 32)).astype(np.float32)


CLIENTS: list = []  # closed when the module's server stops


def http_client(server):
    CLIENTS.append(http.InferenceServerClient(server.urls["http"].removeprefix("http://")))
    return CLIENTS[-1]


def utf8(prompts: list[str]) -> np.ndarray:
    """The zero-shot model's text input: UTF-8, one prompt per line."""
    return np.frombuffer("\n".join(prompts).encode("utf-8"), dtype=np.uint8)


def http_input(name, array, datatype=None):
    tensor = http.InferInput(name, list(array.shape), datatype or {np.float32: "FP32", np.int64: "INT64",
                                                                   np.uint8: "UINT8"}[array.dtype.type])
    tensor.set_data_from_numpy(array)
    return tensor


def test_serves_the_towers_and_zero_shot(server):
    assert server.model_names == ["siglip_vision", "siglip_text", "siglip_zero_shot"]
    client = http_client(server)
    for name in server.model_names:
        assert client.is_model_ready(name)
    config = client.get_model_config("siglip_vision")
    assert config["max_batch_size"] == MAX_BATCH
    assert [i["name"] for i in config["input"]] == ["pixel_values"]
    assert {o["name"] for o in config["output"]} == {"last_hidden_state", "pooler_output"}


def test_http_and_grpc_embeddings_equal_runtime(server, text_artefacts):
    directory = text_artefacts[0]
    x = pixels(3)
    reference = ImageEncoder(directory, threads=1)
    expected = reference.embed_pixels(x)
    expected_hidden = reference.model.run(x)["last_hidden_state"]

    result = http_client(server).infer("siglip_vision", [http_input("pixel_values", x)],
                                       outputs=[http.InferRequestedOutput("pooler_output")])
    assert [o["name"] for o in result.get_response()["outputs"]] == ["pooler_output"]  # only what was asked
    np.testing.assert_allclose(result.as_numpy("pooler_output"), expected, atol=1e-5, rtol=0)

    client = grpc.InferenceServerClient(server.urls["grpc"])
    CLIENTS.append(client)
    tensor = grpc.InferInput("pixel_values", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    result = client.infer("siglip_vision", [tensor])  # no outputs named: all of them
    np.testing.assert_allclose(result.as_numpy("pooler_output"), expected, atol=1e-5, rtol=0)
    np.testing.assert_allclose(result.as_numpy("last_hidden_state"), expected_hidden, atol=1e-5, rtol=0)

    text = TextEncoder(directory, threads=1)
    ids = text.tokenizer(["a photo of a cat", "a red car"])
    result = http_client(server).infer("siglip_text", [http_input("input_ids", ids)])
    np.testing.assert_allclose(result.as_numpy("pooler_output"), text.embed(["a photo of a cat", "a red car"]),
                               atol=1e-5, rtol=0)


def test_zero_shot_takes_raw_text(server, text_artefacts):
    directory = text_artefacts[0]
    prompts = ["This is a photo of a cat.", "This is a photo of a dog.", "a red car"]
    x = pixels(2, seed=1)
    classifier = ZeroShotClassifier(directory, template="{}", threads=1)
    text = classifier.text.embed(prompts, normalize=True)
    image = classifier.images.embed_pixels(x, normalize=True)
    logits = image @ text.T * np.exp(classifier.logit_scale) + classifier.logit_bias
    result = http_client(server).infer("siglip_zero_shot", [
        http_input("pixel_values", x), http_input("text", utf8(prompts))])
    np.testing.assert_allclose(result.as_numpy("logits"), logits, atol=1e-5, rtol=0)
    np.testing.assert_allclose(result.as_numpy("probabilities"), 1 / (1 + np.exp(-logits)), atol=1e-5, rtol=0)


def test_concurrent_single_requests_are_batched(server, text_artefacts):
    expected = ImageEncoder(text_artefacts[0], threads=1).embed_pixels(pixels(16, seed=2))
    results: dict[int, np.ndarray] = {}
    errors = []
    barrier = threading.Barrier(16)

    def one(i: int) -> None:
        client = http_client(server)  # tritonclient.http's client is not thread-safe: one per thread
        barrier.wait()
        try:
            out = client.infer("siglip_vision", [http_input("pixel_values", pixels(16, seed=2)[i:i + 1])],
                               outputs=[http.InferRequestedOutput("pooler_output")])
            results[i] = out.as_numpy("pooler_output")[0]
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    np.testing.assert_allclose(np.stack([results[i] for i in range(16)]), expected, atol=1e-5, rtol=0)
    stats = http_client(server).get_inference_statistics("siglip_vision")["model_stats"][0]
    sizes = [b["batch_size"] for b in stats["batch_stats"]]
    assert max(sizes) > 1, f"Triton ran every request alone: batch sizes {sizes}"


def bad_requests():
    ok = pixels(1)
    return {
        "wrong dtype": ("siglip_vision", [http_input("pixel_values", ok.astype(np.float64), "FP64")]),
        "wrong shape": ("siglip_vision", [http_input("pixel_values", pixels(1)[:, :, :16, :16])]),
        "empty batch": ("siglip_vision", [http_input("pixel_values", np.zeros((0, 3, 32, 32), np.float32))]),
        "batch over the maximum": ("siglip_vision", [http_input("pixel_values", pixels(MAX_BATCH + 1))]),
        "unknown model": ("siglip_nothing", [http_input("pixel_values", ok)]),
        "token id outside the vocabulary": ("siglip_text", [http_input("input_ids", np.full((1, 16), 10**6, np.int64))]),
        "wrong input name": ("siglip_vision", [http_input("pixels", ok)]),
        "empty zero-shot text": ("siglip_zero_shot", [http_input("pixel_values", ok),
                                                      http_input("text", utf8(["a cat", ""]))]),
    }


@pytest.mark.parametrize("case", list(bad_requests()))
def test_bad_requests_get_triton_errors_and_good_ones_keep_working(server, case):
    model, inputs = bad_requests()[case]
    client = http_client(server)
    with pytest.raises(InferenceServerException):
        client.infer(model, inputs)
    assert server.process.poll() is None, "the server died"
    good = client.infer("siglip_vision", [http_input("pixel_values", pixels(2))])
    assert good.as_numpy("pooler_output").shape[0] == 2


def test_health_and_metrics(server):
    with urllib.request.urlopen(f"{server.urls['http']}/v2/health/ready", timeout=5) as response:
        assert response.status == 200
    with urllib.request.urlopen(server.urls["metrics"], timeout=5) as response:
        text = response.read().decode()
    assert 'nv_inference_request_success{model="siglip_vision"' in text


def test_cli_serves_and_sigterm_finishes_in_flight_requests(text_artefacts, tmp_path):
    h, g, m = free_ports(3)
    # A long queue delay keeps the request in flight when SIGTERM arrives.
    command = [sys.executable, "-m", "runtime", "serve", str(text_artefacts[0]), "--http-port", str(h),
               "--grpc-port", str(g), "--metrics-port", str(m), "--no-zero-shot", "--threads", "1",
               "--queue-delay-us", "1500000", "--max-batch", "4"]
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=os.getcwd())
    try:
        client = http.InferenceServerClient(f"127.0.0.1:{h}")
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and "listening" not in log.read_text():
            assert process.poll() is None, log.read_text()
            time.sleep(0.2)
        assert client.is_server_ready()
        client.close()  # an idle keep-alive connection would hold the exit for the exit timeout
        result = {}

        def request():
            requester = http.InferenceServerClient(f"127.0.0.1:{h}")
            try:
                result["out"] = requester.infer("siglip_vision", [http_input("pixel_values", pixels(1))])
            finally:
                requester.close()

        thread = threading.Thread(target=request)
        thread.start()
        time.sleep(0.4)
        process.send_signal(signal.SIGTERM)
        thread.join(60)
        assert process.wait(60) == 0, log.read_text()
        assert result["out"].as_numpy("pooler_output").shape == (1, 32)
        text = log.read_text()
        assert f"HTTP http://127.0.0.1:{h}" in text and "stopped" in text
    finally:
        if process.poll() is None:
            process.kill()


def test_cli_stops_within_the_kubernetes_grace_period_with_an_idle_client(text_artefacts, tmp_path):
    """With the default exit timeout, SIGTERM to `serve` (what Kubernetes sends, then SIGKILL 30 s
    later) ends it within 30 s although a client keeps its keep-alive connection open and idle:
    Triton spends the exit timeout waiting for that connection to close."""
    import http.client

    h, g, m = free_ports(3)
    command = [sys.executable, "-m", "runtime", "serve", "--artefacts", str(text_artefacts[0]), "--http-port", str(h),
               "--grpc-port", str(g), "--metrics-port", str(m), "--no-zero-shot", "--threads", "1"]
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=os.getcwd())
    connection = http.client.HTTPConnection("127.0.0.1", h, timeout=60)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and "listening" not in log.read_text():
            assert process.poll() is None, log.read_text()
            time.sleep(0.2)
        connection.request("GET", "/v2/health/ready")  # HTTP/1.1: the connection stays open after the reply
        response = connection.getresponse()
        response.read()
        assert response.status == 200 and not response.will_close
        begun = time.monotonic()
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0, log.read_text()
        took = time.monotonic() - begun
        assert took < 30, f"stop took {took:.1f} s with an idle client connected"
        assert "stopped" in log.read_text()
    finally:
        connection.close()
        if process.poll() is None:
            process.kill()


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "runtime", "serve", *args], capture_output=True, text=True,
                          timeout=120)


def test_cli_bad_input_is_one_line_and_exit_2(text_artefacts):
    directory = str(text_artefacts[0])
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        h, g = free_ports(2)
        cases = {
            f"--http-port {port} is in use": ["--http-port", str(port), "--grpc-port", str(h),
                                              "--metrics-port", str(g)],
            "must differ": ["--http-port", str(h), "--grpc-port", str(h)],
            "--variant 'int9'": ["--variant", "int9"],
            "expected a positive integer": ["--max-batch", "0"],
            "--exit-timeout-s: expected a non-negative integer": ["--exit-timeout-s", "soon"],
            "is not an address of this machine": ["--host", "192.0.2.1"],
        }
        for expected, flags in cases.items():
            done = run_cli(directory, *flags)
            assert done.returncode == 2, (flags, done.stderr)
            assert expected in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    done = run_cli(str(text_artefacts[0]) + "-missing")
    assert done.returncode == 2 and "not found" in done.stderr


def test_missing_triton_names_the_install(monkeypatch, text_artefacts):
    import runtime.serving.server as serve
    from runtime.errors import UserError

    monkeypatch.setattr(serve.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(UserError, match="pip install --no-deps nvidia-pytriton"):
        serve.find_triton()


def test_repository_matches_the_written_triton_repo(text_artefacts, tmp_path):
    """The served models carry the names, tensors and dims of the --triton-repo configs."""
    from runtime.artefacts import Artefacts
    from runtime.serving.models import plan
    from siglip_export.triton.repository import write_triton_repo

    directory = text_artefacts[0]
    write_triton_repo(directory, tmp_path / "repo")
    served = {m.name: m.config for m in plan(Artefacts(directory), ServeOptions())}
    for model in ("siglip_vision", "siglip_text"):
        written = (tmp_path / "repo" / model / "config.pbtxt").read_text()
        for kind in ("input", "output", "max_batch_size"):  # what a client sees
            assert _block(written, kind) == _block(served[model], kind), (model, kind)


def _block(config: str, key: str) -> str:
    """The text of one top-level entry of a config.pbtxt (up to the next top-level line)."""
    lines = config.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(key))
    end = next((i for i in range(start + 1, len(lines)) if lines[i] and not lines[i][0].isspace()
                and lines[i] not in ("]", "}")), len(lines))
    return "\n".join(lines[start:end])


def test_load_benchmark_runs_and_reports(text_artefacts, tmp_path):
    """benchmarks/serve_load.py on the tiny export: every request answered and equal, both paths
    reported, the server's memory read (no timing is asserted)."""
    out = tmp_path / "load.json"
    done = subprocess.run([sys.executable, "benchmarks/serve_load.py", "--artefacts", str(text_artefacts[0]),
                           "--clients", "4", "--requests", "40", "--ort-threads", "1", "--queue-delay-us", "2000",
                           "--protocol", "grpc", "--json", str(out)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(out.read_text())
    for path in ("in_process", "served"):
        assert result[path]["answered"] == 40 and result[path]["errors"] == 0
    assert result["server_rss_mb"]["after"] > 0 and len(result["served"]["rss_mb_during"]) == 4
    assert sum(result["triton_batches"].values()) > 0
    assert "siglip-runtime serve (Triton)" in done.stdout
