"""How much simulator error does synthetic RL tolerate? GRPO in controlled-error simulators (issue 18).

Every training run starts from the same initial policy (per seed) and takes the same number of GRPO updates:

1. the initial policy (untrained tiny LM, built per seed) — reference;
2. GRPO in the real environment — reference;
3. GRPO in dg-expmodel's ``PerturbedEnv`` (``dg train`` with ``synthetic.simulator: perturbed``) for every cell
   of the grid eps_R x eps_P: the real environment's own transitions with reward errors at rate eps_R and
   transition errors (wrong place, missing / invented object, wrong action set, early / missed done) at rate
   eps_P. Cell (0, 0) is real-env GRPO by construction (the apps tests check bit-identical weights); it is run
   anyway as an end-to-end check.

Every trained policy is evaluated in the real environment on the held-out test split (with its training seed).
Task selection is the same for all runs (``curriculum``; uniform by default), so the simulator's errors are the
only difference between a cell and the real run.

Every stage is a dg run directory under ``--output``: an interrupted benchmark run again keeps its finished
stages and resumes the one it stopped in, across sessions. ``--budget-minutes`` stops starting new stages after
that long and writes the results so far (cells with fewer seeds are marked). Results:
``benchmarks/results/tolerance_<config>.{json,md,png}`` (table, heat map and line plots).

    python benchmarks/tolerance/run.py --quick                    # smoke size: 3 x 3 grid, 2 seeds, minutes
    python benchmarks/tolerance/run.py                            # TextWorld coin collector, 4 x 4 x 3 seeds: hours
    python benchmarks/tolerance/run.py --budget-minutes 50        # a slice of it; run again to continue
    nox -s bench -- tolerance [args]
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
import warnings
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, get_args

import torch
from pydantic import Field
from tolerance_report import SMOKE_CONFIGS, markdown, plot

from dg_apps.commands import run_audit, run_collect, run_fit
from dg_apps.config import (
    AuditConfig,
    CollectConfig,
    DemoConfig,
    ErrorKind,
    EvalConfig,
    ExpModelConfig,
    FitConfig,
    PolicyFidelityConfig,
    Strict,
    SyntheticConfig,
    TrainConfig,
    load_config,
)
from dg_apps.demo import collect_data, initial_policy, run_stage
from dg_apps.evaluation import run_eval
from dg_apps.rundir import RunDir
from dg_apps.tolerance import TOLERANCE_DATA, map_file
from dg_apps.training import run_train

HERE = Path(__file__).resolve().parent
RESULTS = HERE.parents[0] / "results"


class LearnedModel(Strict):
    """An experience model placed on the map: fitted on the benchmark's own data, audited on its held-out
    episodes, then GRPO in its synthetic env exactly as in a cell."""

    name: str
    expmodel: ExpModelConfig
    data: Literal["all", "expert", "random"] = "all"
    """Which of the collected real trajectories it is fitted on (less data, more errors)."""


class ToleranceConfig(DemoConfig):
    """The demo's env, policy and GRPO settings plus the grid and the learned models to place on it."""

    eps_r_grid: list[float] = Field(default_factory=lambda: [0.0, 0.1, 0.25, 0.5])
    eps_p_grid: list[float] = Field(default_factory=lambda: [0.0, 0.1, 0.25, 0.5])
    error_kinds: list[ErrorKind] = Field(default_factory=lambda: list(get_args(ErrorKind)), min_length=1)
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2])
    eval_episodes_per_task: int = Field(default=16, ge=1)
    models: list[LearnedModel] = Field(default_factory=list)
    audit_episodes: int = Field(default=24, ge=1)
    """Training-task episodes each model is audited on (its place on the map)."""
    audit_policy_episodes: int = Field(default=0, ge=0)
    """Policy-level fidelity episode pairs per policy (random, expert, noisy-expert) in each model's training-task
    audit (0: none; the held-out audit never plays them)."""
    publish: bool = True
    """Copy the map into dg_apps/data/tolerance/ (what `dg expmodel audit` reads); off for the smoke size."""


def log(message: str) -> None:
    print(message, flush=True)


def _mean_sd(values: list[float]) -> tuple[float, float]:
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else math.nan


def cell_name(eps_r: float, eps_p: float) -> str:
    return f"cell-r{eps_r:g}-p{eps_p:g}"


class OutOfTime(Exception):
    """The time budget is spent; the stages so far are kept."""


class Benchmark:
    def __init__(self, config: ToleranceConfig, root: RunDir, *, progress: bool, deadline: float | None) -> None:
        self.config = config
        self.root = root
        self.progress = progress
        self.deadline = deadline
        self.data: list[str] = []
        self.held_out = ""
        self.used: list[str] = []

    def stage(self, name: str, command: str, config: Any, body: Any) -> dict[str, Any]:
        folder = self.root.path / name
        finished = (folder / "run.json").exists() and RunDir.read_meta(folder).get("status") == "done"
        if not finished and self.deadline is not None and time.perf_counter() > self.deadline:
            raise OutOfTime(name)
        self.used.append(name)
        return run_stage(self.root, name, command, config, body, log)

    def compute_seconds(self) -> float:
        """Wall seconds of every stage the results come from, including stages finished by earlier invocations."""
        total = 0.0
        for name in dict.fromkeys(self.used):
            record = RunDir.read_meta(self.root.path / name)
            if record.get("finished"):
                finished = datetime.fromisoformat(record["finished"])
                total += (finished - datetime.fromisoformat(record["started"])).total_seconds()
        return total

    def stage_seconds(self, name: str) -> float | None:
        record = RunDir.read_meta(self.root.path / name)
        if not record.get("finished"):
            return None
        return (datetime.fromisoformat(record["finished"]) - datetime.fromisoformat(record["started"])).total_seconds()

    def collect(self) -> None:
        self.data, self.held_out = collect_data(self.config, self.root, progress=self.progress, log=log)

    def model_data(self, model: LearnedModel) -> list[str]:
        if model.data == "all":
            return list(self.data)
        return self.data[:1] if model.data == "expert" else self.data[1:2]

    def train_task_episodes(self) -> str:
        """Noisy-expert episodes on the training tasks (a policy no model was fitted on): the tasks synthetic GRPO
        plays, so the audit on them measures the simulator the policy trains in."""
        config = CollectConfig(env=self.config.env, tasks="train", policy="noisy-expert", episodes_per_task=1, seed=3)
        metrics = self.stage(
            "04-collect-train-audit", "collect", config, lambda c, r: run_collect(c, r, progress=self.progress)
        )
        return str(metrics["trajectories"])

    def fit_and_audit(self, model: LearnedModel) -> tuple[dict[str, Any], dict[str, Any]]:
        """Fit the model on its share of the data; audit it on the training tasks' fresh episodes (its place on the
        map) and on the held-out tasks' (how far it generalises). Once for all seeds."""
        fit = FitConfig(
            data=self.model_data(model), expmodel=model.expmodel, trainer=self.config.trainer, seed=self.config.seed
        )
        self.stage(f"model-fit-{model.name}", "expmodel fit", fit, lambda c, r: run_fit(c, r, progress=self.progress))
        audits = []
        for label, episodes, limit in (
            ("train", self.train_task_episodes(), self.config.audit_episodes),
            ("heldout", self.held_out, None),
        ):
            audit = AuditConfig(
                expmodel=str(self.root.path / f"model-fit-{model.name}"),
                held_out=[episodes],
                max_episodes=limit,
                open_loop_episodes=self.config.audit_open_loop,
                ablations=False,
                permutations=50,
                policy_fidelity=PolicyFidelityConfig(
                    episodes=self.config.audit_policy_episodes if label == "train" else 0,
                    max_steps=self.config.env.max_steps,
                ),
            )
            audits.append(
                self.stage(
                    f"model-audit-{label}-{model.name}",
                    "expmodel audit",
                    audit,
                    lambda c, r: run_audit(c, r, progress=self.progress),
                )
            )
        return audits[0], audits[1]

    def initial(self, seed: int) -> Path:
        return initial_policy(self.config, self.data, self.root.path / f"policy-initial-s{seed}", seed=seed)

    def train_config(self, seed: int, **update: Any) -> TrainConfig:
        config = self.config
        policy = config.policy.model_copy(update={"model": str(self.initial(seed))})
        return TrainConfig(
            env=config.env,
            tasks="train",
            data=self.data,
            policy=policy,
            algorithm=config.algorithm,
            curriculum=config.curriculum,
            trainer=config.trainer,
            seed=seed,
            **update,
        )

    def train(self, name: str, config: TrainConfig) -> dict[str, Any]:
        return self.stage(name, "train", config, lambda c, r: run_train(c, r, progress=self.progress))

    def evaluate(self, name: str, policy: str, seed: int) -> float:
        config = EvalConfig(
            env=self.config.env,
            tasks="test",
            policy=policy,
            seeds=[seed],
            episodes_per_task=self.config.eval_episodes_per_task,
        )
        stage = f"eval{config.episodes_per_task}-{name}"
        metrics = self.stage(stage, "eval", config, lambda c, r: run_eval(c, r, progress=self.progress))
        return float(metrics["mean"])


def run_references(bench: Benchmark, seed: int, results: dict[str, Any]) -> None:
    tag = f"s{seed}"
    initial = bench.initial(seed)
    results["initial"].append({"seed": seed, "success": bench.evaluate(f"initial-{tag}", str(initial), seed)})
    train = bench.train(f"real-{tag}", bench.train_config(seed, where="real"))
    success = bench.evaluate(f"real-{tag}", str(bench.root.path / f"real-{tag}" / "policy"), seed)
    results["real"].append({"seed": seed, "success": success, **_cost(train, "real_transitions")})


def run_cell(bench: Benchmark, eps_r: float, eps_p: float, seed: int, results: dict[str, Any]) -> None:
    name = f"{cell_name(eps_r, eps_p)}-s{seed}"
    simulator = SyntheticConfig(simulator="perturbed", eps_r=eps_r, eps_p=eps_p, error_kinds=bench.config.error_kinds)
    train = bench.train(name, bench.train_config(seed, where="synthetic", synthetic=simulator))
    success = bench.evaluate(name, str(bench.root.path / name / "policy"), seed)
    history = train["rollout_history"]
    entry = {
        "seed": seed,
        "success": success,
        # what the simulator told the agent: training-rollout success, misreported outcomes included
        "simulator_success": statistics.fmean(h["success_rate"] for h in history) if history else math.nan,
        "simulator": train["simulator"],
        **_cost(train, "synthetic_transitions"),
        "cell_seconds": _sum_or_none(bench.stage_seconds(name), bench.stage_seconds(f"eval{_episodes(bench)}-{name}")),
    }
    results["cells"].setdefault(f"{eps_r:g},{eps_p:g}", []).append(entry)


def run_model(bench: Benchmark, model: LearnedModel, seed: int, results: dict[str, Any]) -> None:
    on_train_tasks, on_held_out = bench.fit_and_audit(model)
    name = f"model-{model.name}-s{seed}"
    config = bench.train_config(
        seed,
        where="synthetic",
        expmodel=str(bench.root.path / f"model-fit-{model.name}"),
        synthetic=bench.config.synthetic,
    )
    train = bench.train(name, config)
    success = bench.evaluate(name, str(bench.root.path / name / "policy"), seed)
    history = train["rollout_history"]
    entry = {
        "seed": seed,
        "success": success,
        "simulator_success": statistics.fmean(h["success_rate"] for h in history) if history else math.nan,
        "parse_failures": train.get("parse_failures"),
        **_cost(train, "synthetic_transitions"),
        "cell_seconds": _sum_or_none(bench.stage_seconds(name), bench.stage_seconds(f"eval{_episodes(bench)}-{name}")),
    }
    numbers = {**_audit_numbers(on_train_tasks), "held_out": _audit_numbers(on_held_out)}
    record = results["models"].setdefault(model.name, {"audit": numbers, "data": model.data, "runs": []})
    record["runs"].append(entry)


def _audit_numbers(audit: dict[str, Any]) -> dict[str, Any]:
    scale = audit["simulator_scale"]
    return {
        "eps_R": audit["eps_R"],
        "eps_P": audit["eps_P"],
        "sim_eps_R": scale["eps_R"],
        "sim_eps_P": scale["eps_P"],
        "transition_errors": scale["transition_errors"],
        "reward_eligible": scale["reward_eligible"],
        "parse_failure_rate": audit["parse_failure_rate"],
        "exact_match": audit["next_state_exact_match"],
        "success": audit.get("success"),  # precision / recall of winning steps (audits written before: none)
        "policy_success": {
            name: entry["success"] for name, entry in (audit.get("policy_fidelity") or {}).get("policies", {}).items()
        },
    }


def _episodes(bench: Benchmark) -> int:
    return bench.config.eval_episodes_per_task


def _sum_or_none(*values: float | None) -> float | None:
    return None if any(v is None for v in values) else sum(v for v in values if v is not None)


def _cost(train: dict[str, Any], transitions: str) -> dict[str, Any]:
    return {
        "transitions": train[transitions],
        "optimizer_steps": train["optimizer_steps"],
        "train_seconds": train["seconds"],
    }


def _rate(count: int, eligible: int) -> float | None:
    return count / eligible if eligible else None


T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}


def paired(values: dict[int, float], reference: dict[int, float], scale: float = 1.0) -> dict[str, Any]:
    """Mean of ``values[s] - scale * reference[s]`` over the common seeds, with a 95% t interval (the seeds pair:
    a cell and the reference start from the same initial policy and evaluate on the same episodes' seeds)."""
    seeds = sorted(set(values) & set(reference))
    diffs = [values[s] - scale * reference[s] for s in seeds]
    if not diffs:
        return {"n": 0, "mean": None, "low": None, "high": None}
    mean = statistics.fmean(diffs)
    if len(diffs) < 2:
        return {"n": 1, "mean": mean, "low": None, "high": None}
    half = T_975.get(len(diffs) - 1, 1.96) * statistics.stdev(diffs) / math.sqrt(len(diffs))
    return {"n": len(diffs), "mean": mean, "low": mean - half, "high": mean + half}


def spearman(xs: list[float], ys: list[float]) -> float | None:
    """Spearman's rank correlation (average ranks for ties); None below 3 points or without variation."""
    if len(xs) < 3:
        return None

    def ranks(values: list[float]) -> list[float]:
        order = sorted(range(len(values)), key=lambda i: values[i])
        out = [0.0] * len(values)
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
                j += 1
            for k in range(i, j + 1):
                out[order[k]] = (i + j) / 2 + 1
            i = j + 1
        return out

    rx, ry = ranks(xs), ranks(ys)
    if len(set(rx)) < 2 or len(set(ry)) < 2:
        return None
    mx, my = statistics.fmean(rx), statistics.fmean(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry, strict=True))
    return cov / math.sqrt(sum((a - mx) ** 2 for a in rx) * sum((b - my) ** 2 for b in ry))


def tolerance_along(cells: list[dict[str, Any]], axis: str, other: str, key: str) -> float | None:
    """The largest error on ``axis`` (the other at 0) up to which every measured cell satisfies ``key``."""
    line = sorted((c for c in cells if c[other] == 0), key=lambda c: c[axis])
    found = None
    for cell in line:
        if not cell[key]:
            break
        found = cell[axis]
    return found


def summarise(config: ToleranceConfig, results: dict[str, Any]) -> dict[str, Any]:
    initial_mean, initial_sd = _mean_sd([e["success"] for e in results["initial"]])
    real_mean, real_sd = _mean_sd([e["success"] for e in results["real"]])
    initial_by_seed, real_by_seed = _by_seed(results["initial"]), _by_seed(results["real"])
    cells: list[dict[str, Any]] = []
    for eps_r in config.eps_r_grid:
        for eps_p in config.eps_p_grid:
            entries = results["cells"].get(f"{eps_r:g},{eps_p:g}", [])
            if not entries:
                continue
            mean, sd = _mean_sd([e["success"] for e in entries])
            errors = {"transition": 0, "transition_eligible": 0, "reward": 0, "reward_eligible": 0}
            for entry in entries:
                sim = entry["simulator"]
                errors["transition"] += sum(sim["transition_errors"].values())
                errors["transition_eligible"] += sim["transition_eligible"]
                errors["reward"] += sum(sim["reward_errors"].values())
                errors["reward_eligible"] += sim["reward_eligible"]
            seconds = [e["cell_seconds"] for e in entries if e["cell_seconds"] is not None]
            cells.append(
                {
                    "eps_r": eps_r,
                    "eps_p": eps_p,
                    "mean": mean,
                    "std": sd,
                    "per_seed": [e["success"] for e in entries],
                    "seeds": [e["seed"] for e in entries],
                    "simulator_success": statistics.fmean(e["simulator_success"] for e in entries),
                    "measured_eps_r": _rate(errors["reward"], errors["reward_eligible"]),
                    "measured_eps_p": _rate(errors["transition"], errors["transition_eligible"]),
                    "transitions": statistics.fmean(e["transitions"] for e in entries),
                    "optimizer_steps": statistics.fmean(e["optimizer_steps"] for e in entries),
                    "cell_seconds": statistics.fmean(seconds) if seconds else None,
                    "beats_initial": mean > initial_mean,
                    "reaches_90pct_of_real": mean >= 0.9 * real_mean,
                    "vs_initial": paired(_by_seed(entries), initial_by_seed),
                    "vs_90pct_real": paired(_by_seed(entries), real_by_seed, 0.9),
                }
            )
            cells[-1]["beats_initial_established"] = (cells[-1]["vs_initial"]["low"] or 0.0) > 0
            cells[-1]["below_90pct_established"] = (cells[-1]["vs_90pct_real"]["high"] or 0.0) < 0
    zero = next((c for c in cells if c["eps_r"] == 0 and c["eps_p"] == 0), None)
    zero_check = None
    if zero is not None:
        pairs = zip(zero["seeds"], zero["per_seed"], strict=True)
        zero_check = all(real_by_seed.get(seed) == value for seed, value in pairs)
    return {
        "initial": {"mean": initial_mean, "std": initial_sd, "per_seed": [e["success"] for e in results["initial"]]},
        "real": {
            "mean": real_mean,
            "std": real_sd,
            "per_seed": [e["success"] for e in results["real"]],
            "transitions": statistics.fmean(e["transitions"] for e in results["real"]) if results["real"] else None,
            "train_seconds": statistics.fmean(e["train_seconds"] for e in results["real"]) if results["real"] else None,
        },
        "cells": cells,
        "zero_error_cell_equals_real": zero_check,
        "tolerance": {
            f"{axis}_{key}": tolerance_along(cells, axis, other, key)
            for axis, other in (("eps_r", "eps_p"), ("eps_p", "eps_r"))
            for key in ("beats_initial", "reaches_90pct_of_real")
        },
        "models": _models(results, initial_by_seed, real_by_seed),
    }


def _by_seed(entries: list[dict[str, Any]]) -> dict[int, float]:
    return {e["seed"]: e["success"] for e in entries}


def _models(
    results: dict[str, Any], initial_by_seed: dict[int, float], real_by_seed: dict[int, float]
) -> dict[str, Any]:
    models: dict[str, Any] = {}
    for name, record in results.get("models", {}).items():
        runs = record["runs"]
        mean, sd = _mean_sd([r["success"] for r in runs])
        models[name] = {
            **record["audit"],
            "data": record["data"],
            "mean": mean,
            "std": sd,
            "per_seed": [r["success"] for r in runs],
            "seeds": [r["seed"] for r in runs],
            "simulator_success": statistics.fmean(r["simulator_success"] for r in runs),
            "transitions": statistics.fmean(r["transitions"] for r in runs),
            "cell_seconds": statistics.fmean(r["cell_seconds"] for r in runs if r["cell_seconds"] is not None)
            if any(r["cell_seconds"] is not None for r in runs)
            else None,
            "vs_initial": paired(_by_seed(runs), initial_by_seed),
        }
    return models


def rank_agreement(models: dict[str, Any]) -> dict[str, Any]:
    """Do the audit's numbers order the learned models as their real outcomes do? Spearman's rho between minus
    each error sum and the real success (positive: fewer errors, more success)."""
    names = [n for n, m in models.items() if not math.isnan(m["mean"])]
    outcome = [models[n]["mean"] for n in names]

    def error_sum(model: dict[str, Any], r: str, p: str) -> float:
        return (model[r] if model[r] is not None else 1.0) + (model[p] if model[p] is not None else 1.0)

    return {
        "models": names,
        "simulator_scale": spearman([-error_sum(models[n], "sim_eps_R", "sim_eps_P") for n in names], outcome),
        "headline": spearman([-error_sum(models[n], "eps_R", "eps_P") for n in names], outcome),
    }


def tolerance_map(config: ToleranceConfig, name: str, summary: dict[str, Any], complete: bool) -> dict[str, Any]:
    """The compact copy `dg expmodel audit` reads (dg_apps/data/tolerance/<env>-<kind>.json)."""
    env, algo, policy = config.env, config.algorithm, config.policy
    keep = ("eps_r", "eps_p", "mean", "std", "per_seed", "beats_initial", "beats_initial_established",
            "reaches_90pct_of_real")  # fmt: skip
    return {
        "env": env.name,
        "kind": env.suite,
        "measured": (
            f"{env.name} {env.suite} {env.settings} (max {env.max_steps} steps), a tiny {policy.mode}-mode policy "
            f"(hidden {policy.hidden_size}) trained by {algo.steps * algo.updates_per_batch} GRPO updates of "
            f"{algo.tasks_per_step} x {algo.group_size} episodes"
        ),
        "source": f"benchmarks/results/tolerance_{name}.md (nox -s bench -- tolerance)",
        "seeds": len(config.seeds),
        "complete": complete,
        "eps_r_grid": config.eps_r_grid,
        "eps_p_grid": config.eps_p_grid,
        "initial": {k: summary["initial"][k] for k in ("mean", "std")},
        "real": {k: summary["real"][k] for k in ("mean", "std")},
        "cells": [{k: c[k] for k in keep} for c in summary["cells"]],
    }


def place_models(config: ToleranceConfig, summary: dict[str, Any], directory: Path) -> None:
    """Each learned model's verdict as `dg expmodel audit` would print it from the map in ``directory``."""
    from dg_apps.tolerance import tolerance_verdict

    for model in summary["models"].values():
        verdict = tolerance_verdict(
            config.env.name, config.env.suite, model["sim_eps_R"], model["sim_eps_P"], directory
        )
        model["verdict_cell"] = list(verdict.cell) if verdict.cell else None
        model["inside"] = verdict.inside
        model["verdict"] = verdict.text
    summary["rank_agreement"] = rank_agreement(summary["models"]) if summary["models"] else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--config", default="textworld", help="textworld, quick, or a YAML file of ToleranceConfig keys"
    )
    parser.add_argument("--quick", action="store_true", help="the smoke size (same as --config quick)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="key=value override")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="training seeds (default: the config's)")
    parser.add_argument("--output", type=Path, default=None, help="run directories (default runs/bench-tolerance-NAME)")
    parser.add_argument("--results", type=Path, default=RESULTS, help="where the table, JSON and plot go")
    parser.add_argument(
        "--budget-minutes", type=float, default=None, help="start no new stage after this long; write partial results"
    )
    parser.add_argument(
        "--part",
        choices=("all", "grid", "models"),
        default="all",
        help="run only the grid or only the learned models (two processes can share the work; a last run with "
        "'all' writes the complete results)",
    )
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: shared machines)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", module="lightning")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")

    chosen = "quick" if args.quick else args.config
    path = Path(chosen)
    name = path.stem if path.suffix in (".yaml", ".yml") else chosen
    if path.suffix not in (".yaml", ".yml"):
        path = HERE / f"{chosen}.yaml"
        if not path.exists():
            sys.exit(f"unknown --config {chosen!r}: give textworld, quick or a YAML file")
    overrides = list(args.overrides)
    if args.seeds is not None:
        overrides.append(f"seeds=[{', '.join(map(str, args.seeds))}]")
    config = load_config(ToleranceConfig, path, overrides)
    output = args.output or Path("runs") / f"bench-tolerance-{name}"
    output.mkdir(parents=True, exist_ok=True)
    root = RunDir(output, "bench tolerance", resumed=False)
    started = time.perf_counter()
    deadline = started + 60 * args.budget_minutes if args.budget_minutes is not None else None
    bench = Benchmark(config, root, progress=not args.no_progress, deadline=deadline)
    log(
        f"tolerance benchmark {name}: eps_R {config.eps_r_grid} x eps_P {config.eps_p_grid}, seeds {config.seeds}, "
        f"run directories in {output}"
    )
    results: dict[str, Any] = {"initial": [], "real": [], "cells": {}, "models": {}}
    complete = args.part == "all"
    try:
        bench.collect()
        for seed in config.seeds:
            run_references(bench, seed, results)
        # Cells in order of total error, every seed of a cell before the next: a partial run has whole cells.
        cells = sorted(
            ((r, p) for r in config.eps_r_grid for p in config.eps_p_grid), key=lambda c: (c[0] + c[1], c[0])
        )
        for eps_r, eps_p in cells if args.part != "models" else []:
            for seed in config.seeds:
                run_cell(bench, eps_r, eps_p, seed, results)
        for model in config.models if args.part != "grid" else []:
            for seed in config.seeds:
                run_model(bench, model, seed, results)
    except OutOfTime as stop:
        complete = False
        log(f"time budget spent before stage {stop}; writing the results so far (run again to continue)")
    summary = summarise(config, results)
    published = tolerance_map(config, name, summary, complete)
    map_dir = TOLERANCE_DATA if config.publish and name not in SMOKE_CONFIGS else output / "tolerance-map"
    map_dir.mkdir(parents=True, exist_ok=True)
    map_file(config.env.name, config.env.suite, map_dir).write_text(json.dumps(published, indent=1) + "\n")
    place_models(config, summary, map_dir)
    compute = bench.compute_seconds()
    table = markdown(config, name, summary, complete, compute)
    report = {
        "name": name,
        "size": "smoke" if name in SMOKE_CONFIGS else "full",
        "complete": complete,
        "config": config.model_dump(mode="json"),
        "summary": summary,
        "per_seed": results,
        "seconds": time.perf_counter() - started,
        "compute_seconds": compute,
        "machine": {"python": platform.python_version(), "machine": platform.machine(), "torch_threads": args.threads},
    }
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / f"tolerance_{name}.json").write_text(json.dumps(report, indent=2, default=str))
    (args.results / f"tolerance_{name}.md").write_text(table + "\n")
    plot(config, name, summary, args.results / f"tolerance_{name}.png")
    (output / "results.json").write_text(json.dumps(report, indent=2, default=str))
    log("\n" + table + f"\n\nResults in {args.results}/tolerance_{name}.*")


if __name__ == "__main__":
    main()
