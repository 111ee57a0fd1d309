"""Offline collection: play a policy over a task split for N episodes, resumably, with worker processes.

Episode ``i`` plays ``tasks[i % len(tasks)]`` with seed ``seed + i`` and is appended to a JSONL
trajectory file as soon as it ends, tagged with the run name and its index. Calling :func:`collect`
again with the same file and run skips the episodes already there, so a killed collection resumes
where it stopped. A worker process that dies is restarted and its episode is recorded as failed.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import pickle
import queue
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dg_core import ConfigError, Env, Task, Trajectory, TrajectoryWriter, parse_trajectory, repair_jsonl
from dg_envs._collect_worker import Episode, EpisodeRunner, PolicySpec, failed_trajectory, worker_main

__all__ = ["CollectionSummary", "collect"]


@dataclass(frozen=True)
class CollectionSummary:
    """What a collection run produced."""

    output: str
    """The trajectory file."""
    episodes: int
    """Episodes of the run now in the file (resumed ones included)."""
    new_episodes: int
    """Episodes played by this call."""
    resumed_episodes: int
    """Episodes found already finished in the file and skipped."""
    failed_episodes: int
    """Episodes of this call recorded as failed because their env or worker crashed."""
    successes: int
    """Successful episodes of this call."""
    steps: int
    """Steps taken by this call."""
    seconds: float
    """Wall-clock time of this call."""
    worker_restarts: int
    """Worker processes restarted after dying."""
    unreadable_records: int
    """Lines of the existing file that could not be read (skipped; their episodes are played again)."""

    @property
    def success_rate(self) -> float:
        """Successes over episodes played by this call (0 when none)."""
        return self.successes / self.new_episodes if self.new_episodes else 0.0

    @property
    def steps_per_second(self) -> float:
        """Steps of this call per wall-clock second."""
        return self.steps / self.seconds if self.seconds > 0 else 0.0

    def __str__(self) -> str:
        return (
            f"{self.episodes} episodes in {self.output} ({self.new_episodes} new, {self.resumed_episodes} resumed, "
            f"{self.failed_episodes} failed); success rate {self.success_rate:.3f}; {self.steps} steps in "
            f"{self.seconds:.1f} s ({self.steps_per_second:.1f} steps/s)"
        )


def _finished_episodes(path: Path, run: str, plan: list[Episode]) -> tuple[set[int], int]:
    """Indices of the run's episodes already in ``path``, and how many lines could not be read."""
    if not path.exists():
        return set(), 0
    repair_jsonl(path)
    done: set[int] = set()
    unreadable = 0
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            try:
                trajectory = parse_trajectory(json.loads(raw), path=path, line=number)
            except (ValueError, UnicodeDecodeError):
                unreadable += 1
                continue
            tag = trajectory.metadata.get("collection")
            if not isinstance(tag, dict) or tag.get("run") != run or not isinstance(tag.get("episode"), int):
                continue
            index = tag["episode"]
            if 0 <= index < len(plan):
                if trajectory.task.id != plan[index].task.id:
                    raise ConfigError(
                        f"{path}:{number}: episode {index} of run {run!r} played task {trajectory.task.id!r}, but this "
                        f"collection plans {plan[index].task.id!r}; use another output file or run name"
                    )
                done.add(index)
    return done, unreadable


def collect(
    env: str | Callable[[], Env],
    tasks: Sequence[Task],
    output: str | Path,
    *,
    episodes: int | None = None,
    policy: PolicySpec = "expert",
    epsilon: float = 0.2,
    env_config: dict[str, Any] | None = None,
    workers: int = 1,
    seed: int = 0,
    run: str | None = None,
    progress: bool = True,
) -> CollectionSummary:
    """Play ``policy`` over ``tasks`` for ``episodes`` episodes and append them to ``output`` (JSONL).

    Args:
        env: Registry name (``"textworld"``), made with ``env_config``, or a picklable function making an Env.
        tasks: The task split to play; episode ``i`` plays ``tasks[i % len(tasks)]``.
        output: JSONL trajectory file, created or appended to.
        episodes: Number of episodes of the run (default: one per task).
        policy: ``"expert"``, ``"random"``, ``"noisy-expert"``, any picklable :class:`~dg_core.Policy`, or a
            picklable function from the env to a Policy.
        epsilon: Random-action probability of ``"noisy-expert"``.
        env_config: Keyword configuration for a registry name.
        workers: Worker processes; 0 plays in this process.
        seed: Episode ``i`` is reset with seed ``seed + i``.
        run: Name of the run in the file (default: the policy id); resuming needs the same name.
        progress: Show a tqdm progress bar.

    Returns:
        A :class:`CollectionSummary`; its ``str`` is a one-line report.
    """
    tasks = list(tasks)
    if not tasks:
        raise ConfigError("collect needs at least one task")
    total = len(tasks) if episodes is None else episodes
    if total < 1:
        raise ConfigError(f"episodes must be >= 1, got {total}")
    if workers < 0:
        raise ConfigError(f"workers must be >= 0, got {workers}")
    path = Path(output)
    if path.suffix != ".jsonl":
        raise ConfigError(f"collection appends to a JSONL file; {path} does not end in .jsonl")
    runner_args = (env, dict(env_config or {}), policy)
    probe = EpisodeRunner(*runner_args, epsilon=epsilon, run=run or "")
    run_name = run or probe.policy_id
    runner_kwargs = {"epsilon": epsilon, "run": run_name}
    if workers > 0:
        try:
            pickle.dumps(runner_args)
        except Exception as error:
            raise ConfigError(
                "with workers > 0 the env factory and the policy are sent to worker processes and must be picklable "
                f"(module-level functions or classes, not lambdas or local functions): {error}; or use workers=0"
            ) from error
    plan = [Episode(index=i, task=tasks[i % len(tasks)], seed=seed + i) for i in range(total)]
    done, unreadable = _finished_episodes(path, run_name, plan)
    pending = [episode for episode in plan if episode.index not in done]

    from tqdm import tqdm

    started = time.perf_counter()
    tally = _Tally()
    with (
        TrajectoryWriter(path, append=True) as writer,
        tqdm(total=total, initial=len(done), disable=not progress, desc=f"collect {run_name}", unit="ep") as bar,
    ):

        def record(trajectory: Trajectory) -> None:
            writer.write(trajectory)
            tally.add(trajectory)
            bar.update(1)

        if workers == 0:
            runner = EpisodeRunner(*runner_args, **runner_kwargs)  # type: ignore[arg-type]
            try:
                for episode in pending:
                    record(runner.play(episode))
            finally:
                runner.close()
        else:
            _run_pool(pending, workers, runner_args, runner_kwargs, probe.policy_id, record, tally)
    return CollectionSummary(
        output=str(path),
        episodes=len(done) + tally.episodes,
        new_episodes=tally.episodes,
        resumed_episodes=len(done),
        failed_episodes=tally.failed,
        successes=tally.successes,
        steps=tally.steps,
        seconds=time.perf_counter() - started,
        worker_restarts=tally.worker_restarts,
        unreadable_records=unreadable,
    )


class _Tally:
    def __init__(self) -> None:
        self.episodes = self.failed = self.successes = self.steps = self.worker_restarts = 0

    def add(self, trajectory: Trajectory) -> None:
        self.episodes += 1
        self.steps += trajectory.num_steps
        self.successes += int(trajectory.success)
        self.failed += int("error" in trajectory.metadata)


def _run_pool(
    pending: list[Episode],
    workers: int,
    runner_args: tuple[Any, ...],
    runner_kwargs: dict[str, Any],
    policy_id: str,
    record: Callable[[Trajectory], None],
    tally: _Tally,
) -> None:
    """Feed ``pending`` to worker processes, one episode in flight per worker; restart dead workers."""
    context = multiprocessing.get_context("spawn")
    results: Any = context.Queue()
    backlog = list(reversed(pending))
    slots: dict[int, tuple[Any, Any, Episode | None]] = {}

    def start(slot: int) -> None:
        jobs: Any = context.Queue()
        process = context.Process(
            target=worker_main,
            args=(slot, runner_args, runner_kwargs, jobs, results, os.getpid()),
            daemon=True,
        )
        process.start()
        slots[slot] = (process, jobs, None)

    def assign(slot: int) -> None:
        process, jobs, _ = slots[slot]
        episode = backlog.pop() if backlog else None
        jobs.put(episode)
        slots[slot] = (process, jobs, episode)

    try:
        for slot in range(min(workers, len(pending))):
            start(slot)
            assign(slot)
        while any(episode is not None for _, _, episode in slots.values()):
            try:
                slot, index, payload = results.get(timeout=0.5)
            except queue.Empty:
                pass
            else:
                episode = slots[slot][2]
                if episode is not None and episode.index == index:  # else: a late answer already written off
                    record(Trajectory.model_validate_json(payload))
                    assign(slot)
            for slot, (process, _, episode) in list(slots.items()):
                if episode is not None and not process.is_alive():
                    error = f"worker process died (exit code {process.exitcode})"
                    metadata = {"collection": {"run": runner_kwargs["run"], "episode": episode.index}}
                    record(failed_trajectory(episode, policy_id=policy_id, error=error, metadata=metadata))
                    tally.worker_restarts += 1
                    start(slot)
                    assign(slot)
    finally:
        for process, jobs, _ in slots.values():
            if process.is_alive():
                jobs.put(None)
        for process, _, _ in slots.values():
            process.join(timeout=10)
            if process.is_alive():
                process.terminate()
                process.join()
        results.close()
        results.join_thread()
