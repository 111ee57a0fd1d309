"""``dg train``: GRPO / PPO in the synthetic environment (experience model + replay + curriculum) or the real one.

Everything the run needs to resume lives in its directory: ``policy-initial/`` (the starting weights and
tokenizer), ``checkpoints/last.ckpt`` and ``replay/`` (this run's copy of the experience model's buffer, which
grows with synthetic transitions). ``curriculum.json`` is a readable copy of the curriculum's pool.

A checkpoint is one consistent cut of the run. Batches are collected when training reaches them (dg-rl), so at
a checkpoint every counted, reported or stored transition belongs to a batch trained on; ``last.ckpt`` holds the
weights, optimiser, counters, the data module's step and random states, the curriculum (pool, statistics and
random state) and the replay buffer's last key; it is written to a temporary file and renamed. A resumed run
removes the synthetic transitions its interrupted process stored after that key, so every counter, the
curriculum and the replay buffer equal what an uninterrupted run had at that step.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

from dg_apps.config import TrainConfig
from dg_apps.models import build_policy, load_expmodel, load_policy, read_data, save_policy
from dg_apps.plots import learning_curve
from dg_apps.rundir import RunDir, follower_rank, rank_barrier
from dg_apps.tasks import env_factory, task_panel, tasks_digest
from dg_core import ConfigError, EnvPool, Task, Trajectory

__all__ = ["RunCounters", "run_train"]


class RunCounters(Callback):
    """Counts what the run consumed (real and synthetic transitions, episodes); ``spent`` says when a real budget is.

    The data module asks ``spent`` before every collection (``stop_when``), so the batch that crosses the budget
    is still trained on, ``updates_per_batch`` times, and nothing is collected after it.

    It counts the statistics the data module sums over all ranks (``on_stats``), so under DDP the counts, the
    history and the budget are the run's, the same on every rank: four ranks spend one budget, not four.

    Its state is saved in checkpoints, so a resumed run keeps counting where it stopped.
    """

    def __init__(self, *, real: bool, budget: int | None = None) -> None:
        self.real = real
        self.budget = budget
        self.real_transitions = 0
        self.synthetic_transitions = 0
        self.episodes = 0
        self.batches = 0
        self.history: list[dict[str, float]] = []

    def on_batch(self, stats: Any) -> None:
        """The data module's ``on_stats`` hook: one collected batch, its ``RolloutStats`` over all ranks."""
        if self.real:
            self.real_transitions += int(stats.turns)
        else:
            self.synthetic_transitions += int(stats.turns)
        self.episodes += int(stats.episodes)
        self.batches += 1
        self.history.append(
            {
                "batch": float(self.batches),
                "success_rate": float(stats.success_rate),
                "mean_return": float(stats.mean_return),
                "turns": float(stats.turns),
            }
        )

    @property
    def spent(self) -> bool:
        """Whether the real-transition budget is used up."""
        return self.budget is not None and self.real_transitions >= self.budget

    def state_dict(self) -> dict[str, Any]:
        return {
            "real_transitions": self.real_transitions,
            "synthetic_transitions": self.synthetic_transitions,
            "episodes": self.episodes,
            "batches": self.batches,
            "history": self.history,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.real_transitions = int(state_dict["real_transitions"])
        self.synthetic_transitions = int(state_dict["synthetic_transitions"])
        self.episodes = int(state_dict["episodes"])
        self.batches = int(state_dict["batches"])
        self.history = list(state_dict["history"])


class SaveRunState(Callback):
    """Keeps the replay buffer in the checkpoint's cut, and refreshes ``curriculum.json`` with every checkpoint.

    The checkpoint records the buffer's last key; resuming from it removes the synthetic transitions stored after
    that key (by the interrupted process, after its last checkpoint). ``saved_step`` is the optimiser step of the
    last checkpoint written in this process (``None`` before one).
    """

    def __init__(self, buffer: Any, curriculum: Any, pool_file: Path) -> None:
        self.buffer = buffer
        self.curriculum = curriculum
        self.pool_file = pool_file
        self.saved_step: int | None = None
        self.removed_on_resume = 0

    def state_dict(self) -> dict[str, Any]:
        return {"replay_last_key": self.buffer.last_key if self.buffer is not None else None}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        key = state_dict.get("replay_last_key")
        if self.buffer is not None and key is not None:
            self.removed_on_resume = self.buffer.remove_after(int(key), {"source": "synthetic"})

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        self.saved_step = trainer.global_step
        if not trainer.is_global_zero:  # rank 0 writes the run's buffer and pool; the others keep theirs private
            return
        if self.buffer is not None:
            self.buffer.save()
        if self.curriculum is not None:
            self.curriculum.save(self.pool_file)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint to a temporary file and renames it: a kill during a save leaves the previous one."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        target = Path(path)
        partial = target.with_name(target.name + ".partial")
        super().save_checkpoint(checkpoint, partial, storage_options)
        os.replace(partial, target)


class CurriculumSource:
    """A dg-curriculum :class:`Curriculum` as dg-rl's task source, growing the pool every ``grow_every`` batches.

    Its state (the curriculum's pool, statistics and random state; its own batch and generation counts) travels
    in the data module's checkpoint state.
    """

    def __init__(self, curriculum: Any, *, grow_every: int, parents: int, variations: int) -> None:
        self.curriculum = curriculum
        self.grow_every = grow_every
        self.parents = parents
        self.variations = variations
        self.batches = 0
        self.generated = 0
        self.reports = 0

    def next_batch(self, size: int) -> list[Task]:
        if self.grow_every and self.batches and self.batches % self.grow_every == 0:
            self.generated += len(self.curriculum.grow(self.parents, self.variations))
        self.batches += 1
        batch: list[Task] = self.curriculum.next_batch(size)
        return batch

    def report(self, task_id: str, group_rewards: Sequence[float]) -> float:
        self.reports += 1
        variance: float = self.curriculum.report(task_id, group_rewards)
        return variance

    def state_dict(self) -> dict[str, Any]:
        return {
            "batches": self.batches,
            "generated": self.generated,
            "reports": self.reports,
            "curriculum": self.curriculum.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.batches = int(state["batches"])
        self.generated = int(state["generated"])
        self.reports = int(state["reports"])
        self.curriculum.load_state_dict(state["curriculum"], origin="the checkpoint's curriculum")


def _initial_states(tasks: list[Task], trajectories: list[Trajectory], config: TrainConfig) -> list[Task]:
    """Seed tasks carrying their real initial state (from the data, else one real reset each)."""
    from dg_expmodel import INITIAL_STATE_KEY, with_initial_state

    first = {t.task.id: t.steps[0].state for t in trajectories if t.steps}
    out, missing = [], []
    for task in tasks:
        if INITIAL_STATE_KEY in task.metadata:
            out.append(task)
        elif task.id in first:
            out.append(with_initial_state(task, first[task.id]))
        else:
            missing.append(task)
    if missing:  # a reset reveals the initial state; no transition is taken
        env = env_factory(config.env)()
        try:
            out += [with_initial_state(task, env.reset(task, seed=task.seed)) for task in missing]
        finally:
            env.close()
    return out


def _copy_replay(expmodel: Path, target: Path) -> None:
    """This run's own copy of the experience model's replay buffer, made in a temporary folder and renamed, so a
    kill during the copy leaves no half-written buffer behind (a leftover temporary folder is replaced)."""
    from dg_expmodel import copy_replay

    if not (expmodel / "replay").is_dir():
        what = "no such directory" if not expmodel.exists() else "it holds no replay/ folder"
        raise ConfigError(f"expmodel: {expmodel} is not a `dg expmodel fit` run directory ({what})")
    copy_replay(expmodel, target)


def _curriculum(config: TrainConfig, tasks: list[Task], generator: Any) -> Any:
    """The curriculum over the seed tasks; a resumed run's checkpoint then restores its pool and state."""
    from dg_curriculum import Curriculum, SelectionConfig, TaskPool

    cur = config.curriculum
    pool = TaskPool()
    pool.add_many(tasks)
    selection = SelectionConfig(
        temperature=cur.temperature,
        top_fraction=cur.top_fraction,
        generated_share=cur.generated_share,
        min_seed_tasks=cur.min_seed_tasks,
    )
    return Curriculum(pool, selection, generator=generator, seed=config.seed)


class SimulatorState(Callback):
    """Keeps the perturbed simulator's random streams, counts and known states in the checkpoint, so a resumed run
    injects the errors an uninterrupted one would have."""

    def __init__(self, env: Any) -> None:
        self.env = env

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = self.env.state_dict()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.env.load_state_dict(state_dict)


def _expmodel_counts(model: Any, env: Any) -> dict[str, Any]:
    """``metrics.expmodel`` of a synthetic run (this process's steps): the synthetic env's steps and failure
    states (unparseable answers and refused predictions, whichever model gave them), how many steps an exact
    match answered (``expmodel.exact_first``), and the generating model's own counters (the steps it answered)."""
    from dg_expmodel import ExactFirstModel

    stats = model.stats
    exact = model.matched if isinstance(model, ExactFirstModel) else 0
    return {
        "steps": env.steps,
        "exact_matches": exact,
        "parse_failures": env.parse_failures,
        "parse_failure_rate": env.parse_failures / env.steps if env.steps else 0.0,
        "queries": stats.queries,
        "model_parse_failures": stats.parse_failures,
        "failure_reasons": dict(stats.failure_reasons),
    }


def _perturbed_env(config: TrainConfig) -> Any:
    """``synthetic.simulator: perturbed``: the real env underneath, errors injected at ``eps_r`` / ``eps_p``."""
    from dg_expmodel import PerturbedEnv

    if config.expmodel:
        raise ConfigError(
            "expmodel: not used by synthetic.simulator=perturbed (it steps the real env); leave expmodel unset"
        )
    if config.curriculum.enabled and config.curriculum.grow_every:
        raise ConfigError("curriculum.grow_every: task generation needs an LLM experience model; set it to 0")
    syn = config.synthetic
    return PerturbedEnv(
        env_factory(config.env),
        eps_r=syn.eps_r,
        eps_p=syn.eps_p,
        kinds=syn.error_kinds,
        seed=config.seed,
        max_steps=syn.max_steps or config.env.max_steps,
    )


# ``algorithm.micro_batch_tokens: null`` scores a batch in one pass for the tiny policies and in groups of this
# many tokens for anything this large. Measured with SmolLM2-135M (fp32, LoRA, CPU): a whole batch of 16 episodes
# in one pass grew past 23 GB and was killed; a group costs about 0.5 GB per 100 prompt tokens with gradients.
LARGE_POLICY_PARAMETERS = 20_000_000
LARGE_POLICY_MICRO_BATCH_TOKENS = 1024


def run_train(config: TrainConfig, run: RunDir, *, progress: bool = True) -> dict[str, Any]:
    """Train a policy as ``config`` says, in ``run``; returns (and writes) the run's metrics."""
    from dg_rl import FSDP2Strategy, GRPOLoss, GRPOModule, PPOLoss, PPOModule, RolloutDataModule, RolloutEngine

    started = time.perf_counter()
    L.seed_everything(config.seed, verbose=False)
    tasks = task_panel(config.env, config.tasks)
    data = read_data(config.data)
    initial_dir = run.path / "policy-initial"
    if run.follower:
        rank_barrier()  # rank 0 has saved the initial policy (the other ranks load it: the same weights everywhere)
        if not initial_dir.exists():
            raise ConfigError(f"{initial_dir}: rank 0 has not saved the initial policy this rank starts from")
    if initial_dir.exists():
        policy = load_policy(initial_dir, seed=config.seed, policy_id=run.path.name, sampler=config.policy)
        if config.policy.lora:  # saved merged: the adapters the checkpoint holds go back on (their values come from it)
            from dg_rl import apply_lora

            policy.model = apply_lora(policy.model)
    else:
        policy = build_policy(config.policy, trajectories=data, tasks=tasks, seed=config.seed, policy_id=run.path.name)
        partial = initial_dir.with_name(initial_dir.name + ".partial")  # a kill while saving leaves no half folder
        if partial.exists():
            shutil.rmtree(partial)
        save_policy(policy, config.policy, partial)
        os.replace(partial, initial_dir)
    if not run.follower:
        rank_barrier()
    algo = config.algorithm
    buffer: Any = None
    curriculum: Any = None
    bundle: Any = None
    synthetic = config.where == "synthetic"
    perturbed = synthetic and config.synthetic.simulator == "perturbed"
    if perturbed:
        env: Any = _perturbed_env(config)
    elif synthetic:
        if not config.expmodel:
            raise ConfigError("expmodel: training in the synthetic environment needs a `dg expmodel fit` run directory")
        from dg_expmodel import BatchedSyntheticEnv, ReplayRetriever, ReplayWriteBack

        replay_dir = run.path / "replay"
        if run.follower:  # a rank > 0 writes its synthetic transitions back into a copy of its own, never kept
            private = Path(tempfile.mkdtemp(prefix=f"dg-replay-rank{follower_rank()}-"))
            atexit.register(shutil.rmtree, private, ignore_errors=True)
            replay_dir = private / "replay"  # copied from the experience model's buffer below
        elif replay_dir.exists() and not (run.path / "checkpoints" / "last.ckpt").exists():
            shutil.rmtree(replay_dir)  # no checkpoint to resume from: the run starts over, from a fresh copy
        if not replay_dir.exists():
            _copy_replay(Path(config.expmodel), replay_dir)
        syn = config.synthetic
        bundle = load_expmodel(
            config.expmodel,
            replay=replay_dir,
            batch_size=syn.batch_size,
            max_new_tokens=syn.max_new_tokens,
            top_k=syn.top_k,
            history_window=syn.history_window,
        )
        buffer = bundle.buffer
        top_k = bundle.options.max_retrieved
        env = BatchedSyntheticEnv(
            bundle.model,
            retriever=ReplayRetriever(buffer) if top_k > 0 else None,
            top_k=top_k,
            history_window=bundle.options.history_window,
            write_back=ReplayWriteBack(buffer) if syn.write_back else None,
            env_ids=[config.env.name],
            max_steps=syn.max_steps or config.env.max_steps,
            irreversible=syn.irreversible,
            irreversible_penalty=syn.irreversible_penalty,
        )
        tasks = _initial_states(tasks, data, config)
    else:
        env = EnvPool(env_factory(config.env))
    counters = RunCounters(real=not synthetic, budget=config.real_budget)
    source = None
    if config.curriculum.enabled:
        generator = None
        if config.curriculum.grow_every and bundle is not None:
            from dg_curriculum import LLMTaskGenerator

            if bundle.backend is None:
                raise ConfigError(
                    "curriculum.grow_every: task generation needs an LLM experience model; "
                    f"{config.expmodel} is the non-parametric `nearest` one (set curriculum.grow_every=0)"
                )

            generator = LLMTaskGenerator(bundle.backend)
        curriculum = _curriculum(config, tasks, generator)
        source = CurriculumSource(
            curriculum,
            grow_every=config.curriculum.grow_every,
            parents=config.curriculum.parents,
            variations=config.curriculum.variations,
        )
    engine = RolloutEngine(policy, env, group_size=algo.group_size, max_episode_tokens=algo.max_episode_tokens)
    datamodule = RolloutDataModule(
        engine,
        tasks,
        tasks_per_step=algo.tasks_per_step,
        updates_per_batch=algo.updates_per_batch,
        seed=config.seed,
        task_source=source,
        on_stats=counters.on_batch,  # every rank's transitions: one budget for the whole run
        max_batches=algo.steps,  # no batch collected ahead that training never uses
        stop_when=lambda: counters.spent,  # nothing collected past the real budget
    )
    module: L.LightningModule
    micro_batch_tokens = algo.micro_batch_tokens
    if micro_batch_tokens is None and sum(p.numel() for p in policy.model.parameters()) >= LARGE_POLICY_PARAMETERS:
        micro_batch_tokens = LARGE_POLICY_MICRO_BATCH_TOKENS
    if algo.name == "grpo":
        module = GRPOModule(
            policy,
            loss=GRPOLoss(kl_coef=algo.kl_coef),
            learning_rate=algo.learning_rate,
            micro_batch_tokens=micro_batch_tokens,
        )
    else:
        module = PPOModule(
            policy,
            loss=PPOLoss(entropy_coef=algo.entropy_coef),
            learning_rate=algo.learning_rate,
            micro_batch_tokens=micro_batch_tokens,
        )
    checkpoints = ModelCheckpoint(
        dirpath=run.path / "checkpoints", save_last=True, save_top_k=0, every_n_train_steps=algo.checkpoint_every
    )
    options: dict[str, Any] = {"log_every_n_steps": 1, "enable_model_summary": False, **config.trainer}
    if options.get("strategy") == "fsdp":  # dg's FSDP: FSDP2 with the weights gathered for rollouts (dg-rl README)
        options["strategy"] = FSDP2Strategy()
    plugins = [AtomicCheckpointIO(), *_as_list(options.pop("plugins", None))]
    run_state = SaveRunState(buffer, curriculum, run.path / "curriculum.json")
    trainer = L.Trainer(
        max_steps=algo.steps * algo.updates_per_batch,
        logger=run.loggers(),
        callbacks=[counters, run_state, checkpoints, *([SimulatorState(env)] if perturbed else [])],
        enable_progress_bar=progress,
        plugins=plugins,
        **options,
    )
    last = run.path / "checkpoints" / "last.ckpt"
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=str(last) if last.exists() else None, weights_only=True)
        # ModelCheckpoint may have written this very step into last.ckpt already (a second copy of every weight
        # and optimiser state only costs time); otherwise the final step is saved here.
        if run_state.saved_step != trainer.global_step or Path(checkpoints.last_model_path).resolve() != last.resolve():
            trainer.save_checkpoint(last, weights_only=False)
        trained = _unsharded(policy, config, initial_dir)  # every rank takes part in gathering FSDP's shards
        if not run.follower:
            save_policy(trained, config.policy, run.path / "policy")
    except BaseException:
        # Keep what the last checkpoint needs: the buffer and pool as they were saved with it.
        if buffer is not None:
            buffer.close()
        raise
    finally:
        env.close()
    if buffer is not None and not run.follower:
        buffer.save()
    if curriculum is not None and not run.follower:
        curriculum.save(run.path / "curriculum.json")
    metrics: dict[str, Any] = {
        "where": config.where,
        "algorithm": algo.name,
        "optimizer_steps": int(trainer.global_step),
        "rollout_batches": counters.batches,
        "episodes": counters.episodes,
        "real_transitions": counters.real_transitions,
        "synthetic_transitions": counters.synthetic_transitions,
        "seed_tasks": len(tasks),
        "tasks_digest": tasks_digest(tasks),
        "seconds": time.perf_counter() - started,
        "last_metrics": {key: float(value) for key, value in trainer.callback_metrics.items()},
        "rollout_history": counters.history,
    }
    if perturbed:
        metrics["simulator"] = {"kind": "perturbed", **env.stats.as_dict()}
    if bundle is not None:
        metrics["expmodel"] = _expmodel_counts(bundle.model, env)
        metrics["replay"] = {
            "total": len(buffer),
            "by_source": buffer.stats().by_source,
            # unparseable answers' failure placeholders, counted and never stored as experience
            "placeholders_withheld": env.placeholders_withheld,
            "removed_on_resume": run_state.removed_on_resume,
        }
        # irreversible actions taken in synthetic rollouts, and what synthetic.irreversible did with them
        metrics["irreversible"] = {"mode": config.synthetic.irreversible, **env.irreversible_stats.as_dict()}
    if curriculum is not None:
        cstats = curriculum.stats()
        metrics["curriculum"] = {
            "pool_size": cstats.pool_size,
            "size_by_generation": cstats.size_by_generation,
            "score_histogram": cstats.score_histogram,
            "mean_selected_variance": cstats.mean_selected_variance,
            "generated": source.generated if source is not None else 0,
            "reports": source.reports if source is not None else 0,
        }
        generator = curriculum.generator
        if generator is not None:
            metrics["curriculum"]["generator_rejects"] = dict(generator.rejects)
    if buffer is not None:
        buffer.close()
    if run.follower:
        return metrics  # rank 0 writes the run's metrics, plots and summary
    learning_curve(run.csv_metrics(), run.path / "plots" / "learning_curve.png", title=f"dg train ({config.where})")
    run.write_metrics(metrics)
    run.write_summary(_summary(config, metrics, run))
    return metrics


def _unsharded(policy: Any, config: TrainConfig, initial_dir: Path) -> Any:
    """``policy`` as it can be saved: itself, or after FSDP a copy rebuilt from ``policy-initial`` (with LoRA's
    adapters when it has them) holding the trained weights, gathered from every rank (each rank calls this)."""
    from dg_rl import apply_lora, full_state_dict, sharded_modules

    if not sharded_modules(policy.model):
        return policy
    state = full_state_dict(policy.model)
    plain = load_policy(initial_dir, seed=config.seed, policy_id=policy.policy_id)
    if config.policy.lora:
        plain.model = apply_lora(plain.model)
    plain.model.load_state_dict(state)
    return plain


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, list | tuple) else [value]


def _summary(config: TrainConfig, metrics: dict[str, Any], run: RunDir) -> str:
    history = metrics["rollout_history"]
    first = history[0]["success_rate"] if history else float("nan")
    last = history[-1]["success_rate"] if history else float("nan")
    lines = [
        f"# dg train ({config.where}, {config.algorithm.name})",
        "",
        f"- {metrics['optimizer_steps']} optimiser steps on {metrics['rollout_batches']} rollout batches "
        f"({metrics['episodes']} episodes) in {metrics['seconds']:.0f} s",
        f"- transitions used: real {metrics['real_transitions']}, synthetic {metrics['synthetic_transitions']}",
        f"- rollout success (in the {config.where} env): first batch {first:.2f}, last batch {last:.2f}",
    ]
    if "expmodel" in metrics:
        lines.append(f"- experience-model parse failures: {metrics['expmodel']['parse_failure_rate']:.1%}")
    if "irreversible" in metrics:
        irr = metrics["irreversible"]
        lines.append(
            f"- irreversible actions in synthetic rollouts ({irr['mode']}): {irr['steps']} taken, {irr['penalized']} "
            f"penalised, {irr['ended']} ended their episode"
        )
    if "simulator" in metrics:
        sim = metrics["simulator"]
        rates = []
        for name, key, count in (
            ("eps_R", "reward_rate", "reward_eligible"),
            ("eps_P", "transition_rate", "transition_eligible"),
        ):
            if sim[key] is not None:
                rates.append(f"{name} {sim[key]:.3f} of {sim[count]}")
        lines.append(
            f"- perturbed simulator (real env underneath): eps_R {config.synthetic.eps_r}, "
            f"eps_P {config.synthetic.eps_p} requested; measured {', '.join(rates) or 'nothing eligible'} "
            "eligible steps"
        )
    if "curriculum" in metrics:
        cur = metrics["curriculum"]
        lines.append(f"- curriculum pool {cur['pool_size']} tasks, {cur['generated']} generated")
    lines += [
        f"- policy: `{run.path / 'policy'}`; learning curve: `plots/learning_curve.png`",
        f"- evaluate it: `dg eval --set policy={run.path / 'policy'}`",
    ]
    return "\n".join(lines)
