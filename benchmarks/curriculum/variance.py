"""Curriculum selection vs uniform sampling: mean true reward variance of the selected tasks.

Real rollouts of a random policy in dg-core's scripted corridor world, over a pool that mixes easy and hard
tasks. Each task's true variance comes from many rollouts; the curriculum only sees the groups it selects.

    python benchmarks/curriculum/variance.py [--seeds 0 1 2]

Prints a table and writes benchmarks/results/curriculum_variance.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from dg_core import RandomPolicy, Task, play_episode
from dg_core.testing import ITEMS, ScriptedEnv, scripted_task
from dg_curriculum import Curriculum, SelectionConfig, TaskPool, compare_to_uniform, group_reward_variance

RESULTS = Path(__file__).resolve().parents[1] / "results"


def rollouts(env: ScriptedEnv, task: Task, count: int, offset: int) -> list[float]:
    return [play_episode(env, RandomPolicy(seed=offset + i), task).return_ for i in range(count)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--tasks", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--group", type=int, default=8)
    args = parser.parse_args()
    env = ScriptedEnv(max_steps=12)
    rows = []
    for seed in args.seeds:
        tasks = [
            scripted_task(f"c{seed}-{i}", rooms=2 + i % 7, goal_item=ITEMS[i % len(ITEMS)], seed=1000 * seed + i)
            for i in range(args.tasks)
        ]
        truth = {t.id: group_reward_variance(rollouts(env, t, 64, 50_000)) for t in tasks}
        pool = TaskPool()
        pool.add_many(tasks)
        for temperature in (0.02, 0.1):
            curriculum = Curriculum(pool_copy(pool), SelectionConfig(temperature=temperature), seed=seed)
            study = compare_to_uniform(
                curriculum,
                lambda task, r: rollouts(env, task, args.group, 100 * r),
                truth,
                rounds=args.rounds,
                batch_size=args.batch,
                warmup_rounds=args.tasks // args.batch,
                seed=seed,
            )
            rows.append(
                {
                    "seed": seed,
                    "temperature": temperature,
                    "curriculum": study.curriculum_mean_variance,
                    "uniform": study.uniform_mean_variance,
                    "ratio": study.ratio,
                    "pool_mean": statistics.mean(truth.values()),
                }
            )
            print(
                f"seed {seed} T={temperature}: curriculum {study.curriculum_mean_variance:.4f} "
                f"uniform {study.uniform_mean_variance:.4f}",
                flush=True,
            )
    print("\n| temperature | selected mean variance (curriculum) | uniform | ratio |\n| --- | --- | --- | --- |")
    for temperature in (0.02, 0.1):
        chosen = [r for r in rows if r["temperature"] == temperature]
        cur = [r["curriculum"] for r in chosen]
        uni = [r["uniform"] for r in chosen]
        ratio = statistics.mean(cur) / statistics.mean(uni)
        print(
            f"| {temperature} | {statistics.mean(cur):.4f} ± {statistics.pstdev(cur):.4f} | "
            f"{statistics.mean(uni):.4f} ± {statistics.pstdev(uni):.4f} | {ratio:.2f}x |"
        )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "curriculum_variance.json").write_text(json.dumps({"settings": vars(args), "runs": rows}, indent=2))


def pool_copy(pool: TaskPool) -> TaskPool:
    fresh = TaskPool()
    fresh.add_many(record.task for record in pool.records.values())
    return fresh


if __name__ == "__main__":
    main()
