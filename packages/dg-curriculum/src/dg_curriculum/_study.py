"""Does selection by reward variance pick more informative tasks than uniform sampling? Measure it."""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from dg_core import Task
from dg_curriculum._curriculum import Curriculum


@dataclass
class SelectionStudy:
    """Mean true reward variance of the tasks each sampler selected, after the warm-up rounds."""

    curriculum_mean_variance: float
    uniform_mean_variance: float
    rounds: int
    per_round: list[tuple[float, float]] = field(default_factory=list)
    """(curriculum, uniform) mean true variance of each round's batch, warm-up included."""

    @property
    def ratio(self) -> float:
        """Curriculum over uniform (above 1: the curriculum selects more informative tasks)."""
        return (
            self.curriculum_mean_variance / self.uniform_mean_variance if self.uniform_mean_variance else float("inf")
        )


def compare_to_uniform(
    curriculum: Curriculum,
    play_group: Callable[[Task, int], list[float]],
    true_variance: Mapping[str, float],
    *,
    rounds: int,
    batch_size: int,
    warmup_rounds: int,
    seed: int = 0,
) -> SelectionStudy:
    """Run the curriculum for ``rounds`` (playing and reporting each selected task's group) beside uniform draws.

    Args:
        curriculum: The curriculum under test (its pool is the candidate set of both samplers).
        play_group: Plays one group of rollouts of a task (with a round-dependent seed) and returns the rewards.
        true_variance: Each task's reward variance estimated from many rollouts (the yardstick).
        rounds: Selection rounds.
        batch_size: Tasks per batch.
        warmup_rounds: Rounds left out of the means (the curriculum first has to try every task).
        seed: Seed of the uniform sampler.
    """
    rng = random.Random(seed)
    ids = list(curriculum.pool.records)
    per_round: list[tuple[float, float]] = []
    for round_index in range(rounds):
        batch = curriculum.next_batch(batch_size)
        for task in {t.id: t for t in batch}.values():
            curriculum.report(task.id, play_group(task, round_index))
        uniform = rng.sample(ids, min(batch_size, len(ids)))
        per_round.append(
            (
                sum(true_variance[t.id] for t in batch) / len(batch),
                sum(true_variance[tid] for tid in uniform) / len(uniform),
            )
        )
    measured = per_round[warmup_rounds:] or per_round
    return SelectionStudy(
        curriculum_mean_variance=sum(c for c, _ in measured) / len(measured),
        uniform_mean_variance=sum(u for _, u in measured) / len(measured),
        rounds=rounds,
        per_round=per_round,
    )
