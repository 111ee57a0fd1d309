"""``dg eval``: a policy (a trained checkpoint or a baseline) on a panel of real tasks, several seeds."""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

from dg_apps.config import EvalConfig
from dg_apps.models import load_policy
from dg_apps.rundir import RunDir
from dg_apps.tasks import env_factory, task_panel, tasks_digest
from dg_core import ConfigError, EnvPool, Task, read_trajectories, write_trajectories

__all__ = ["BASELINES", "evaluate", "run_eval"]

BASELINES = ("random", "expert")


def _baseline(name: str, config: EvalConfig, tasks: list[Task], seed: int, output: Path, progress: bool) -> float:
    from dg_envs import collect

    if output.exists():
        output.unlink()  # a partial file of an interrupted evaluation: play the seed again
    collect(
        env_factory(config.env),
        tasks,
        output,
        episodes=len(tasks) * config.episodes_per_task,
        policy=name,
        workers=0,
        seed=seed * 1_000_003,
        run=f"{name}-seed{seed}",
        progress=progress,
    )
    return _success_rate([t.success for t in read_trajectories(output)])


def _lm(policy: Any, config: EvalConfig, tasks: list[Task], seed: int, output: Path) -> float:
    from dg_rl import RolloutEngine

    policy.generator.manual_seed(10_000 + seed)
    engine = RolloutEngine(policy, EnvPool(env_factory(config.env)), group_size=config.episodes_per_task)
    try:
        rollouts = engine.collect(tasks, seed=seed * 1_000_003)
    finally:
        engine.env.close()
    write_trajectories(output, [episode.trajectory(policy.policy_id) for episode in rollouts.episodes])
    return _success_rate([episode.success for episode in rollouts.episodes])


def _success_rate(successes: list[bool]) -> float:
    """Successes / episodes through dg-rl's torchmetrics ``SuccessRate`` (exactly the Python division). ``dg eval``
    plays the whole panel in this one process, so there is nothing to reduce across ranks (were it launched on
    several, every rank would hold the same episodes): the metric does not sync."""
    from dg_rl import SuccessRate

    if not successes:
        raise ConfigError("dg eval played no episode: the task panel is empty")
    metric = SuccessRate(sync_on_compute=False)
    metric.update(successes)
    return float(metric.compute())


def evaluate(config: EvalConfig, output: Path, *, progress: bool = True) -> dict[str, Any]:
    """Success of ``config.policy`` on the panel for every seed, with mean and spread; episodes under ``output``."""
    started = time.perf_counter()
    tasks = task_panel(config.env, config.tasks)
    output.mkdir(parents=True, exist_ok=True)
    policy = None if config.policy in BASELINES else load_policy(config.policy)
    per_seed = []
    for seed in config.seeds:
        episodes_file = output / f"episodes-seed{seed}.jsonl"
        if policy is None:
            rate = _baseline(config.policy, config, tasks, seed, episodes_file, progress)
        else:
            rate = _lm(policy, config, tasks, seed, episodes_file)
        per_seed.append(rate)
        if progress:
            print(f"  eval {config.policy} seed {seed}: success {rate:.3f}", flush=True)
    return {
        "policy": config.policy,
        "tasks": config.tasks,
        "panel_size": len(tasks),
        "tasks_digest": tasks_digest(tasks),
        "episodes_per_task": config.episodes_per_task,
        "seeds": list(config.seeds),
        "per_seed": per_seed,
        "mean": statistics.mean(per_seed),
        "std": statistics.stdev(per_seed) if len(per_seed) > 1 else float("nan"),
        "seconds": time.perf_counter() - started,
    }


def run_eval(config: EvalConfig, run: RunDir, *, progress: bool = True) -> dict[str, Any]:
    """``dg eval`` in a run directory: metrics, a summary line and the episodes of every seed."""
    metrics = evaluate(config, run.path / "episodes", progress=progress)
    run.write_metrics(metrics)
    spread = "" if metrics["std"] != metrics["std"] else f" ± {metrics['std']:.3f}"
    seeds = ", ".join(f"{value:.3f}" for value in metrics["per_seed"])
    run.write_summary(
        f"# dg eval\n\n`{config.policy}` on {metrics['panel_size']} {config.env.name} tasks ({config.tasks}), "
        f"{config.episodes_per_task} episodes per task, seeds {config.seeds}:\n\n"
        f"**success {metrics['mean']:.3f}{spread}** (per seed: {seeds})\n"
    )
    return metrics
