"""Task selection by group reward variance (the paper's Eq. 7), with temperature and lambda mixing.

A task is informative when its rollouts disagree: the variance of the rewards of its G rollouts (for 0/1
rewards, p(1-p)) is highest where the agent succeeds about half the time. Selection samples tasks by
that score, caps the share of generated tasks per batch at lambda and keeps a minimum of seed tasks.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

from dg_core import ConfigError


def group_reward_variance(rewards: Sequence[float]) -> float:
    """Population variance of one task's group rewards (0 for fewer than two rollouts)."""
    if len(rewards) < 2:
        return 0.0
    mean = sum(rewards) / len(rewards)
    return sum((reward - mean) ** 2 for reward in rewards) / len(rewards)


@dataclass(frozen=True)
class SelectionConfig:
    """How the next batch is drawn.

    Attributes:
        temperature: Softmax temperature over scores; lower concentrates on the most informative tasks
            (0 picks the highest scores deterministically).
        top_fraction: Only the best this fraction of each candidate group (seed / generated) can be drawn.
        generated_share: lambda, the largest share of a batch that generated tasks may take.
        min_seed_tasks: Seed tasks every batch keeps, whatever lambda allows.
        unplayed_score: Score of a task never played (optimistic, so new tasks get tried; 0.25 is the
            largest variance of a 0/1 reward).
    """

    temperature: float = 0.1
    top_fraction: float = 1.0
    generated_share: float = 0.5
    min_seed_tasks: int = 1
    unplayed_score: float = 0.25

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ConfigError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_fraction <= 1:
            raise ConfigError(f"top_fraction must be in (0, 1], got {self.top_fraction}")
        if not 0 <= self.generated_share <= 1:
            raise ConfigError(f"generated_share (lambda) must be in [0, 1], got {self.generated_share}")
        if self.min_seed_tasks < 0:
            raise ConfigError(f"min_seed_tasks must be >= 0, got {self.min_seed_tasks}")


def weighted_sample(
    candidates: Sequence[str], scores: Sequence[float], count: int, *, temperature: float, rng: random.Random
) -> list[str]:
    """``count`` distinct candidates drawn with probability proportional to ``exp(score / temperature)``.

    Uses Efraimidis-Spirakis keys (``log(u) / weight``), which sample without replacement in proportion
    to the weights; temperature 0 takes the top scores (ties broken at random).
    """
    if count <= 0 or not candidates:
        return []
    count = min(count, len(candidates))
    if temperature == 0:
        order = sorted(range(len(candidates)), key=lambda i: (-scores[i], rng.random()))
        return [candidates[i] for i in order[:count]]
    top = max(scores)
    keys = []
    for index, score in enumerate(scores):
        weight = math.exp((score - top) / temperature)  # shifted: never overflows, the top has weight 1
        u = rng.random() or 1e-300
        keys.append((math.log(u) / weight if weight > 0 else -math.inf, index))
    keys.sort(reverse=True)
    return [candidates[index] for _, index in keys[:count]]


def _top(candidates: list[str], scores: list[float], fraction: float) -> tuple[list[str], list[float]]:
    if fraction >= 1 or not candidates:
        return candidates, scores
    keep = max(1, math.ceil(len(candidates) * fraction))
    order = sorted(range(len(candidates)), key=lambda i: -scores[i])[:keep]
    return [candidates[i] for i in order], [scores[i] for i in order]


def select_batch(
    seed_scores: dict[str, float],
    generated_scores: dict[str, float],
    size: int,
    config: SelectionConfig,
    rng: random.Random,
) -> list[str]:
    """Task ids for the next batch: at most ``lambda * size`` generated, at least ``min_seed_tasks`` seeds.

    Tasks are distinct within a batch while the pool is large enough; a pool smaller than the batch is
    cycled (each task then appears more than once).
    """
    if size < 1:
        raise ConfigError(f"batch size must be >= 1, got {size}")
    if not seed_scores and not generated_scores:
        raise ConfigError("the task pool is empty")
    generated_cap = math.floor(config.generated_share * size)
    generated_cap = min(generated_cap, size - min(config.min_seed_tasks, size) if seed_scores else size)
    generated_ids, generated_values = _top(list(generated_scores), list(generated_scores.values()), config.top_fraction)
    chosen_generated = weighted_sample(
        generated_ids, generated_values, generated_cap, temperature=config.temperature, rng=rng
    )
    seed_ids, seed_values = _top(list(seed_scores), list(seed_scores.values()), config.top_fraction)
    chosen_seed = weighted_sample(
        seed_ids, seed_values, size - len(chosen_generated), temperature=config.temperature, rng=rng
    )
    batch = chosen_seed + chosen_generated
    # A pool smaller than the batch: repeat seed tasks (generated ones only if there are no seeds), so
    # lambda still holds.
    repeat = chosen_seed or chosen_generated
    filler = 0
    while len(batch) < size:
        batch.append(repeat[filler % len(repeat)])
        filler += 1
    rng.shuffle(batch)
    return batch
