"""``dg collect``, ``dg expmodel fit``, ``dg expmodel audit`` and ``dg s2r``."""

from __future__ import annotations

import functools
import json
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dg_apps.config import (
    AuditConfig,
    CollectConfig,
    EnvConfig,
    FitConfig,
    PolicyFidelityConfig,
    S2RConfig,
    TrainConfig,
)
from dg_apps.models import fit_expmodel, load_expmodel, load_policy, read_data
from dg_apps.rundir import RunDir
from dg_apps.tasks import env_factory, task_panel, tasks_digest
from dg_apps.tolerance import tolerance_verdict
from dg_apps.training import run_train
from dg_core import ConfigError, TrajectoryFormatError, parse_trajectory

__all__ = ["BadLine", "run_audit", "run_collect", "run_fit", "run_s2r", "s2r_real_phase", "set_aside_bad_lines"]

NAMED_POLICIES = ("expert", "random", "noisy-expert")
TORN_SUFFIX = ".torn"


@dataclass(frozen=True)
class BadLine:
    """A line of a trajectory file that is not a whole trajectory (moved aside by :func:`set_aside_bad_lines`)."""

    line: int
    """1-based line number in the file as it was."""
    reason: str
    """Why it was not kept."""


def _line_problem(raw: bytes, path: Path, number: int) -> str | None:
    """Why ``raw`` (one line, without its end of line) is not a readable trajectory; ``None`` when it is."""
    try:
        record = json.loads(raw)
    except json.JSONDecodeError as error:
        return f"invalid JSON ({error.msg} at column {error.colno})"
    except UnicodeDecodeError as error:
        return f"not UTF-8 ({error.reason})"
    try:
        parse_trajectory(record, path=path, line=number)
    except TrajectoryFormatError as error:
        field = f" (field {error.field!r})" if error.field else ""
        return f"not a trajectory{field}: {error.reason}"
    return None


def set_aside_bad_lines(path: Path) -> list[BadLine]:
    """Keep the whole trajectories of the JSONL file ``path``; move every other line into ``<path>.torn``.

    A line is kept when it is valid JSON and a valid trajectory. A last line without its end of line (the writer
    was killed mid-write) is kept, completed, when it still parses as a whole trajectory, and moved aside
    otherwise. Bad lines are appended, byte for byte, to ``<path>.torn`` (synced) before ``path`` is rewritten
    atomically without them (and without blank lines), so nothing is ever lost. Returns the lines moved.
    """
    if not path.exists():
        return []
    bad: list[BadLine] = []
    unterminated_tail_kept = False
    with path.open("rb") as handle:
        for number, chunk in enumerate(handle, start=1):
            terminated = chunk.endswith(b"\n")
            raw = chunk.rstrip(b"\r\n")
            if not raw.strip():
                continue
            problem = _line_problem(raw, path, number)
            if not terminated:
                if problem is None:
                    unterminated_tail_kept = True
                    continue
                problem = f"torn: the last line stops after {len(raw)} bytes without an end of line ({problem})"
            if problem is not None:
                bad.append(BadLine(number, problem))
    if not bad and not unterminated_tail_kept:
        return []
    dropped = {item.line for item in bad}
    torn = path.with_name(path.name + TORN_SUFFIX)
    fresh = path.with_name(path.name + ".rewrite")
    aside = bytearray()
    with path.open("rb") as source, fresh.open("wb") as kept:
        for number, chunk in enumerate(source, start=1):
            raw = chunk.rstrip(b"\r\n")
            if number in dropped:
                aside += raw + b"\n"
            elif raw.strip():
                kept.write(raw + b"\n")
        kept.flush()
        os.fsync(kept.fileno())
    if aside:
        with torn.open("ab") as side:
            side.write(aside)
            side.flush()
            os.fsync(side.fileno())
    os.replace(fresh, path)  # the bad lines are safe in the side file before they leave the trajectory file
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
    return bad


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
    output = run.path / "trajectories.jsonl"
    bad_lines = set_aside_bad_lines(output)
    torn = output.with_name(output.name + TORN_SUFFIX)
    for item in bad_lines:
        print(f"dg collect: {output}:{item.line}: {item.reason}; moved to {torn}", file=sys.stderr)
    if bad_lines:
        print(
            f"dg collect: {len(bad_lines)} unreadable line(s) of {output} moved to {torn}; their episodes are "
            "collected again",
            file=sys.stderr,
            flush=True,
        )
    summary = collect(
        env_factory(config.env),
        tasks,
        output,
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
        "dropped_lines": len(bad_lines),
        "dropped": [{"line": item.line, "reason": item.reason} for item in bad_lines],
        "torn_file": str(torn) if torn.exists() else None,
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
        f"{summary.failed_episodes} failed episodes.\n" + _dropped_line(bad_lines, torn)
    )
    return metrics


def _dropped_line(bad_lines: list[BadLine], torn: Path) -> str:
    """The collect summary's line about unreadable lines set aside (nothing when there were none)."""
    if not bad_lines:
        return ""
    where = ", ".join(str(item.line) for item in bad_lines)
    return (
        f"\n{len(bad_lines)} unreadable line(s) of the existing file (line {where}: torn or not a trajectory) were "
        f"moved to `{torn}` and their episodes collected again.\n"
    )


def run_fit(config: FitConfig, run: RunDir, *, progress: bool = True) -> dict[str, Any]:
    """Seed the replay buffer, annotate and fine-tune the experience model."""
    started = time.perf_counter()
    trajectories = read_data(config.data)
    metrics = fit_expmodel(
        config.expmodel, trajectories, run.path, trainer=config.trainer, seed=config.seed, progress=progress
    )
    metrics["seconds"] = time.perf_counter() - started
    run.write_metrics(metrics)
    if metrics.get("kind") == "nearest":
        run.write_summary(
            f"# dg expmodel fit\n\nNon-parametric experience model (`nearest`): nothing trained; replay buffer of "
            f"{metrics['replay_transitions']} transitions from {metrics['trajectories']} real trajectories in "
            f"`replay/`. Audit it: `dg expmodel audit --set expmodel={run.path} --set held_out=[FILE]`.\n"
        )
        return metrics
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
    held_out = read_data(config.held_out, key="held_out")
    if not held_out:
        raise ConfigError("held_out: no held-out real trajectories to audit on")
    if config.max_episodes:
        held_out = held_out[: config.max_episodes]
    fidelity = policy_fidelity_setup(config.policy_fidelity, held_out)
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
            policy_fidelity=fidelity,
        )
    finally:
        bundle.buffer.close()
    full = report.row("full")
    scale = full.teacher_forced.simulator
    env_id, kind = Counter((t.task.env_id, t.task.metadata.get("kind")) for t in held_out).most_common(1)[0][0]
    verdict = tolerance_verdict(env_id, kind, scale.eps_r, scale.eps_p)
    metrics = {
        "held_out_episodes": len(held_out),
        "eps_R": full.teacher_forced.eps_r,
        "eps_P": full.teacher_forced.eps_p,
        "reward_accuracy": full.teacher_forced.reward_accuracy,
        "success": full.teacher_forced.success.as_dict(),
        "done": full.teacher_forced.done.as_dict(),
        "outcome_head": bundle.settings.get("outcome_head"),
        "next_state_exact_match": full.teacher_forced.exact_match,
        "parse_failure_rate": full.teacher_forced.parse_failure_rate,
        "irreversible_tags": full.teacher_forced.irreversible.as_dict(),
        "next_state_fields": full.teacher_forced.fields.as_dict(),
        "simulator_scale": scale.as_dict(),
        "tolerance": verdict.as_dict(),
        "table": report.markdown(),
        "policy_fidelity": report.policy_fidelity.as_dict() if report.policy_fidelity else None,
    }
    run.write_metrics(metrics)
    run.write_summary(
        "# dg expmodel audit\n\n"
        + report.markdown()
        + f"\n\n{verdict.text}\n\nFull report: `audit.json`, plots beside it."
    )
    return metrics


def _named_policy(name: str, epsilon: float, env: Any, seed: int) -> Any:
    from dg_envs import named_policy

    return named_policy(name, env, seed=seed, epsilon=epsilon)


def _reseeded_policy(policy: Any, env: Any, seed: int) -> Any:
    """A trained policy for one episode: its sampling generator (dg-rl's ``LMPolicy.generator``) reseeded with the
    episode seed, so that its draws pair across the two envs as the named policies' do."""
    generator = getattr(policy, "generator", None)
    if generator is not None:
        generator.manual_seed(seed)
    return policy


def policy_fidelity_setup(config: PolicyFidelityConfig, held_out: list[Any]) -> Any:
    """What the audit needs for policy-level fidelity (``None`` when ``episodes`` is 0): the real env of the held-out
    tasks, and each policy by name (a trained one is loaded here, before anything long starts)."""
    from dg_envs import NAMED_POLICIES
    from dg_expmodel import PolicyFidelitySetup

    if config.episodes == 0:
        return None
    env_ids = sorted({trajectory.task.env_id for trajectory in held_out})
    if len(env_ids) != 1:
        raise ConfigError(f"held_out: policy fidelity plays one real env, but the held-out tasks are for {env_ids}")
    makers: dict[str, Any] = {}
    for name in config.policies:
        if name in NAMED_POLICIES:
            makers[name] = functools.partial(_named_policy, name, config.epsilon)
            continue
        try:
            makers[name] = functools.partial(_reseeded_policy, load_policy(name, seed=config.seed))
        except ConfigError as error:
            raise ConfigError(
                f"policy_fidelity.policies: {name!r} is neither one of {', '.join(NAMED_POLICIES)} nor a trained "
                f"policy that loads ({error})"
            ) from error
    environment = EnvConfig(name=env_ids[0], max_steps=config.max_steps, options=config.env_options)
    factory = env_factory(environment)
    expert_played = [name for name in makers if name in ("expert", "noisy-expert")]
    if expert_played and not _has_expert(factory):
        # Found before the audit starts: the expert policies would fail at their first episode, after everything
        # teacher-forced had run.
        if "policies" in config.model_fields_set:
            raise ConfigError(
                f"policy_fidelity.policies: {', '.join(expert_played)} need the env's expert, and {env_ids[0]!r} "
                "has none (no expert_action()); play random or a trained policy there"
            )
        # The default list always holds random: something is left to play.
        makers = {name: maker for name, maker in makers.items() if name not in expert_played}
        print(
            f"policy fidelity: {env_ids[0]!r} has no expert; playing {', '.join(makers)} only (the default list "
            "without expert and noisy-expert)",
            file=sys.stderr,
        )
    return PolicyFidelitySetup(real_env=factory, policies=makers, episodes=config.episodes, seed=config.seed)


def _has_expert(factory: Any) -> bool:
    """Whether the env ``factory`` builds can be played by dg-envs' expert (one env built and closed)."""
    from dg_envs import SupportsExpert

    env = factory()
    try:
        return isinstance(env, SupportsExpert)
    finally:
        env.close()


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
