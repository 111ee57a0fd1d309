"""The results plots: they draw what they are given, single-seed rows and NaN spreads included."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib.image

from dg_apps.plots import success_bars


def test_success_bars_with_single_seed_rows_and_per_seed_dots(tmp_path: Path) -> None:
    rows = [
        {"method": "initial", "mean": 0.02, "std": 0.01, "per_seed": [0.01, 0.02, 0.03]},
        {"method": "ablation", "mean": 0.5, "std": math.nan, "per_seed": [0.5]},
        {"method": "demo row without seeds", "mean": 0.1, "std": math.nan},
    ]
    output = success_bars(rows, tmp_path / "plots" / "success.png", title="t")
    image = matplotlib.image.imread(output)
    # figsize (max(4, 1.6 x 3 rows), 3.4) inches at 110 dpi
    assert image.shape[:2] == (round(3.4 * 110), round(4.8 * 110))


def test_success_bars_all_zero_rows(tmp_path: Path) -> None:
    rows = [{"method": name, "mean": 0.0, "std": math.nan, "per_seed": [0.0]} for name in ("a", "b")]
    image = matplotlib.image.imread(success_bars(rows, tmp_path / "zero.png", title="nothing won"))
    assert image.shape[:2] == (round(3.4 * 110), round(4.0 * 110))
