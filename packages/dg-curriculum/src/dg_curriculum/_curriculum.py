"""The curriculum the RL loop talks to: ``next_batch(n)`` and ``report(task_id, group_rewards)``."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dg_core import ConfigError, State, Task, TaskGenerationRequest, TaskGenerator
from dg_curriculum._pool import PoolFileError, TaskPool
from dg_curriculum._selection import SelectionConfig, group_reward_variance, select_batch

INITIAL_STATE_KEY = "initial_state"


@dataclass
class CurriculumStats:
    """What the curriculum looks like now (for logs and plots)."""

    pool_size: int
    size_by_generation: dict[int, int]
    played: int
    """Tasks with at least one reported group."""
    score_histogram: dict[str, int]
    """Counts of played tasks' reward variance in bins of 0.05 (labels ``"0.00-0.05"``...)."""
    last_batch_generated_share: float
    mean_selected_variance: float | None
    """Mean variance (as known at selection time) of the tasks in the last batch."""


class Curriculum:
    """Reward-variance curriculum over a :class:`TaskPool`, growing it with a :class:`~dg_core.TaskGenerator`.

    Args:
        pool: Seed tasks (and any variations already generated).
        config: Selection settings (temperature, top fraction, lambda, minimum seeds).
        generator: Writes variations in :meth:`grow`; ``None`` keeps the pool fixed.
        seed: Seed of the selection's random generator.
    """

    def __init__(
        self,
        pool: TaskPool,
        config: SelectionConfig | None = None,
        *,
        generator: TaskGenerator | None = None,
        seed: int = 0,
    ) -> None:
        self.pool = pool
        self.config = config or SelectionConfig()
        self.generator = generator
        self._rng = random.Random(seed)
        self._last_batch: list[str] = []
        self._last_scores: list[float] = []

    def score(self, task_id: str) -> float:
        """The selection score: the latest group reward variance, optimistic for unplayed tasks."""
        variance = self.pool.get(task_id).variance
        return self.config.unplayed_score if variance is None else variance

    def next_batch(self, size: int) -> list[Task]:
        """The tasks to roll out next (see :func:`select_batch` for the rules)."""
        seeds = {tid: self.score(tid) for tid in self.pool.seed_ids}
        generated = {tid: self.score(tid) for tid in self.pool.generated_ids}
        ids = select_batch(seeds, generated, size, self.config, self._rng)
        self._last_batch = ids
        self._last_scores = [self.score(tid) for tid in ids]
        return [self.pool.get(tid).task for tid in ids]

    def report(self, task_id: str, group_rewards: Sequence[float]) -> float:
        """Record the rewards of one task's group of rollouts; returns its variance."""
        if not group_rewards:
            raise ConfigError(f"report for {task_id!r} has no rewards")
        record = self.pool.get(task_id)
        rewards = [float(r) for r in group_rewards]
        record.reports += 1
        record.last_rewards = rewards
        record.variance = group_reward_variance(rewards)
        record.mean_reward = sum(rewards) / len(rewards)
        return record.variance

    def grow(self, num_parents: int, variations_per_parent: int) -> list[Task]:
        """Ask the generator for variations of the most informative tasks; returns those added to the pool."""
        if self.generator is None:
            raise ConfigError("this curriculum has no task generator")
        ranked = sorted(self.pool.records, key=lambda tid: -self.score(tid))[:num_parents]
        requests = []
        for tid in ranked:
            task = self.pool.get(tid).task
            raw = task.metadata.get(INITIAL_STATE_KEY)
            state = State.model_validate(raw) if raw is not None else None
            requests.append(
                TaskGenerationRequest(seed_task=task, initial_state=state, num_variations=variations_per_parent)
            )
        added = []
        for variations in self.generator.generate(requests):
            for task in variations:
                if self.pool.add(task):
                    added.append(task)
        return added

    def stats(self) -> CurriculumStats:
        """Pool size by generation, score histogram and the last batch's make-up."""
        histogram: dict[str, int] = {}
        for record in self.pool.records.values():
            if record.variance is None:
                continue
            low = min(int(record.variance / 0.05), 19) * 0.05
            label = f"{low:.2f}-{low + 0.05:.2f}"
            histogram[label] = histogram.get(label, 0) + 1
        generated = sum(self.pool.get(tid).task.generation > 0 for tid in self._last_batch)
        return CurriculumStats(
            pool_size=len(self.pool),
            size_by_generation=self.pool.size_by_generation(),
            played=sum(record.variance is not None for record in self.pool.records.values()),
            score_histogram=dict(sorted(histogram.items())),
            last_batch_generated_share=generated / len(self._last_batch) if self._last_batch else 0.0,
            mean_selected_variance=sum(self._last_scores) / len(self._last_scores) if self._last_scores else None,
        )

    def save(self, path: str | Path) -> None:
        """Persist the pool (tasks, lineage and reported statistics)."""
        self.pool.save(path)

    def state_dict(self) -> dict[str, Any]:
        """Everything that decides the next draws, as JSON-able data: the pool with its statistics, the
        selection's random state and the last batch. A checkpoint that stores it resumes the same sequence."""
        version, internal, gauss = self._rng.getstate()
        return {
            "pool": self.pool.to_dict(),
            "rng": [version, list(internal), gauss],
            "last_batch": list(self._last_batch),
            "last_scores": list(self._last_scores),
        }

    def load_state_dict(self, state: dict[str, Any], *, origin: str = "curriculum state") -> None:
        """Restore :meth:`state_dict`'s data (the pool keeps this curriculum's encoder settings)."""
        try:
            version, internal, gauss = state["rng"]
            rng_state = (int(version), tuple(int(x) for x in internal), gauss)
            pool = TaskPool.from_dict(
                state["pool"],
                origin=origin,
                encoder=self.pool.encoder,
                near_duplicate_threshold=self.pool.threshold,
            )
            last_batch = [str(tid) for tid in state["last_batch"]]
            last_scores = [float(x) for x in state["last_scores"]]
            self._rng.setstate(rng_state)
        except PoolFileError:
            raise
        except (KeyError, TypeError, ValueError) as error:
            raise ConfigError(f"{origin}: not a curriculum state ({error})") from error
        self.pool = pool
        self._last_batch = last_batch
        self._last_scores = last_scores
