"""bench.png: pixel IoU against end-to-end latency, with the Pareto front of the trade-off.

End-to-end ms per image (decode + inference + post-processing) is on the x axis because it
is what a user waits for; marker area is peak memory, colour the model, shape the target.
An artifact whose export accuracy check failed or never finished is drawn hollow and left
off the front: `edgeseg segment` refuses it, so it is no trade-off a user can choose.
The survey's published IoUs are dotted reference lines (they have no latency).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")
UNVERIFIED = ("rejected", "pending")  # export_check values that segment refuses to run


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


def runnable_front(points: Sequence[tuple[float, float]], runnable: Sequence[bool]) -> list[int]:
    """The Pareto front among the points a user can run (indices into ``points``): a
    configuration `edgeseg segment` refuses must not push usable ones off the front."""
    candidates = [index for index, ok in enumerate(runnable) if ok]
    return [candidates[i] for i in pareto_front([points[i] for i in candidates])]


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
    runnable = [r.get("export_check") not in UNVERIFIED for r in records]
    for record, (x, y), ok in zip(records, points, runnable, strict=True):
        colour = colours[record["model"]]
        axes.scatter(
            x,
            y,
            s=_marker_area(record["memory"]["peak_rss_mb"]),
            c=colour if ok else "none",
            marker=shapes[record["target"]],
            edgecolors="black" if ok else colour,
            linewidths=0.5 if ok else 1.5,
            zorder=3,
        )
    front = runnable_front(points, runnable)
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
        Line2D([], [], marker=shapes[t], linestyle="", color="lightgrey", mec="black", label=t)
        for t in targets
    ]
    if not all(runnable):
        handles.append(
            Line2D(
                [],
                [],
                marker="o",
                linestyle="",
                color="grey",
                fillstyle="none",
                label="hollow: export check\nfailed or unfinished",
            )
        )
    if handles:
        axes.legend(handles=handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    axes.grid(True, which="both", alpha=0.3)
    figure.tight_layout()
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png")
    plt.close(figure)
