"""Figures of a run: learning curves from the CSV log, and success bars with their spread."""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["learning_curve", "success_bars"]

CURVE_KEYS = ("rollout/success_rate", "rollout/mean_return", "train/kl", "train/entropy")


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


def learning_curve(csv_path: Path, output: Path, *, title: str = "training") -> Path | None:
    """One panel per logged training metric against the optimiser step; ``None`` when nothing was logged."""
    if not csv_path.exists():
        return None
    rows = _read_csv(csv_path)
    series: dict[str, tuple[list[float], list[float]]] = {}
    for row in rows:
        step = row.get("step", "")
        for key in CURVE_KEYS:
            value = row.get(key, "")
            if step and value:
                xs, ys = series.setdefault(key, ([], []))
                xs.append(float(step))
                ys.append(float(value))
    if not series:
        return None
    plt = _pyplot()
    figure, axes = plt.subplots(1, len(series), figsize=(4 * len(series), 3.2), squeeze=False)
    for axis, (key, (xs, ys)) in zip(axes[0], series.items(), strict=True):
        axis.plot(xs, ys, marker="o", markersize=3)
        axis.set_title(key)
        axis.set_xlabel("optimiser step")
        axis.grid(alpha=0.3)
    figure.suptitle(title)
    figure.tight_layout()
    output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output, dpi=110)
    plt.close(figure)
    return output


def success_bars(rows: Sequence[dict[str, Any]], output: Path, *, title: str) -> Path:
    """Mean held-out success per method, its standard deviation over seeds as an error bar (none for a single
    seed) and, where a row has ``per_seed`` values, each seed's result as a dot."""
    plt = _pyplot()
    names = [str(row["method"]) for row in rows]
    means = [float(row["mean"]) for row in rows]
    spreads = [float(row["std"]) for row in rows]
    figure, axis = plt.subplots(figsize=(max(4.0, 1.6 * len(rows)), 3.4))
    axis.bar(range(len(rows)), means, color="#4c78a8")
    measured = [i for i, spread in enumerate(spreads) if not math.isnan(spread)]
    if measured:
        heights, errors = [means[i] for i in measured], [spreads[i] for i in measured]
        axis.errorbar(measured, heights, yerr=errors, fmt="none", capsize=4, ecolor="k")
    top = [m + (0.0 if math.isnan(s) else s) for m, s in zip(means, spreads, strict=True)]
    for i, row in enumerate(rows):
        seeds = [float(value) for value in row.get("per_seed", [])]
        if seeds:
            axis.plot([i] * len(seeds), seeds, "o", color="#f58518", markersize=4, zorder=3)
            top.append(max(seeds))
    axis.set_xticks(range(len(rows)), names, rotation=15, ha="right")
    axis.set_ylabel("held-out success rate")
    axis.set_ylim(0, max(1e-3, max(top)) * 1.25)
    axis.set_title(title)
    axis.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output, dpi=110)
    plt.close(figure)
    return output
