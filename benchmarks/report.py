"""The benchmark's results as a Markdown table and a plot."""

from __future__ import annotations

from pathlib import Path


def _fmt(value, spec: str, empty: str = "-") -> str:
    return empty if value is None else format(value, spec)


def format_ms(value: float) -> str:
    """Milliseconds: one decimal, or three significant digits below 10 ms (tiny models)."""
    return f"{value:.3g}" if value < 10 else f"{value:.1f}"


def _percent(fraction: float | None) -> float | None:
    return None if fraction is None else 100 * fraction


def markdown(result: dict) -> str:
    """The results as Markdown: measured rows by batch size, then what was not measured and why."""
    model, machine, run = result["model"], result["machine"], result["run"]
    isa = ", ".join(k for k, v in machine["isa"].items() if v) or "none of interest"
    config = model["config"]
    lines = [
        (f"SigLIP image tower, {config.get('image_size')} px / patch {config.get('patch_size')}, "
         f"hidden {config.get('hidden_size')}, {config.get('num_hidden_layers')} layers: "
         f"{model['gflops_per_image']:.4g} GFLOP per image. Eager weights: {model.get('eager_weights') or 'n/a'}."),
        (f"{machine['cpu_model']}, {machine['cores']} cores ({isa}), GPU: {machine['gpu'] or 'none'}; "
         f"{run['threads']} threads; other processes used "
         f"{100 * run.get('other_processes_cpu_fraction', 0.0):.0f}% of the CPU during the run."
         + (f" {run['rounds']} rounds, alternating, each point's calls pooled (each round's p50 in the JSON)."
            if run.get("rounds", 1) > 1 else "")),
        ("fp32 floor (FLOPs / ONNX Runtime MatMul rate): "
         + ", ".join(f"b{b} {ms:.3g} ms" for b, ms in result["floor_ms"].items()) + "."),
        "",
        ("| backend | artefact | precision | batch | p50 ms | p90 ms | p99 ms | images/s | x floor | x eager "
         "| peak RSS MB | min cos vs eager | others' CPU |"),
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    measured = [r for r in result["results"] if r["skipped"] is None]
    for r in sorted(measured, key=lambda r: r["batch_size"]):  # stable: backend order within a size
        lines.append(
            f"| {r['backend']} | {r['artefact']} | {r['precision']} | {r['batch_size']} | {format_ms(r['p50_ms'])} | "
            f"{format_ms(r['p90_ms'])} | {format_ms(r['p99_ms'])} | {r['throughput_ips']:.1f} | "
            f"{_fmt(r['x_floor'], '.3g')} | "
            f"{_fmt(r['x_eager'], '.3g')} | {_fmt(r['peak_rss_mb'], '.0f')} | {_fmt(r.get('min_cosine'), '.5f')} | "
            f"{_fmt(_percent(r.get('other_processes_cpu_fraction')), '.0f')}% |"
        )
    skipped: dict = {}
    for r in result["results"]:
        if r["skipped"] is not None:
            skipped.setdefault((r["backend"], r["artefact"], r["skipped"]), []).append(r["batch_size"])
    if skipped:
        lines += ["", "| not measured | artefact | batch | why |", "| --- | --- | --- | --- |"]
        for (backend, artefact, reason), sizes in skipped.items():
            lines.append(f"| {backend} | {artefact} | {','.join(map(str, sizes))} | {reason} |")
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    """Latency (p50) and throughput against batch size per backend, log scales, with the floors."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    series: dict = {}
    for r in result["results"]:
        if r["skipped"] is None:
            label = f"{r['backend']} {r['artefact']} ({r['precision']})"
            series.setdefault(label, []).append((r["batch_size"], r["p50_ms"], r["throughput_ips"]))
    fig, (lat, thr) = plt.subplots(1, 2, figsize=(14, 5.5))
    for label, points in series.items():
        points.sort()
        b, ms, ips = zip(*points)
        line, = lat.plot(b, ms, marker="o", label=label)
        thr.plot(b, ips, marker="o", color=line.get_color(), label=label)
    gflops = result["model"]["gflops_per_image"]
    for key, per_batch in sorted(result["floor_ms_by_precision"].items()):
        b = sorted(int(k) for k in per_batch)
        style = {"fp32": "-", "bf16": "--", "int8": ":", "fp16": "-."}.get(key.removeprefix("cuda-"), "--")
        lat.plot(b, [per_batch[str(k)] for k in b], color="black", linestyle=style, linewidth=1, label=f"floor {key}")
        thr.plot(b, [k / per_batch[str(k)] * 1e3 for k in b], color="black", linestyle=style, linewidth=1,
                 label=f"floor {key}")
    sizes = sorted({r["batch_size"] for r in result["results"]})
    for ax, ylabel in ((lat, "p50 latency per call (ms)"), (thr, "throughput (images/s)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(sizes, [str(b) for b in sizes])
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.set_xlabel("batch size")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
    thr.legend(fontsize=7, loc="best")
    machine = result["machine"]
    fig.suptitle(f"SigLIP image tower ({gflops:.4g} GFLOP/image) on {machine['cpu_model']}, "
                 f"{result['run']['threads']} threads" + (f", {machine['gpu']}" if machine["gpu"] else "")
                 + f"; other processes used {100 * result['run'].get('other_processes_cpu_fraction', 0.0):.0f}% "
                   f"of the CPU meanwhile", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
