"""The audit's verdict against the measured tolerance map (issue 18): the rounding to grid cells, every case of
the verdict, and `dg expmodel audit` carrying it with the simulator-scale errors."""

from __future__ import annotations

import json
from pathlib import Path

from dg_apps.tolerance import TOLERANCE_DATA, load_map, map_file, tolerance_verdict
from dg_core import read_trajectories
from tests.conftest import dg


def _map(directory: Path, *, complete: bool = True) -> Path:
    cells = [
        {
            "eps_r": 0.0,
            "eps_p": 0.0,
            "mean": 0.18,
            "std": 0.15,
            "beats_initial": True,
            "beats_initial_established": True,
        },
        {"eps_r": 0.0, "eps_p": 0.5, "mean": 0.12, "std": 0.05, "beats_initial": True},
        {"eps_r": 0.5, "eps_p": 0.0, "mean": 0.03, "std": 0.02, "beats_initial": False},
    ]
    tolerance = {
        "env": "textworld",
        "kind": "coin_collector",
        "measured": "textworld coin_collector, tiny policy",
        "seeds": 3,
        "complete": complete,
        "eps_r_grid": [0.0, 0.5],
        "eps_p_grid": [0.0, 0.5],
        "initial": {"mean": 0.044, "std": 0.016},
        "cells": cells,
    }
    path = map_file("textworld", "coin_collector", directory)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(tolerance))
    return path


def test_the_verdict_rounds_errors_up_to_the_next_measured_cell(tmp_path: Path) -> None:
    _map(tmp_path)
    exact = tolerance_verdict("textworld", "coin_collector", 0.0, 0.0, tmp_path)
    assert exact.inside is True and exact.cell == (0.0, 0.0)
    assert "INSIDE" in exact.text and "a gain the seeds establish" in exact.text
    rounded = tolerance_verdict("textworld", "coin_collector", 0.0, 0.2, tmp_path)
    assert rounded.inside is True and rounded.cell == (0.0, 0.5) and "means only, not established" in rounded.text
    assert "0.120 ± 0.050" in rounded.text and "0.044 ± 0.016" in rounded.text
    bad_reward = tolerance_verdict("textworld", "coin_collector", 0.3, 0.0, tmp_path)
    assert bad_reward.inside is False and bad_reward.cell == (0.5, 0.0) and "OUTSIDE the region" in bad_reward.text
    missing = tolerance_verdict("textworld", "coin_collector", 0.3, 0.3, tmp_path)
    assert missing.inside is None and missing.cell == (0.5, 0.5) and "not measured yet" in missing.text
    beyond = tolerance_verdict("textworld", "coin_collector", 0.0, 0.9, tmp_path)
    assert beyond.inside is False and beyond.cell is None and "OUTSIDE the measured grid" in beyond.text
    silent = tolerance_verdict("textworld", "coin_collector", None, 0.1, tmp_path)
    assert silent.inside is True and "eps_R unmeasured" in silent.text
    other = tolerance_verdict("alfworld", None, 0.0, 0.0, tmp_path)
    assert other.inside is None and "no map measured for alfworld" in other.text
    assert "textworld-coin_collector" in other.text  # names what is measured
    _map(tmp_path, complete=False)
    assert "PARTIAL grid" in tolerance_verdict("textworld", "coin_collector", 0.0, 0.0, tmp_path).text


def test_the_shipped_map_is_readable_and_consistent() -> None:
    shipped = load_map("textworld", "coin_collector")
    assert shipped is not None, f"the tolerance benchmark publishes {TOLERANCE_DATA}/textworld-coin_collector.json"
    grid = {(r, p) for r in shipped["eps_r_grid"] for p in shipped["eps_p_grid"]}
    assert {(c["eps_r"], c["eps_p"]) for c in shipped["cells"]} <= grid
    for cell in shipped["cells"]:
        assert cell["beats_initial"] == (cell["mean"] > shipped["initial"]["mean"])


def test_audit_reports_simulator_scale_errors_and_a_verdict(
    workspace: Path, nearest_run: Path, random_data: Path
) -> None:
    # The nearest model was seeded with these very episodes: it copies their transitions. Where one corridor state
    # and action lead elsewhere in another task it may copy that task's outcome, so a few errors remain.
    out = workspace / "audit-nearest"
    metrics = dg(
        "expmodel", "audit", "--set", f"expmodel={nearest_run}", "--set", f"held_out=[{random_data}]",
        "--set", "open_loop_episodes=0", "--set", "ablations=false", "--output", str(out),
    )  # fmt: skip
    scale = metrics["simulator_scale"]
    steps = sum(t.num_steps for t in read_trajectories(random_data))
    assert scale["steps"] == steps and scale["eps_P"] == sum(scale["transition_errors"].values()) / steps
    assert scale["eps_P"] < 0.1 and "wrong_place" not in scale["transition_errors"]
    assert scale["reward_errors"] == 0 and scale["reward_eligible"] > 0 and scale["eps_R"] == 0.0
    assert metrics["tolerance"]["inside"] is None  # the scripted corridor has no measured map
    summary = (out / "summary.md").read_text()
    assert "eps_R 0.000 (0 of" in summary and "Tolerance: no map measured for scripted" in summary
