"""How long the CPU export takes, before and after a change, and what it costs in speed and accuracy.

    python benchmarks/export_time.py --checkpoint DIR [--before REV] [--before-args "..."]
                                     [--after-args "..."] [--rounds N] [--json FILE] [--work DIR]

"Before" is the export of git revision REV (a worktree of this repository, run with this Python),
"after" the export of this checkout. Each runs once, in a subprocess, and is timed wall to wall;
then the two exports' `ov-int8` files (the CPU's fastest kind) are timed in turns at batch 1 and
8 in OpenVINO, and each export's gate results are read from its manifest. Defaults: REV is the
last commit before `--target` existed, with `--variants opt,int8,ov-bf16,ov-int8` (what asking
for the CPU's fast files took then); after is `--target cpu`.

A good checkpoint is none of the presets, full depth: `python benchmarks/stress.py DIR --kind
outliers` makes a base-size one whose activations carry outlier channels, as trained ones do.
The Markdown table goes to stdout, progress to stderr; exit 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # `python benchmarks/export_time.py`: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.machine import CpuContention, machine_info, usable_cores  # noqa: E402
from runtime.cli_support import ArgumentParser, positive_int  # noqa: E402
from runtime.contract.manifest import Manifest  # noqa: E402
from runtime.errors import UserError  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
BEFORE_REV = "204c9a7"  # main just before --target: the int8 searches ran trial by trial
BEFORE_ARGS = "--variants opt,int8,ov-bf16,ov-int8"
AFTER_ARGS = "--target cpu"
TIMED = "ov-int8"


def log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def run_export(root: Path, checkpoint: Path, output: Path, extra: str) -> dict:
    """One export from the checkout at `root`, timed; its stdout kept for the report."""
    argv = [sys.executable, str(root / "export.py"), "--checkpoint", str(checkpoint), "--output-dir", str(output),
            *shlex.split(extra)]
    log(f"$ {' '.join(argv)}")
    started = time.perf_counter()
    # NNCF's usage telemetry off for both (the revision before --target left it on, and its forked
    # sender can hold the captured stdout open where the network does not answer).
    done = subprocess.run(argv, cwd=root, capture_output=True, text=True, env={**os.environ, "NNCF_CI": "1"})
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise UserError(f"the export in {root} failed (exit {done.returncode}): "
                        f"{(done.stderr.strip().splitlines() or ['no output'])[-1]}")
    log(f"  {wall:.0f} s")
    return {"argv": argv[1:], "wall_s": round(wall, 1), "stdout_tail": done.stdout.splitlines()[-30:]}


def gates(output: Path) -> list[dict]:
    """Each published variant's worst pooler cosine against its gate."""
    manifest = Manifest.read(output)
    rows = []
    for record in manifest.artefacts:
        parity = record.parity
        worst = min(r.outputs["pooler_output"].min_cosine for r in parity.results if "pooler_output" in r.outputs)
        rows.append({"file": record.file, "min_cosine": round(worst, 6), "gate": parity.gate.min_cosine,
                     "passed": parity.passed})
    return rows


def time_in_turns(exports: dict[str, Path], rounds: int, threads: int) -> dict[str, dict[int, float]]:
    """p50 ms per call of each export's ov-int8 file at batch 1 and 8 in OpenVINO, the files taking
    turns round by round: the race `--target` runs (siglip_export.variants.race), on these files."""
    from siglip_export.progress import Progress
    from siglip_export.variants.race import Candidate, provider_for, race, race_inputs

    entrants = {}
    for name, path in exports.items():
        record = Manifest.read(path).find("vision", TIMED)
        entrants[name] = Candidate(record, "openvino-cpu", provider_for(record.kind, "openvino-cpu"), path / record.file)
    inputs = race_inputs("vision", record.inputs[0].shape, None, seed=0)
    race(TIMED, list(entrants.values()), inputs, threads, Progress(log), rounds=rounds)
    return {name: {b: round(statistics.median(v), 2) for b, v in entrant.samples.items()}
            for name, entrant in entrants.items() if entrant.samples}


def render(report: dict) -> str:
    """The Markdown report: the machine, a row per export, the ov-int8 speed ratio."""
    machine, results, speed = report["machine"], report["exports"], report[f"{TIMED}_ms"]
    isa = ", ".join(flag for flag, present in machine.get("isa", {}).items() if present)
    lines = [f"machine: {machine.get('cpu_model')}, {machine.get('cores')} cores ({isa}); checkpoint "
             f"{report['checkpoint']}", "",
             f"| export | flags | wall | {TIMED} ms (batch 1 / 8) | {TIMED} pooler min cos (gate) | every gate |",
             "| --- | --- | --- | --- | --- | --- |"]
    for name, result in results.items():
        ms = speed.get(name)
        timed = next((g for g in result["gates"] if g["file"] == f"vision_model.{TIMED}.xml"), None)
        rev = report["before_rev"] if name == "before" else "this checkout"
        cosine = f"{timed['min_cosine']:.6f} ({timed['gate']})" if timed else "-"
        lines.append(f"| {name} ({rev}) | `{' '.join(result['argv'][5:])}` | {result['wall_s'] / 60:.1f} min | "
                     f"{f'{ms[1]:.1f} / {ms[8]:.1f}' if ms else 'not built'} | {cosine} | "
                     f"{'passed' if all(g['passed'] for g in result['gates']) else 'FAILED'} |")
    if len(speed) == 2:
        lines += ["", f"{TIMED} after / before: {speed['after'][1] / speed['before'][1]:.2f}x time at batch 1, "
                      f"{speed['after'][8] / speed['before'][8]:.2f}x at batch 8 (lower is faster)"]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = ArgumentParser(prog="benchmarks/export_time.py", description=__doc__.split("\n\n")[0],
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True, help="the checkpoint both exports start from")
    parser.add_argument("--before", default=BEFORE_REV, metavar="REV", help=f"git revision of before (default {BEFORE_REV})")
    parser.add_argument("--before-args", default=BEFORE_ARGS, help=f"its export flags (default {BEFORE_ARGS!r})")
    parser.add_argument("--after-args", default=AFTER_ARGS, help=f"this checkout's export flags (default {AFTER_ARGS!r})")
    parser.add_argument("--rounds", type=positive_int, default=6, help="timing rounds of the two ov-int8 files")
    parser.add_argument("--json", type=Path, help="write the results here too")
    parser.add_argument("--work", type=Path, help="keep the exports here (default: a temporary directory)")
    args = parser.parse_args(argv)
    try:
        if not args.checkpoint.is_dir():
            raise UserError(f"--checkpoint {args.checkpoint} is not a directory")
        with tempfile.TemporaryDirectory(prefix="export-time-") as tmp:
            work = args.work or Path(tmp)
            tree = work / "before-tree"
            if not tree.exists():
                made = subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(tree), args.before],
                                      capture_output=True, text=True)
                if made.returncode != 0:
                    raise UserError(f"--before {args.before}: {made.stderr.strip().splitlines()[-1]}")
            contention = CpuContention()
            try:
                results = {"before": run_export(tree, args.checkpoint, work / "before", args.before_args),
                           "after": run_export(REPO, args.checkpoint, work / "after", args.after_args)}
            finally:  # the exports stay in --work; the checkout of the before revision does not
                subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)],
                               capture_output=True)
            for name in results:
                results[name]["gates"] = gates(work / name)
            present = {name: work / name for name in results if (work / name / f"vision_model.{TIMED}.xml").exists()}
            speed = time_in_turns(present, args.rounds, usable_cores()) if present else {}
            report = {"machine": machine_info(usable_cores()), "checkpoint": str(args.checkpoint),
                      "before_rev": args.before, "exports": results, f"{TIMED}_ms": speed,
                      "contention": contention.report()}
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(render(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
