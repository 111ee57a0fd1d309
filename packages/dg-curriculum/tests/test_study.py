from __future__ import annotations

from dg_core import RandomPolicy, Task, play_episode
from dg_core.testing import ITEMS, ScriptedEnv, scripted_task
from dg_curriculum import Curriculum, SelectionConfig, TaskPool, compare_to_uniform, group_reward_variance


def rollouts(env: ScriptedEnv, task: Task, count: int, offset: int) -> list[float]:
    return [play_episode(env, RandomPolicy(seed=offset + i), task).return_ for i in range(count)]


def test_variance_selection_beats_uniform_on_real_rollouts() -> None:
    env = ScriptedEnv(max_steps=12)
    tasks = [scripted_task(f"c{i}", rooms=2 + i % 6, goal_item=ITEMS[i % 8], seed=i) for i in range(12)]
    # The yardstick: each task's variance from 40 rollouts of the same random policy.
    truth = {t.id: group_reward_variance(rollouts(env, t, 40, 10_000)) for t in tasks}
    assert max(truth.values()) > 0.15 and min(truth.values()) < 0.05  # the pool really mixes easy and hard

    pool = TaskPool()
    pool.add_many(tasks)
    curriculum = Curriculum(pool, SelectionConfig(temperature=0.02), seed=0)
    study = compare_to_uniform(
        curriculum,
        lambda task, round_index: rollouts(env, task, 8, 100 * round_index),
        truth,
        rounds=8,
        batch_size=4,
        warmup_rounds=3,
    )
    assert study.curriculum_mean_variance > study.uniform_mean_variance
    assert study.ratio > 1.2
    assert len(study.per_round) == 8
    stats = curriculum.stats()
    assert stats.played == 12 and stats.pool_size == 12 and stats.size_by_generation == {0: 12}
    assert sum(stats.score_histogram.values()) == 12
    assert stats.last_batch_generated_share == 0.0 and stats.mean_selected_variance is not None
