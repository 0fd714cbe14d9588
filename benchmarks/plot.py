"""bench.png: pixel IoU against end-to-end latency, with the Pareto front of the trade-off.

End-to-end ms per image (decode + inference + post-processing) is on the x axis because it
is what a user waits for; marker area is peak memory, colour the model, shape the target.
The survey's published IoUs are dotted reference lines (they have no latency).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of points no other point beats on both axes (lower x, higher y), by x.

    A point is dominated when another is at least as fast and at least as accurate and
    strictly better in one; ties (equal points) all stay on the front.
    """
    front = []
    for index, (x, y) in enumerate(points):
        dominated = any(ox <= x and oy >= y and (ox < x or oy > y) for ox, oy in points)
        if not dominated:
            front.append(index)
    return sorted(front, key=lambda index: (points[index][0], -points[index][1]))


def _marker_area(rss_mb: float) -> float:
    return 20 + rss_mb / 4  # 100 MB -> 45 pt^2, 1 GB -> 270 pt^2


def write_plot(result: Mapping[str, Any], path: Path) -> None:
    """Draw every measured configuration; write a PNG (matplotlib's Agg, no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FuncFormatter

    from edgeseg.atomic import atomic_path

    records: list[dict[str, Any]] = [r for r in result["records"] if r["status"] == "ok"]
    models = sorted({r["model"] for r in records})
    targets = sorted({r["target"] for r in records})
    colours = {model: f"C{index % 10}" for index, model in enumerate(models)}
    shapes = {target: MARKERS[index % len(MARKERS)] for index, target in enumerate(targets)}
    points = [
        (r["latency"]["end_to_end"]["median_ms"], 100 * r["accuracy"]["pixel_iou"]) for r in records
    ]
    figure, axes = plt.subplots(figsize=(9, 5.5), dpi=120)
    for record, (x, y) in zip(records, points, strict=True):
        axes.scatter(
            x,
            y,
            s=_marker_area(record["memory"]["peak_rss_mb"]),
            c=colours[record["model"]],
            marker=shapes[record["target"]],
            edgecolors="black",
            linewidths=0.5,
            zorder=3,
        )
    front = pareto_front(points)
    if front:
        axes.plot(
            [points[i][0] for i in front],
            [points[i][1] for i in front],
            "k--",
            linewidth=1,
            drawstyle="steps-post",
            zorder=2,
        )
    for row in result["reference"]:
        axes.axhline(100 * row["pixel_iou"], color="grey", linestyle=":", linewidth=0.8)
        axes.annotate(
            f"{row['model']} (survey, reported)",
            (0.01, 100 * row["pixel_iou"]),
            xycoords=("axes fraction", "data"),
            fontsize=7,
            color="grey",
            va="bottom",
        )
    if points:
        axes.set_xscale("log")
        plain = FuncFormatter(lambda value, _: f"{value:g}")
        axes.xaxis.set_major_formatter(plain)
        axes.xaxis.set_minor_formatter(plain)
    axes.set_xlabel("end-to-end latency, median ms per image (decode + infer + post-process)")
    axes.set_ylabel("foreground pixel IoU, %")
    dataset = result["dataset"]
    axes.set_title(
        f"Accuracy vs latency on {dataset['images']} images; marker area = peak RSS; "
        "dashed = Pareto front",
        fontsize=9,
    )
    handles = [
        Line2D([], [], marker="o", linestyle="", color=colours[m], label=m) for m in models
    ] + [
        Line2D([], [], marker=shapes[t], linestyle="", color="black", fillstyle="none", label=t)
        for t in targets
    ]
    if handles:
        axes.legend(handles=handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    axes.grid(True, which="both", alpha=0.3)
    figure.tight_layout()
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png")
    plt.close(figure)
