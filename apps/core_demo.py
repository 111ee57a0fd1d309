"""dg-core demo: collect expert and random episodes on the scripted corridor world.

Stands in for ``dg demo`` until the apps issue lands the end-to-end DreamGym loop. Everything here is
real: episodes are played through ``EnvPool``, written as JSONL and Parquet, read back and checked.

    python apps/core_demo.py --output runs/demo
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from dg_core import EnvPool, PolicyRequest, RandomPolicy, read_trajectories, write_trajectories
from dg_core.testing import ITEMS, ScriptedEnv, scripted_task


def collect(policy_name: str, tasks: list, batch: int = 16) -> list:  # type: ignore[type-arg]
    pool = EnvPool(lambda: ScriptedEnv(max_steps=20))
    random_policy = RandomPolicy(seed=0)
    trajectories = []
    try:
        for start in range(0, len(tasks), batch):
            chunk = tasks[start : start + batch]
            pool.reset(chunk, seeds=[task.seed for task in chunk])
            while not pool.all_done:
                if policy_name == "expert":
                    actions = [env.expert_action() for env in pool.envs[: len(chunk)]]
                else:
                    requests = [PolicyRequest(task=t, state=s) for t, s in zip(chunk, pool.states, strict=True)]
                    actions = [a.text for a in random_policy.act(requests)]
                pool.step([None if done else a for a, done in zip(actions, pool.dones, strict=True)])
            trajectories.extend(pool.trajectories(policy_id=policy_name))
            print(f"  {policy_name}: {len(trajectories)}/{len(tasks)} episodes", flush=True)
    finally:
        pool.close()
    return trajectories


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=Path("runs/demo"))
    parser.add_argument("--tasks", type=int, default=64)
    args = parser.parse_args()
    args.output.mkdir(parents=True, exist_ok=True)
    tasks = [
        scripted_task(f"corridor-{i}", rooms=3 + i % 6, goal_item=ITEMS[i % len(ITEMS)], seed=i, split="train")
        for i in range(args.tasks)
    ]
    rows = []
    for policy_name in ("expert", "random"):
        trajectories = collect(policy_name, tasks)
        for suffix in ("jsonl", "parquet"):
            path = args.output / f"{policy_name}.{suffix}"
            started = time.perf_counter()
            write_trajectories(path, trajectories)
            assert list(read_trajectories(path)) == trajectories, f"{path} did not round-trip"
            print(f"  wrote and re-read {path} in {time.perf_counter() - started:.2f}s", flush=True)
        rows.append(
            {
                "policy": policy_name,
                "episodes": len(trajectories),
                "success_rate": sum(t.success for t in trajectories) / len(trajectories),
                "mean_steps": statistics.mean(t.num_steps for t in trajectories),
                "invalid_actions": sum(int(t.metadata["invalid_actions"]) for t in trajectories),
            }
        )
    (args.output / "summary.json").write_text(json.dumps(rows, indent=2))
    print("\n| policy | episodes | success rate | mean steps |\n| --- | --- | --- | --- |")
    for row in rows:
        print(f"| {row['policy']} | {row['episodes']} | {row['success_rate']:.2f} | {row['mean_steps']:.1f} |")
    print(f"\nTrajectories and summary.json are in {args.output}")


if __name__ == "__main__":
    main()
