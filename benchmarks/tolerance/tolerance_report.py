"""The tolerance benchmark's report: the markdown tables (grid, references, learned models and their verdicts)
and the figure (heat map, line plots per axis, the learned models placed among the cells)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from run import ToleranceConfig

SMOKE_CONFIGS = ("quick",)
"""Configs whose numbers mean nothing (smoke size): labelled so, and never published as the map."""


def _fmt(value: float, spread: float) -> str:
    return f"{value:.3f}" + ("" if math.isnan(spread) else f" ± {spread:.3f}")


def markdown(config: ToleranceConfig, name: str, summary: dict[str, Any], complete: bool, seconds: float) -> str:
    env, algo = config.env, config.algorithm
    smoke = name in SMOKE_CONFIGS
    title = f"# Tolerance benchmark: {name}" + (" (SMOKE SIZE: the numbers mean nothing)" if smoke else "")
    lines = [
        title,
        "",
        f"{env.name} ({env.suite if env.name == 'textworld' else 'generated problems'}, {env.games} games, max "
        f"{env.max_steps} steps); GRPO, {algo.steps} rollout batches x {algo.updates_per_batch} updates, "
        f"{algo.tasks_per_step} tasks x {algo.group_size} episodes per batch, from the same initial policy per seed; "
        f"task selection {'curriculum' if config.curriculum.enabled else 'uniform'} for every run. Each policy is "
        f"evaluated in the real env on the held-out test split, {config.eval_episodes_per_task} episodes per task, "
        f"with its training seed. Seeds {config.seeds}; transition-error kinds: {', '.join(config.error_kinds)}. "
        "Policy: tiny (built from a config, trained from scratch). 2 shared CPU cores.",
        "",
    ]
    if not complete:
        lines += [
            "**Partial**: the time budget ran out (or only part of the benchmark ran); cells with fewer seeds than "
            "listed are marked.",
            "",
        ]
    initial, real = summary["initial"], summary["real"]
    lines += [
        f"References: initial policy {_fmt(initial['mean'], initial['std'])}; GRPO in the real env "
        f"{_fmt(real['mean'], real['std'])} (per seed {' / '.join(f'{v:.2f}' for v in real['per_seed'])}).",
        "",
        "Held-out real success (mean ± sd over seeds), rows eps_R, columns eps_P:",
        "",
        "| eps_R \\ eps_P | " + " | ".join(f"{p:g}" for p in config.eps_p_grid) + " |",
        "| --- |" + " --- |" * len(config.eps_p_grid),
    ]
    by_key = {(c["eps_r"], c["eps_p"]): c for c in summary["cells"]}
    for eps_r in config.eps_r_grid:
        row = []
        for eps_p in config.eps_p_grid:
            cell = by_key.get((eps_r, eps_p))
            if cell is None:
                row.append("-")
                continue
            mark = "" if len(cell["per_seed"]) == len(config.seeds) else f" ({len(cell['per_seed'])} seed)"
            row.append(_fmt(cell["mean"], cell["std"]) + mark)
        lines.append(f"| {eps_r:g} | " + " | ".join(row) + " |")
    lines += [
        "",
        "| eps_R | eps_P | real success | per seed | in-simulator rollout success | measured eps_R / eps_P | "
        "> initial | >= 90% of real GRPO | synthetic transitions | s per cell (train + eval) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for cell in summary["cells"]:
        measured = "/".join("-" if v is None else f"{v:.3f}" for v in (cell["measured_eps_r"], cell["measured_eps_p"]))
        cell_seconds = "-" if cell["cell_seconds"] is None else f"{cell['cell_seconds']:.0f}"
        lines.append(
            f"| {cell['eps_r']:g} | {cell['eps_p']:g} | {_fmt(cell['mean'], cell['std'])} | "
            f"{' / '.join(f'{v:.2f}' for v in cell['per_seed'])} | {cell['simulator_success']:.3f} | {measured} | "
            f"{_verdict(cell['beats_initial'], cell['vs_initial'])} | "
            f"{_verdict(cell['reaches_90pct_of_real'], cell['vs_90pct_real'])} | "
            f"{cell['transitions']:,.0f} | {cell_seconds} |"
        )
    check = summary["zero_error_cell_equals_real"]
    tol = summary["tolerance"]

    def _tol(value: float | None) -> str:
        return "none (the first cell already fails)" if value is None else f"{value:g}"

    lines += [
        "",
        "Verdict columns: the means' comparison, then the paired difference over seeds (cell minus initial, or "
        "minus 0.9 x real GRPO, same seed) with its 95% t interval; *established* only where that interval "
        "excludes 0. "
        f"Cell (0, 0) equals real-env GRPO seed for seed: {'-' if check is None else ('yes' if check else 'NO')}.",
        "",
        "Tolerances (means; each the largest error on one axis, the other at 0, up to which every measured cell "
        "passes):",
        "",
        f"- beats the initial policy: eps_R up to {_tol(tol['eps_r_beats_initial'])}, eps_P up to "
        f"{_tol(tol['eps_p_beats_initial'])};",
        f"- reaches 90% of real-env GRPO: eps_R up to {_tol(tol['eps_r_reaches_90pct_of_real'])}, eps_P up to "
        f"{_tol(tol['eps_p_reaches_90pct_of_real'])}.",
    ]
    lines += _models_markdown(summary)
    lines += ["", f"Stage compute {seconds / 60:.0f} min (finished stages of earlier invocations included)."]
    return "\n".join(lines)


def _interval(test: dict[str, Any]) -> str:
    if test["mean"] is None:
        return "-"
    if test["low"] is None:
        return f"{test['mean']:+.3f} (1 seed)"
    return f"{test['mean']:+.3f} [{test['low']:+.3f}, {test['high']:+.3f}]"


def _verdict(passes: bool, test: dict[str, Any]) -> str:
    established = test["low"] is not None and (test["low"] > 0 if passes else test["high"] < 0)
    return f"{'yes' if passes else 'no'}{' (established)' if established else ''}, {_interval(test)}"


def _models_markdown(summary: dict[str, Any]) -> list[str]:
    models = summary["models"]
    if not models:
        return []

    def num(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f}"

    lines = [
        "",
        "## Learned experience models on the map",
        "",
        "Each fitted on the benchmark's own real data (`data`), audited teacher-forced on fresh noisy-expert "
        "episodes of the training tasks (what synthetic GRPO plays: its place on the map) and on the held-out "
        "tasks' (generalisation), then GRPO in its synthetic env with the cells' settings and seeds, evaluated in "
        "the real env. eps_R / "
        "eps_P on the simulator's scale count errors as the controlled-error simulator injects them (reward errors "
        "per step the model ends; steps with a transition error of the typology, parse failures included); the "
        "audit's headline eps_R (all steps) / eps_P (1 - token F1) beside them. The cell is where "
        "`dg expmodel audit`'s verdict reads (errors rounded up to the grid).",
        "",
        "| model | data | eps_R / eps_P (simulator scale) | headline eps_R / eps_P | transition errors by kind | "
        "held-out tasks: eps_R / eps_P (simulator scale) | verdict cell | in-simulator rollout success | "
        "real success | per seed | vs initial (paired, 95% CI) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    fidelity = []
    for name, model in models.items():
        kinds = ", ".join(f"{k} {v}" for k, v in model["transition_errors"].items()) or "none"
        cell = model.get("verdict_cell")
        lines.append(
            f"| {name} | {model['data']} | {num(model['sim_eps_R'])} / {num(model['sim_eps_P'])} | "
            f"{num(model['eps_R'])} / {num(model['eps_P'])} | {kinds} | "
            f"{num(model['held_out']['sim_eps_R'])} / {num(model['held_out']['sim_eps_P'])} | "
            f"{'beyond the grid' if cell is None else f'({cell[0]:g}, {cell[1]:g})'} | "
            f"{model['simulator_success']:.3f} | {_fmt(model['mean'], model['std'])} | "
            f"{' / '.join(f'{v:.2f}' for v in model['per_seed'])} | {_interval(model['vs_initial'])} |"
        )
        success, policies = model.get("success"), model.get("policy_success") or {}
        if success or policies:
            played = "; ".join(
                f"{policy} {p['real']['mean']:.2f} / {p['synthetic']['mean']:.2f}" for policy, p in policies.items()
            )
            recall = (
                "-" if not success else f"{success['precision']:.2f} / {success['recall']:.2f} ({success['positives']})"
            )
            fidelity.append(f"| {name} | {recall} | {played or '-'} |")
    if fidelity:
        lines += [
            "",
            "Training-task audit, outcomes and policies: precision / recall of winning steps (positives), and each "
            "policy's success rate real / synthetic over the same tasks, seeds and initial states:",
            "",
            "| model | success precision / recall (positives) | policy success real / synthetic |",
            "| --- | --- | --- |",
            *fidelity,
        ]
    ranks = summary.get("rank_agreement") or {}
    if ranks:

        def rho(value: float | None) -> str:
            return "undefined (fewer than 3 models or no variation)" if value is None else f"{value:+.2f}"

        lines += [
            "",
            f"Rank agreement over {len(ranks['models'])} models (Spearman's rho between fewer audited errors and "
            f"more real success; +1 = the audit orders them exactly): simulator scale {rho(ranks['simulator_scale'])}, "
            f"headline {rho(ranks['headline'])}. With this few models a rho says little; it is reported, not tested.",
        ]
    return lines


def plot(config: ToleranceConfig, name: str, summary: dict[str, Any], output: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 4, figsize=(20, 4.4))
    rows, cols = config.eps_r_grid, config.eps_p_grid
    by_key = {(c["eps_r"], c["eps_p"]): c for c in summary["cells"]}
    grid = [[by_key[(r, p)]["mean"] if (r, p) in by_key else math.nan for p in cols] for r in rows]
    top = max([v for row in grid for v in row if not math.isnan(v)] + [summary["real"]["mean"], 1e-3])
    heat = axes[0].imshow(grid, origin="lower", cmap="viridis", vmin=0.0, vmax=top, aspect="auto")
    axes[0].set_xticks(range(len(cols)), [f"{p:g}" for p in cols])
    axes[0].set_yticks(range(len(rows)), [f"{r:g}" for r in rows])
    axes[0].set_xlabel("eps_P (transition errors)")
    axes[0].set_ylabel("eps_R (reward errors)")
    axes[0].set_title("held-out real success")
    for i, r in enumerate(rows):
        for j, p in enumerate(cols):
            cell = by_key.get((r, p))
            if cell is not None:
                spread = "" if math.isnan(cell["std"]) else f"\n±{cell['std']:.2f}"
                ink = "k" if cell["mean"] > 0.6 * top else "w"
                axes[0].text(j, i, f"{cell['mean']:.2f}{spread}", ha="center", va="center", color=ink, fontsize=8)
    figure.colorbar(heat, ax=axes[0])
    initial, real = summary["initial"]["mean"], summary["real"]["mean"]
    for axis, (x_grid, line_grid, x_key, line_key, x_label) in zip(
        axes[1:3],
        (
            (rows, cols, "eps_r", "eps_p", "eps_R (reward errors)"),
            (cols, rows, "eps_p", "eps_r", "eps_P (transition errors)"),
        ),
        strict=True,
    ):
        for value in line_grid:
            points = [c for c in summary["cells"] if c[line_key] == value]
            points.sort(key=lambda c: c[x_key])
            if not points:
                continue
            spreads = [0.0 if math.isnan(c["std"]) else c["std"] for c in points]
            axis.errorbar(
                [c[x_key] for c in points],
                [c["mean"] for c in points],
                yerr=spreads,
                marker="o",
                capsize=3,
                label=f"{'eps_R' if line_key == 'eps_r' else 'eps_P'} = {value:g}",
            )
        if not math.isnan(real):
            axis.axhline(real, color="black", linestyle="-", linewidth=1.2, label="GRPO in real env")
        if not math.isnan(initial):
            axis.axhline(initial, color="grey", linestyle="--", linewidth=1, label="initial policy")
        axis.set_xlabel(x_label)
        axis.set_ylabel("held-out real success")
        axis.set_xticks(list(x_grid))
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    _placement(axes[3], summary, top)
    figure.suptitle(f"tolerance ({name}): GRPO in controlled-error simulators, evaluated in the real env")
    figure.tight_layout()
    output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output, dpi=110)
    plt.close(figure)
    return output


def _placement(axis: Any, summary: dict[str, Any], top: float) -> None:
    """Cells (squares) and learned models (stars) at their eps_P / eps_R, coloured by real success."""
    cells, models = summary["cells"], summary["models"]
    points = [(c["eps_p"], c["eps_r"], c["mean"]) for c in cells]
    scatter = axis.scatter(
        [x for x, _, _ in points], [y for _, y, _ in points], c=[v for _, _, v in points], marker="s", s=140,
        cmap="viridis", vmin=0.0, vmax=top, edgecolors="black", linewidths=0.5, label="controlled-error cells",
    )  # fmt: skip
    for index, (name, model) in enumerate(models.items()):
        x = model["sim_eps_P"] if model["sim_eps_P"] is not None else 1.0
        y = model["sim_eps_R"] if model["sim_eps_R"] is not None else 0.0
        axis.scatter([x], [y], c=[model["mean"]], marker="*", s=320, cmap="viridis", vmin=0.0, vmax=top,
                     edgecolors="red", linewidths=1.0)  # fmt: skip
        axis.annotate(
            f"{name} ({model['mean']:.2f})", (x, y), textcoords="offset points", xytext=(6, 6 + 11 * index), fontsize=7
        )
    axis.set_xlabel("eps_P (simulator scale)")
    axis.set_ylabel("eps_R (simulator scale)")
    axis.set_xlim(-0.05, 1.05)
    axis.set_ylim(-0.05, 1.05)
    axis.set_title("learned models (stars) among the cells")
    axis.grid(alpha=0.3)
    plt_colorbar = axis.figure.colorbar(scatter, ax=axis)
    plt_colorbar.set_label("held-out real success")
