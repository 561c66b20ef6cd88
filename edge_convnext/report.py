"""Audit reports: ``report.json``, ``report.md`` and PNG plots (if matplotlib is installed).

Every file is written through :mod:`edge_convnext.atomic` (staged beside it, renamed once), so a
crash never leaves a half-written report. Fractions are in [0, 1] in JSON and percentages in
Markdown; ``null`` marks what does not apply (no reference, nothing scored, latency not measured
here).
"""

from __future__ import annotations

import io
import json
import math
import os
from pathlib import Path

from . import atomic
from .data import Dataset
from .metrics import Proportion
from .results import ArtifactResult, AuditResult

ACCURACY_PNG = "accuracy.png"
TRADEOFF_PNG = "tradeoff.png"
_MAX_ERRORS_LISTED = 20


def build_report(
    result: AuditResult,
    dataset: Dataset,
    manifest: str | os.PathLike | None = None,
    manifest_sha256: str | None = None,
) -> dict:
    """The ``report.json`` document: ``{"artifacts": [...], "dataset": {...}, "timing": {...}}``.

    ``timing`` (when measured): ``wall_s`` the scoring's wall time (decode, inference and
    writing the chunks; summed over resumed runs and shards), ``inference_s`` the runtimes' own
    time summed over the artifacts (``by_artifact``), ``decode_s`` the decode threads' time.
    ``dataset.shard`` is there only in the report of one shard (``"K/N"``).
    """
    document = {
        "artifacts": [artifact_entry(row) for row in result.artifacts],
        "dataset": {
            "root": str(dataset.root),
            "layout": dataset.layout,
            "n_images": result.n_images,
            "n_unreadable": len(result.errors),
            "per_class": dataset.per_class,
            "limit": dataset.limit,
            "seed": dataset.seed,
            "manifest": str(manifest) if manifest is not None else None,
            "manifest_sha256": manifest_sha256,
        },
    }
    if result.shard:
        document["dataset"]["shard"] = result.shard
    if result.timing:
        document["timing"] = _timing(result.timing)
    return document


def _timing(timing: dict) -> dict:
    by_artifact = {name: _number(s) for name, s in timing["by_artifact"].items()}
    return {**timing, "by_artifact": by_artifact}


def artifact_entry(row: ArtifactResult) -> dict:
    """One artifact of ``report.json``."""
    m = row.metrics
    return {
        "artifact": row.name,
        "target": row.target,
        "recipe": row.recipe,
        "n": m.n,
        "top1": _proportion(m.top1),
        "top5": _proportion(m.top5),
        "agreement_top1": _number(m.agreement_top1),
        "mcnemar_p": _number(m.mcnemar_p),
        "cosine_mean": _number(m.cosine_mean),
        "snr_db": _number(m.snr_db),
        "kl_mean": _number(m.kl_mean),
        "latency_ms": (
            {"p50": m.latency_ms["p50"], "p90": m.latency_ms["p90"]} if m.latency_ms else None
        ),
        "size_mb": _number(row.size_mb),
        "errors": [{"file": e["file"], "reason": e["reason"]} for e in row.errors],
        "note": row.note,
    }


def _number(value: float | None) -> float | None:
    """JSON has no NaN or infinity: those become null (the note says why)."""
    if value is None or not math.isfinite(value):
        return None
    return float(value)


def _proportion(value: Proportion | None) -> dict | None:
    if value is None:
        return None
    return {"value": value.value, "ci95": [value.ci95[0], value.ci95[1]]}


def write_report(
    result: AuditResult,
    dataset: Dataset,
    out: str | os.PathLike,
    manifest: str | os.PathLike | None = None,
    manifest_sha256: str | None = None,
) -> Path:
    """Write the plots, ``report.md`` and, last, ``report.json`` into ``out``; returns the JSON
    path."""
    out = Path(out)
    report = build_report(result, dataset, manifest, manifest_sha256)
    if result.run_id:
        report["run"] = {"id": result.run_id}
    plots, plot_note = write_plots(report, out)
    markdown = report_markdown(report, plots, plot_note, result.reference)
    atomic.write_text(out / "report.md", markdown)
    # Last: report.json marks a complete set (audit.run removes the old one before starting).
    return atomic.write_text(out / "report.json", json.dumps(report, indent=2) + "\n")


# --- Markdown ------------------------------------------------------------------------------------


def report_markdown(
    report: dict, plots: list[str], plot_note: str | None = None, reference: str | None = None
) -> str:
    """A readable summary of ``report`` (as built by :func:`build_report`)."""
    dataset = report["dataset"]
    lines = ["# Accuracy audit", "", *_dataset_lines(dataset, reference)]
    lines += [*_timing_lines(report.get("timing")), ""]
    lines += _table(report["artifacts"])
    notes = [
        f"- **{a['artifact']}** ({a['target']}): {a['note']}"
        for a in report["artifacts"]
        if a["note"]
    ]
    lines += [
        "",
        "Top-1/top-5 in %, with Wilson 95 % intervals. Agreement: top-1 equal to the "
        "reference's. McNemar: exact two-sided p-value of top-1 correctness against the "
        "reference. Latency: per image (runner call time / images per call), one warm-up "
        "call excluded. "
        "MB = 10^6 bytes.",
    ]
    if notes:
        lines += ["", "## Notes", "", *notes]
    lines += _error_lines(report["artifacts"], dataset["n_unreadable"])
    lines += ["", "## Plots", ""]
    lines += [f"![{name}]({name})" for name in plots] or [f"_{plot_note or 'no plots'}_"]
    if plots and plot_note:
        lines += ["", f"_{plot_note}_"]
    return "\n".join(lines) + "\n"


def _timing_lines(timing: dict | None) -> list[str]:
    if not timing:
        return []
    return [
        f"- Time: {timing['wall_s']:.1f} s wall for scoring, {timing['inference_s']:.1f} s in "
        f"the runtimes, {timing['decode_s']:.1f} s decoding on {timing['decode_workers']} threads"
    ]


def _dataset_lines(dataset: dict, reference: str | None) -> list[str]:
    subset = (
        ", ".join(f"{k}={dataset[k]}" for k in ("per_class", "limit") if dataset[k] is not None)
        or "all images"
    )
    manifest = dataset["manifest"]
    sha = dataset["manifest_sha256"]
    shard = f", shard {dataset['shard']}" if dataset.get("shard") else ""
    lines = [
        f"- Data: `{dataset['root']}` ({dataset['layout']} layout){shard}",
        f"- Images: {dataset['n_images']} ({dataset['n_unreadable']} unreadable, excluded), "
        f"subset: {subset}, seed {dataset['seed']}",
    ]
    if manifest:
        lines.append(f"- Manifest: `{manifest}`" + (f" (sha256 `{sha[:16]}...`)" if sha else ""))
    lines.append(f"- Reference: {reference or 'none (comparison columns empty)'}")
    return lines


_COLUMNS = (
    "artifact",
    "target",
    "recipe",
    "n",
    "top-1 %",
    "top-5 %",
    "agree %",
    "McNemar p",
    "cosine",
    "SNR dB",
    "KL",
    "p50 ms",
    "p90 ms",
    "MB",
)


def _table(artifacts: list[dict]) -> list[str]:
    lines = ["| " + " | ".join(_COLUMNS) + " |", "|" + "---|" * len(_COLUMNS)]
    for a in artifacts:
        latency = a["latency_ms"] or {}
        cells = [
            f"`{a['artifact']}`",
            a["target"],
            a["recipe"],
            str(a["n"]),
            _pct_ci(a["top1"]),
            _pct_ci(a["top5"]),
            _fmt(a["agreement_top1"], "{:.2f}", 100),
            _fmt(a["mcnemar_p"], "{:.3g}"),
            _fmt(a["cosine_mean"], "{:.5f}"),
            _fmt(a["snr_db"], "{:.1f}"),
            _fmt(a["kl_mean"], "{:.2e}"),
            _fmt(latency.get("p50"), "{:.2f}"),
            _fmt(latency.get("p90"), "{:.2f}"),
            _fmt(a["size_mb"], "{:.1f}"),
        ]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return lines


def _fmt(value: float | None, pattern: str, scale: float = 1.0) -> str:
    return "-" if value is None else pattern.format(value * scale)


def _pct_ci(entry: dict | None) -> str:
    if entry is None:
        return "-"
    lo, hi = entry["ci95"]
    return f"{entry['value'] * 100:.2f} [{lo * 100:.2f}, {hi * 100:.2f}]"


def _error_lines(artifacts: list[dict], n_unreadable: int) -> list[str]:
    lines = []
    unreadable = artifacts[0]["errors"][:n_unreadable] if artifacts else []
    if unreadable:
        lines += ["", f"## Unreadable images ({n_unreadable})", ""]
        lines += [f"- `{e['file']}`: {e['reason']}" for e in unreadable[:_MAX_ERRORS_LISTED]]
        if n_unreadable > _MAX_ERRORS_LISTED:
            lines.append(f"- ... {n_unreadable - _MAX_ERRORS_LISTED} more in report.json")
    for a in artifacts:
        own = a["errors"][n_unreadable:]
        if own:
            lines += ["", f"## Runner errors: `{a['artifact']}` ({len(own)})", ""]
            lines += [f"- `{e['file']}`: {e['reason']}" for e in own[:_MAX_ERRORS_LISTED]]
    return lines


# --- plots ---------------------------------------------------------------------------------------


def write_plots(report: dict, out: str | os.PathLike) -> tuple[list[str], str | None]:
    """Write the PNG plots; returns their file names and a note (why some were skipped)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: F401
    except ImportError:
        return [], "plots skipped: matplotlib is not installed (`pip install matplotlib`)"
    out = Path(out)
    scored = [a for a in report["artifacts"] if a["top1"] is not None]
    if not scored:
        return [], "plots skipped: no artifact scored any image"
    written = [ACCURACY_PNG]
    _save(_accuracy_figure(scored), out / ACCURACY_PNG)
    timed = [a for a in scored if a["latency_ms"] is not None]
    if not timed:
        return written, "trade-off plot skipped: no latency measured"
    _save(_tradeoff_figure(timed), out / TRADEOFF_PNG)
    written.append(TRADEOFF_PNG)
    return written, None


def _save(figure, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    atomic.write_bytes(path, buffer.getvalue())


def _label(a: dict, width: int = 36) -> str:
    name = a["artifact"]
    name = name if len(name) <= width else "..." + name[-(width - 3) :]
    return f"{a['target']} {a['recipe']}\n{name}"


def _accuracy_figure(artifacts: list[dict]):
    from matplotlib.figure import Figure

    figure = Figure(figsize=(8, 1.2 + 0.7 * len(artifacts)))
    axes = figure.add_subplot()
    rows = list(range(len(artifacts)))[::-1]  # first artifact on top
    for key, offset, marker, colour in (("top1", 0.12, "o", "C0"), ("top5", -0.12, "s", "C1")):
        values = [a[key]["value"] * 100 for a in artifacts]
        errors = [
            [(a[key]["value"] - a[key]["ci95"][0]) * 100 for a in artifacts],
            [(a[key]["ci95"][1] - a[key]["value"]) * 100 for a in artifacts],
        ]
        axes.errorbar(
            values,
            [r + offset for r in rows],
            xerr=errors,
            fmt=marker,
            color=colour,
            capsize=4,
            label=f"{key[:3]}-{key[3:]} (95 % Wilson interval)",
        )
        for value, row in zip(values, rows, strict=True):
            axes.annotate(
                f"{value:.1f}",
                (value, row + offset),
                textcoords="offset points",
                xytext=(0, 5),
                ha="center",
                fontsize=7,
                color=colour,
            )
    axes.set_yticks(rows, [_label(a) for a in artifacts], fontsize=8)
    axes.set_ylim(-0.6, len(artifacts) - 0.4)
    axes.set_xlabel("accuracy (%)")
    axes.set_title(f"ImageNet validation accuracy (n = {max(a['n'] for a in artifacts)})")
    axes.grid(axis="x", alpha=0.3)
    axes.legend(loc="lower center", bbox_to_anchor=(0.5, 1.08), ncol=2, fontsize=8, frameon=False)
    return figure


def _tradeoff_figure(artifacts: list[dict]):
    """Accuracy vs latency, one numbered marker per artifact; the key beside the axes names them.

    Artifacts of similar latency and accuracy land on top of each other, so the names go in the
    key and only the numbers sit by the markers, each placed clear of those before it.
    """
    from matplotlib.figure import Figure

    figure = Figure(figsize=(9, 5.5))
    axes = figure.add_subplot()
    sizes = [a["size_mb"] for a in artifacts if a["size_mb"] is not None]
    biggest = max(sizes, default=1.0) or 1.0
    targets = sorted({a["target"] for a in artifacts})
    points = []
    for number, a in enumerate(artifacts, 1):
        latency, accuracy = a["latency_ms"]["p50"], a["top1"]["value"] * 100
        area = 60 + 900 * (a["size_mb"] / biggest) if a["size_mb"] is not None else 60
        colour = f"C{targets.index(a['target']) % 10}"
        filled = a["size_mb"] is not None
        style = {"edgecolors": colour, "facecolors": colour if filled else "none"}
        axes.scatter([latency], [accuracy], s=area, alpha=0.6, linewidths=1.5, **style)
        axes.scatter([], [], s=40, linewidths=1.5, label=_key_label(number, a), **style)
        points.append((latency, accuracy, math.sqrt(area) / 2))
    latencies = [a["latency_ms"]["p50"] for a in artifacts]
    if min(latencies) > 0 and max(latencies) / min(latencies) > 20:
        axes.set_xscale("log")
    axes.margins(x=0.25, y=0.25)
    low, high = axes.get_ylim()
    axes.set_ylim(max(low, 0.0), min(high, 105.0))
    axes.set_xlabel("latency p50, batch 1 (ms)")
    axes.set_ylabel("top-1 accuracy (%)")
    axes.set_title("Accuracy vs latency (marker area ~ artifact size, colour: target)")
    axes.grid(alpha=0.3)
    _number_points(axes, points)
    axes.legend(
        fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, frameon=False
    )
    return figure


def _key_label(number: int, a: dict, width: int = 32) -> str:
    name = a["artifact"]
    name = name if len(name) <= width else "..." + name[-(width - 3) :]
    size = f"{a['size_mb']:.1f} MB" if a["size_mb"] is not None else "size n/a"
    return f"{number}  {a['target']} {a['recipe']}, {size}\n    {name}"


def _number_points(axes, points: list[tuple[float, float, float]], fontsize: float = 8) -> None:
    """Write ``1..n`` beside the markers ``(x, y, radius in points)``: each number takes the
    first slot clear of the numbers before it, right or left of its marker, stacking upward."""
    axes.get_xlim()  # settles the autoscaled limits that transData maps through
    to_points = 72.0 / axes.figure.dpi
    placed: list[tuple[float, float, float, float]] = []  # boxes in display points
    for number, (x, y, radius) in enumerate(points, 1):
        px, py = axes.transData.transform((x, y)) * to_points
        width, height = 0.7 * fontsize * len(str(number)) + 2, fontsize + 3
        gap = radius + 2
        for step in range(4 * len(points)):
            side = 1 if step % 2 == 0 else -1
            dx, dy = side * gap, (step // 2) * height - height / 2
            left = px + dx if side > 0 else px + dx - width
            box = (left, py + dy, left + width, py + dy + height)
            if not any(_overlap(box, other) for other in placed):
                break
        placed.append(box)
        axes.annotate(
            str(number),
            (x, y),
            textcoords="offset points",
            xytext=(dx, dy),
            ha="left" if side > 0 else "right",
            va="bottom",
            fontsize=fontsize,
            fontweight="bold",
        )


def _overlap(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]
