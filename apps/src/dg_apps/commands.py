"""``dg collect``, ``dg expmodel fit``, ``dg expmodel audit`` and ``dg s2r``."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from dg_apps.config import AuditConfig, CollectConfig, FitConfig, S2RConfig, TrainConfig
from dg_apps.models import fit_expmodel, load_expmodel, load_policy, read_data
from dg_apps.rundir import RunDir
from dg_apps.tasks import env_factory, task_panel, tasks_digest
from dg_apps.training import run_train
from dg_core import ConfigError

__all__ = ["run_audit", "run_collect", "run_fit", "run_s2r", "s2r_real_phase"]

NAMED_POLICIES = ("expert", "random", "noisy-expert")


def run_collect(config: CollectConfig, run: RunDir, *, progress: bool = True) -> dict[str, Any]:
    """Play a policy on a task panel and append the episodes to ``RUN/trajectories.jsonl`` (resumable)."""
    from dg_envs import collect

    tasks = task_panel(config.env, config.tasks)
    policy: Any = config.policy
    workers = config.workers
    if config.policy not in NAMED_POLICIES:
        if workers > 1:
            raise ConfigError(
                f"workers: a model policy ({config.policy!r}) plays in this process; set workers: 0 "
                f"(worker processes play {', '.join(NAMED_POLICIES)} only)"
            )
        workers = 0  # one worker process would play the episodes one by one all the same
        try:  # any source `dg eval` takes: a policy directory, `smollm2`, a .gguf file, a model directory
            policy = load_policy(config.policy, seed=config.seed)
        except ConfigError as error:
            raise ConfigError(
                f"policy: {config.policy!r} is neither one of {', '.join(NAMED_POLICIES)} nor a model that "
                f"loads ({error})"
            ) from error
    summary = collect(
        env_factory(config.env),
        tasks,
        run.path / "trajectories.jsonl",
        episodes=len(tasks) * config.episodes_per_task,
        policy=policy,
        epsilon=config.epsilon,
        workers=workers,
        seed=config.seed,
        run=config.policy if config.policy in NAMED_POLICIES else "checkpoint",
        progress=progress,
    )
    metrics = {
        "trajectories": summary.output,
        "episodes": summary.episodes,
        "new_episodes": summary.new_episodes,
        "resumed_episodes": summary.resumed_episodes,
        "failed_episodes": summary.failed_episodes,
        "success_rate": summary.success_rate,
        "steps": summary.steps,
        "steps_per_second": summary.steps_per_second,
        "seconds": summary.seconds,
        "tasks": len(tasks),
        "tasks_digest": tasks_digest(tasks),
    }
    run.write_metrics(metrics)
    run.write_summary(
        f"# dg collect\n\n{summary.episodes} episodes of `{config.policy}` on {len(tasks)} {config.env.name} "
        f"tasks ({config.tasks}) in `{summary.output}`; success {summary.success_rate:.2f} over this call's "
        f"{summary.new_episodes} episodes, {summary.steps_per_second:.1f} steps/s; "
        f"{summary.failed_episodes} failed episodes.\n"
    )
    return metrics


def run_fit(config: FitConfig, run: RunDir, *, progress: bool = True) -> dict[str, Any]:
    """Seed the replay buffer, annotate and fine-tune the experience model."""
    started = time.perf_counter()
    trajectories = read_data(config.data)
    metrics = fit_expmodel(
        config.expmodel, trajectories, run.path, trainer=config.trainer, seed=config.seed, progress=progress
    )
    metrics["seconds"] = time.perf_counter() - started
    run.write_metrics(metrics)
    loss = metrics["fit_metrics"].get("train/loss", float("nan"))
    run.write_summary(
        f"# dg expmodel fit\n\n{metrics['examples']} annotated transitions from {metrics['trajectories']} real "
        f"trajectories; final train loss {loss:.4f}; replay buffer of {metrics['replay_transitions']} transitions in "
        f"`replay/`; model in `model/`. Audit it: `dg expmodel audit --set expmodel={run.path} "
        f"--set held_out=[FILE]`.\n" + _annotator_line(metrics.get("annotator", {}))
    )
    return metrics


def _annotator_line(annotation: dict[str, Any]) -> str:
    """The LLM annotator's counts for the fit summary (nothing for the rule annotator)."""
    if annotation.get("kind") != "llm":
        return ""
    rejects = ", ".join(f"{reason} {count}" for reason, count in annotation["rejects"].items())
    cost = annotation["seconds_per_generated"]
    cost_text = f"{cost:.2f} s per generated transition" if cost is not None else "nothing generated"
    return (
        f"\nLLM annotator `{annotation.get('model', '?')}`: {annotation['transitions']} transitions, "
        f"{annotation['generated']} generated, {annotation['cached']} from `annotations.jsonl`; "
        f"{annotation['fallbacks']} replaced by the rule annotator ({rejects}); outcome copies "
        f"{annotation['raw_copy_rate']:.0%} of raw answers, {annotation['final_copy_rate']:.0%} of final traces; "
        f"{cost_text}.\n"
    )


def run_audit(config: AuditConfig, run: RunDir, *, progress: bool = True) -> dict[str, Any]:
    """The fidelity report (eps_R, eps_P, hallucination, open loop) with its ablation table."""
    from dg_expmodel import ABLATIONS, ReplayRetriever, audit_experience_model
    from dg_replay import HashingEncoder

    if not config.expmodel:
        raise ConfigError("expmodel: give the run directory of `dg expmodel fit`")
    held_out = read_data(config.held_out)
    if not held_out:
        raise ConfigError("held_out: no held-out real trajectories to audit on")
    if config.max_episodes:
        held_out = held_out[: config.max_episodes]
    bundle = load_expmodel(config.expmodel, read_only=True)
    try:
        report = audit_experience_model(
            bundle.model,
            held_out,
            retriever=ReplayRetriever(bundle.buffer),
            encoder=HashingEncoder(dim=384),
            options=bundle.options,
            ablations=ABLATIONS if config.ablations else ABLATIONS[:1],
            open_loop_episodes=config.open_loop_episodes,
            output_dir=run.path,
            permutations=config.permutations,
            progress=progress,
        )
    finally:
        bundle.buffer.close()
    full = report.row("full")
    metrics = {
        "held_out_episodes": len(held_out),
        "eps_R": full.teacher_forced.eps_r,
        "eps_P": full.teacher_forced.eps_p,
        "reward_accuracy": full.teacher_forced.reward_accuracy,
        "next_state_exact_match": full.teacher_forced.exact_match,
        "parse_failure_rate": full.teacher_forced.parse_failure_rate,
        "table": report.markdown(),
    }
    run.write_metrics(metrics)
    run.write_summary("# dg expmodel audit\n\n" + report.markdown() + "\n\nFull report: `audit.json`, plots beside it.")
    return metrics


def s2r_real_phase(train: TrainConfig, policy: str | Path, *, real_steps: int, real_budget: int) -> TrainConfig:
    """The real phase of S2R: ``train`` in the real env, from ``policy`` (the synthetic phase's), at most
    ``real_steps`` rollout batches, collection stopped at ``real_budget`` real transitions."""
    return train.model_copy(
        update={
            "where": "real",
            "expmodel": None,
            "algorithm": train.algorithm.model_copy(update={"steps": real_steps}),
            # LoRA stays LoRA: the synthetic phase saved merged weights, the real phase trains new adapters on them.
            "policy": train.policy.model_copy(update={"model": str(policy)}),
            "real_budget": real_budget,
        }
    )


def run_s2r(config: S2RConfig, run: RunDir, *, progress: bool = True) -> dict[str, Any]:
    """Synthetic phase into ``RUN/synthetic``, then a real phase into ``RUN/real`` limited to the real budget."""
    synthetic_config = config.train.model_copy(update={"where": "synthetic"})
    synthetic_run = RunDir.start(run.path / "synthetic", "train", synthetic_config)
    synthetic = (
        synthetic_run.metrics() if synthetic_run.done else run_train(synthetic_config, synthetic_run, progress=progress)
    )
    synthetic_run.finish()
    real_config = s2r_real_phase(
        config.train, synthetic_run.path / "policy", real_steps=config.real_steps, real_budget=config.real_budget
    )
    real_run = RunDir.start(run.path / "real", "train", real_config)
    real = real_run.metrics() if real_run.done else run_train(real_config, real_run, progress=progress)
    real_run.finish()
    metrics = {
        "synthetic": {k: synthetic[k] for k in ("optimizer_steps", "synthetic_transitions", "seconds")},
        "real": {k: real[k] for k in ("optimizer_steps", "real_transitions", "seconds")},
        "real_budget": config.real_budget,
        "policy": str(real_run.path / "policy"),
    }
    run.write_metrics(metrics)
    run.write_summary(
        f"# dg s2r\n\nSynthetic phase: {synthetic['optimizer_steps']} steps on {synthetic['synthetic_transitions']} "
        f"synthetic transitions. Real phase: {real['optimizer_steps']} steps on {real['real_transitions']} real "
        f"transitions (budget {config.real_budget}). Policy: `{real_run.path / 'policy'}`.\n"
    )
    return metrics
