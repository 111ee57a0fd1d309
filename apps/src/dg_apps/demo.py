"""``dg demo``: the whole DreamGym loop on TextWorld with tiny models built here, in stages.

1. generate the games (cached) and collect expert and random trajectories on the train split, and held-out ones
   on the validation split;
2. seed the replay buffer, annotate the transitions with reasoning, fine-tune the experience model;
3. audit it on the held-out trajectories (eps_R, eps_P);
4. train the policy with GRPO purely in synthetic experience, with the reward-variance curriculum;
5. train the same initial policy with GRPO in the real environment, same number of updates;
6. evaluate the initial, synthetic-trained and real-trained policies (and random / expert references) on the
   held-out test games over several seeds, and print the table.

Every stage is a run directory under the demo's; an interrupted demo re-run with the same ``--output``
keeps its finished stages and resumes the one it stopped in.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from dg_apps.commands import run_audit, run_collect, run_fit
from dg_apps.config import (
    AuditConfig,
    CollectConfig,
    DemoConfig,
    EvalConfig,
    FitConfig,
    PolicyFidelityConfig,
    TrainConfig,
)
from dg_apps.evaluation import run_eval
from dg_apps.models import build_policy, read_data, save_policy
from dg_apps.plots import success_bars
from dg_apps.rundir import RunDir
from dg_apps.tasks import task_panel
from dg_apps.training import run_train

__all__ = ["collect_data", "initial_policy", "run_demo", "run_stage"]


def run_stage(
    parent: RunDir,
    name: str,
    command: str,
    config: BaseModel,
    body: Callable[[Any, RunDir], dict[str, Any]],
    log: Callable[[str], None],
) -> dict[str, Any]:
    """Run ``body(config, stage)`` in the run directory ``parent/name``, or return its metrics if it finished before.

    A stage that was interrupted resumes (its directory keeps the config); a different config there is refused.
    """
    run = RunDir.start(parent.path / name, command, config)
    if run.done:
        log(f"[{name}] done earlier, kept ({run.path})")
        return run.metrics()
    log(f"[{name}] dg {command} -> {run.path}" + (" (resuming)" if run.resumed else ""))
    started = time.perf_counter()
    try:
        metrics = body(config, run)
    except BaseException:
        run.finish("failed")
        raise
    run.finish()
    log(f"[{name}] finished in {time.perf_counter() - started:.0f}s")
    return metrics


def _row(
    method: str, metrics: dict[str, Any], real: int | str, synthetic: int | str, seconds: float | str
) -> dict[str, Any]:
    return {
        "method": method,
        "mean": metrics["mean"],
        "std": metrics["std"],
        "per_seed": metrics["per_seed"],
        "real_transitions": real,
        "synthetic_transitions": synthetic,
        "train_seconds": seconds,
    }


def _table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| policy | held-out success (mean ± sd over seeds) | per seed | real transitions in training | "
        "synthetic transitions | training s |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        spread = "n/a" if row["std"] != row["std"] else f"{row['std']:.3f}"
        seeds = " / ".join(f"{value:.2f}" for value in row["per_seed"])
        seconds = row["train_seconds"] if isinstance(row["train_seconds"], str) else f"{row['train_seconds']:.0f}"
        lines.append(
            f"| {row['method']} | {row['mean']:.3f} ± {spread} | {seeds} | {row['real_transitions']} | "
            f"{row['synthetic_transitions']} | {seconds} |"
        )
    return "\n".join(lines)


def _print(message: str) -> None:
    print(message, flush=True)


def collect_data(
    config: DemoConfig, run: RunDir, *, progress: bool = True, log: Callable[[str], None] = _print
) -> tuple[list[str], str]:
    """Stages 01-03: expert (and random) trajectories on the train split, noisy-expert ones on validation.

    Returns the training data files and the held-out file (for the audit).
    """
    env = config.env

    def collect(config_: CollectConfig, stage: RunDir) -> dict[str, Any]:
        return run_collect(config_, stage, progress=progress)

    expert = run_stage(
        run, "01-collect-expert", "collect", CollectConfig(env=env, tasks="train", policy="expert"), collect, log
    )
    data = [expert["trajectories"]]
    if config.random_episodes_per_task:
        random_config = CollectConfig(
            env=env, tasks="train", policy="random", episodes_per_task=config.random_episodes_per_task, seed=1
        )
        data.append(run_stage(run, "02-collect-random", "collect", random_config, collect, log)["trajectories"])
    held_out_config = CollectConfig(env=env, tasks="validation", policy="noisy-expert", episodes_per_task=2, seed=2)
    held_out = run_stage(run, "03-collect-heldout", "collect", held_out_config, collect, log)["trajectories"]
    return data, str(held_out)


def initial_policy(config: DemoConfig, data: list[str], folder: Path, *, seed: int) -> Path:
    """The untrained policy every trained method starts from, built once into ``folder``."""
    if not (folder / "policy.json").exists():
        trajectories = read_data(data)
        policy = build_policy(
            config.policy, trajectories=trajectories, tasks=task_panel(config.env, "train"), seed=seed
        )
        save_policy(policy, config.policy, folder)
    return folder


def run_demo(
    config: DemoConfig, run: RunDir, *, progress: bool = True, log: Callable[[str], None] = _print
) -> dict[str, Any]:
    """Run every stage of the demo in ``run``; returns the results (also in ``results.json``)."""
    started = time.perf_counter()
    env = config.env
    test_tasks = task_panel(env, "test")
    log(f"TextWorld suite: {env.suite} {env.settings}, {env.games} games; held-out test panel: {len(test_tasks)} games")

    data, held_out = collect_data(config, run, progress=progress, log=log)

    fit_config = FitConfig(data=data, expmodel=config.expmodel, trainer=config.trainer, seed=config.seed)
    fit = run_stage(
        run, "04-expmodel-fit", "expmodel fit", fit_config, lambda c, r: run_fit(c, r, progress=progress), log
    )
    fit_dir = run.path / "04-expmodel-fit"
    audit_config = AuditConfig(
        expmodel=str(fit_dir),
        held_out=[held_out],
        open_loop_episodes=config.audit_open_loop,
        ablations=False,
        permutations=50,
        policy_fidelity=PolicyFidelityConfig(max_steps=env.max_steps),
    )
    audit = run_stage(
        run, "05-expmodel-audit", "expmodel audit", audit_config, lambda c, r: run_audit(c, r, progress=progress), log
    )

    initial = initial_policy(config, data, run.path / "policy-initial", seed=config.seed)
    start_policy = config.policy.model_copy(update={"model": str(initial)})
    train_common: dict[str, Any] = {
        "env": env,
        "tasks": "train",
        "data": data,
        "policy": start_policy,
        "algorithm": config.algorithm,
        "trainer": config.trainer,
        "seed": config.seed,
    }
    synthetic_config = TrainConfig(
        where="synthetic",
        expmodel=str(fit_dir),
        curriculum=config.curriculum,
        synthetic=config.synthetic,
        **train_common,
    )
    train = lambda c, r: run_train(c, r, progress=progress)  # noqa: E731
    synthetic = run_stage(run, "06-train-synthetic", "train", synthetic_config, train, log)
    real_config = TrainConfig(
        where="real", curriculum=config.curriculum.model_copy(update={"enabled": False}), **train_common
    )
    real = run_stage(run, "07-train-real", "train", real_config, train, log)

    def evaluate(name: str, policy: str) -> dict[str, Any]:
        eval_config = EvalConfig(
            env=env,
            tasks="test",
            policy=policy,
            seeds=config.eval_seeds,
            episodes_per_task=config.eval_episodes_per_task,
        )
        return run_stage(
            run, f"08-eval-{name}", "eval", eval_config, lambda c, r: run_eval(c, r, progress=progress), log
        )

    rows = [
        _row("random actions", evaluate("random", "random"), "-", "-", "-"),
        _row("initial policy", evaluate("initial", str(initial)), 0, 0, "-"),
        _row(
            "DreamGym: GRPO in synthetic env",
            evaluate("synthetic", str(run.path / "06-train-synthetic" / "policy")),
            synthetic["real_transitions"],
            synthetic["synthetic_transitions"],
            synthetic["seconds"],
        ),
        _row(
            "GRPO in real env (same updates)",
            evaluate("real", str(run.path / "07-train-real" / "policy")),
            real["real_transitions"],
            real["synthetic_transitions"],
            real["seconds"],
        ),
        _row("expert (walkthrough)", evaluate("expert", "expert"), "-", "-", "-"),
    ]
    table = _table(rows)
    results: dict[str, Any] = {
        "rows": rows,
        "expmodel": {
            "examples": fit["examples"],
            "eps_R": audit["eps_R"],
            "eps_P": audit["eps_P"],
            "reward_accuracy": audit["reward_accuracy"],
            "next_state_exact_match": audit["next_state_exact_match"],
            "parse_failure_rate": audit["parse_failure_rate"],
            "synthetic_training_parse_failure_rate": synthetic.get("expmodel", {}).get("parse_failure_rate"),
        },
        "curriculum": synthetic.get("curriculum"),
        "optimizer_steps": {"synthetic": synthetic["optimizer_steps"], "real": real["optimizer_steps"]},
        "held_out_test_games": len(test_tasks),
        "seconds": time.perf_counter() - started,
    }
    (run.path / "results.json").write_text(json.dumps(results, indent=2, default=str))
    success_bars(rows, run.path / "plots" / "success.png", title=f"TextWorld {env.suite}: held-out success")
    exp: dict[str, Any] = results["expmodel"]
    summary = "\n".join(
        [
            "# dg demo: DreamGym on TextWorld",
            "",
            f"{env.games}-game {env.suite} suite, {len(test_tasks)} held-out test games, "
            f"{len(config.eval_seeds)} seeds x {config.eval_episodes_per_task} episodes per game; "
            f"{synthetic['optimizer_steps']} GRPO updates for each trained policy.",
            "",
            table,
            "",
            f"Experience model ({exp['examples']} annotated real transitions): eps_R {exp['eps_R']:.3f}, "
            f"eps_P {exp['eps_P']:.3f}, reward accuracy {exp['reward_accuracy']:.3f}, next-state exact match "
            f"{exp['next_state_exact_match']:.3f}, parse failures {exp['parse_failure_rate']:.1%} (held-out, "
            "teacher-forced).",
            "",
            f"Total {results['seconds']:.0f} s. Stages and their own summaries are in the numbered folders; "
            "the figure is plots/success.png.",
        ]
    )
    run.write_metrics(results)
    run.write_summary(summary)
    return results
