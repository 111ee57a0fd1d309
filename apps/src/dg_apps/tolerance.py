"""Where an audited experience model stands on the measured tolerance map (``benchmarks/tolerance``).

The tolerance benchmark trains GRPO in controlled-error simulators over a grid of reward-error (eps_R) and
transition-error (eps_P) rates and evaluates every policy in the real environment. It writes a compact copy of
its results into ``dg_apps/data/tolerance/`` (one file per environment kind); ``dg expmodel audit`` reads it and
says whether the audited model's errors, counted on the simulator's scale, fall inside the region where
synthetic GRPO beat the initial policy in those measurements.

The verdict rounds the model's errors up to the next measured grid point (a conservative reading: success is
not assumed to hold between measured points) and reads that cell. It speaks only for the environment kind,
sizes and policy the map was measured with, which it names.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

__all__ = ["TOLERANCE_DATA", "ToleranceVerdict", "load_map", "map_file", "tolerance_verdict"]

TOLERANCE_DATA = Path(str(files("dg_apps") / "data" / "tolerance"))
"""Where the tolerance benchmark publishes its maps (``<env>-<kind>.json``)."""


@dataclass(frozen=True)
class ToleranceVerdict:
    """The verdict line and what it was read from."""

    text: str
    inside: bool | None
    """True / False: inside / outside the region where synthetic GRPO beat the initial policy; None: no map."""
    cell: tuple[float, float] | None = None
    """The (eps_R, eps_P) grid cell the model's errors rounded up to."""

    def as_dict(self) -> dict[str, Any]:
        """For metrics.json."""
        return {"text": self.text, "inside": self.inside, "cell": list(self.cell) if self.cell else None}


def map_file(env_id: str, kind: str | None, directory: Path = TOLERANCE_DATA) -> Path:
    """The map of one environment kind (``textworld`` + ``coin_collector`` -> ``textworld-coin_collector.json``)."""
    return directory / (f"{env_id}-{kind}.json" if kind else f"{env_id}.json")


def load_map(env_id: str, kind: str | None, directory: Path = TOLERANCE_DATA) -> dict[str, Any] | None:
    """The published map of an environment kind, or None where none was measured."""
    path = map_file(env_id, kind, directory)
    if not path.is_file():
        return None
    return dict(json.loads(path.read_text()))


def _round_up(value: float, grid: list[float]) -> float | None:
    above = [point for point in sorted(grid) if point >= value - 1e-12]
    return above[0] if above else None


def _fmt(mean: float, std: float | None) -> str:
    return f"{mean:.3f}" + ("" if std is None else f" ± {std:.3f}")


def tolerance_verdict(
    env_id: str, kind: str | None, eps_r: float | None, eps_p: float | None, directory: Path = TOLERANCE_DATA
) -> ToleranceVerdict:
    """Whether errors ``eps_r`` / ``eps_p`` (the audit's simulator-scale numbers) fall inside the measured region
    where synthetic GRPO beat the initial policy in the real environment, for environment ``env_id`` / ``kind``."""
    name = f"{env_id} {kind}" if kind else env_id
    tolerance = load_map(env_id, kind, directory)
    if tolerance is None:
        known = sorted(p.stem for p in directory.glob("*.json")) if directory.is_dir() else []
        return ToleranceVerdict(
            f"Tolerance: no map measured for {name} (measured: {', '.join(known) or 'none'}); "
            "`nox -s bench -- tolerance --config <yours>` measures one.",
            None,
        )
    if eps_p is None:
        return ToleranceVerdict("Tolerance: no verdict (the audit scored no step).", None)
    reward_note = ""
    if eps_r is None:
        eps_r, reward_note = 0.0, " (eps_R unmeasured: the model ended no episode; read as 0, the optimistic side)"
    measured = tolerance["measured"]
    caveat = (
        f"measured on {measured}, {tolerance['seeds']} seeds per cell"
        + ("" if tolerance.get("complete", True) else ", PARTIAL grid")
        + "; other envs, sizes and policies may tolerate more or less"
    )
    position = f"eps_R {eps_r:.3f} / eps_P {eps_p:.3f} on the simulator's scale{reward_note}"
    r_cell, p_cell = _round_up(eps_r, tolerance["eps_r_grid"]), _round_up(eps_p, tolerance["eps_p_grid"])
    if r_cell is None or p_cell is None:
        return ToleranceVerdict(
            f"Tolerance: {position} is OUTSIDE the measured grid (up to eps_R {max(tolerance['eps_r_grid']):g}, "
            f"eps_P {max(tolerance['eps_p_grid']):g}), beyond every error rate at which synthetic GRPO was "
            f"measured ({caveat}).",
            False,
        )
    cells = {(c["eps_r"], c["eps_p"]): c for c in tolerance["cells"]}
    cell = cells.get((r_cell, p_cell))
    if cell is None:
        return ToleranceVerdict(
            f"Tolerance: {position} rounds up to cell eps_R {r_cell:g} / eps_P {p_cell:g}, not measured yet "
            f"({caveat}).",
            None,
            (r_cell, p_cell),
        )
    initial = tolerance["initial"]
    inside = bool(cell["beats_initial"])
    strength = "a gain the seeds establish" if cell.get("beats_initial_established") else "means only, not established"
    return ToleranceVerdict(
        f"Tolerance: {position} rounds up to cell eps_R {r_cell:g} / eps_P {p_cell:g}, where synthetic GRPO "
        f"reached {_fmt(cell['mean'], cell.get('std'))} real success against the initial policy's "
        f"{_fmt(initial['mean'], initial.get('std'))} ({strength}): "
        f"{'INSIDE' if inside else 'OUTSIDE'} the region where synthetic GRPO beat the initial policy in our "
        f"measurements ({caveat}).",
        inside,
        (r_cell, p_cell),
    )
