"""benchmarks/load_test.py, bounded: 8 threads share one ImageEncoder for 1000 calls on the tiny export.

Run as a separate process, as a user runs it, so its RSS is its own and not pytest's.

The RSS bound: between the warm-up and the end of 1000 calls of batch 4, resident memory moved by
at most 1 MB in every run measured here (-1.0 to +0.3 MB). The smallest thing a call leaves
behind if it leaks is the session's output dict, whose `last_hidden_state` alone is
4 x 16 x 32 float32 = 8 KB: leaking it on every call measured +9.1 MB. 4 MB sits well above
the noise and well below that leak.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "load_test.py"
RSS_GROWTH_BOUND_MB = 4.0


def run_load_test(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT, check=False)


def test_shared_encoder_under_load_matches_sequential_calls_and_does_not_grow(tiny_artefacts, tmp_path):
    artefacts, _ = tiny_artefacts
    out = tmp_path / "load.json"
    done = run_load_test("--artefacts", str(artefacts), "--threads", "8", "--calls", "1000", "--batch-size", "4",
                         "--provider", "cpu", "--max-rss-growth-mb", str(RSS_GROWTH_BOUND_MB), "--json", str(out))
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(out.read_text())
    assert result["identical"] and result["mismatched_calls"] == 0 and not result["errors"]
    assert (result["threads"], result["calls"], result["batch_size"]) == (8, 1000, 4)
    assert result["provider"] == "CPUExecutionProvider"
    assert result["rss_mb"]["growth_after_warmup"] <= RSS_GROWTH_BOUND_MB
    during = result["rss_mb"]["during_run"]  # [calls done, MB] after each quarter
    assert [n for n, _ in during] == [250, 500, 750, 1000]
    assert max(mb for _, mb in during) - result["rss_mb"]["after_warmup"] <= RSS_GROWTH_BOUND_MB
    assert result["calls_per_s"] > 0 and abs(result["images_per_s"] - 4 * result["calls_per_s"]) < 0.1
    assert "identical to sequential calls" in done.stdout


def test_preprocessed_inputs_and_batch_one(tiny_artefacts, tmp_path):
    artefacts, _ = tiny_artefacts
    out = tmp_path / "load.json"
    done = run_load_test("--artefacts", str(artefacts), "--calls", "400", "--preprocessed", "--provider", "cpu",
                         "--json", str(out))
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(out.read_text())
    assert result["identical"] and result["preprocessed"] and result["batch_size"] == 1
    assert result["distinct_inputs"] == 16 and result["sequential_reference"]["calls"] == 16


def test_bad_input_is_one_line_and_exit_2(tmp_path):
    done = run_load_test("--artefacts", str(tmp_path / "missing"))
    assert done.returncode == 2
    assert done.stderr.strip() == f"error: artefact directory not found: {tmp_path / 'missing'}"
    done = run_load_test("--threads", "0")
    assert done.returncode == 2 and "--threads" in done.stderr and "'0'" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
