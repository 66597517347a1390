"""What `export.py` prints when it is done: every artefact with its size and accuracy, and why
each variant that was asked for is not there."""

from __future__ import annotations

from pathlib import Path

from runtime.manifest import Manifest


def summary_table(manifest: Manifest, output_dir: Path) -> str:
    """Markdown: one row per published, rejected and skipped artefact."""
    rows = ["| artefact | size | accuracy vs eager fp32 (worst over inputs and batch sizes) | gate | path |",
            "| --- | --- | --- | --- | --- |"]
    for art in manifest.artefacts:
        n = art.parity.worst()
        batches = ",".join(map(str, art.parity.batch_sizes))
        accuracy = (f"pooler cos {n['pooler_output_min_cosine']:.6f}, hidden cos {n['last_hidden_state_min_cosine']:.6f}, "
                    f"hidden rel err {n['last_hidden_state_rel_err']:.1e} (batch {batches})")
        rows.append(f"| {art.file} | {art.size_bytes / 1e6:.1f} MB | {accuracy} | pass | {Path(output_dir) / art.file} |")
    for art in manifest.rejected:
        rows.append(f"| {art.file} | - | {rejection(art)} | REJECTED | not published |")
    for art in manifest.skipped:
        rows.append(f"| {art.file} | - | {art.reason} | skipped | not built |")
    return "\n".join(rows)


def rejection(art) -> str:
    """Why a variant was not published: its numbers against the gate, or what failed."""
    if art.accuracy is None or art.parity is None:
        return art.reason
    return f"pooler cos {art.accuracy['pooler_output_min_cosine']:.6f} < {art.parity.gate.min_cosine}"


def report_lines(manifest: Manifest, output_dir: Path) -> list[str]:
    """The summary table, then a warning per rejected variant and for random weights."""
    lines = [summary_table(manifest, output_dir)]
    for art in manifest.rejected:
        reason = art.reason if art.accuracy is None else (
            f"min cosine {art.accuracy['pooler_output_min_cosine']:.6f} below its gate {art.parity.gate.min_cosine}")
        lines.append(f"WARNING: {art.file} not published: {reason}")
    if manifest.source.get("random_weights"):
        lines.append(f"\nWARNING: {manifest.source['warning']}")
    return lines
