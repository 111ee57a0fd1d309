"""Trajectory IO throughput: JSONL vs Parquet, write and streaming read, in one run.

Data are real episodes of the scripted corridor world (random policy). Prints a table and writes
``benchmarks/results/core_trajectory_io.json``.

    python benchmarks/core/trajectory_io.py [--episodes 3000]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from dg_core import RandomPolicy, play_episode, read_trajectories, write_trajectories
from dg_core.testing import ScriptedEnv, scripted_task

RESULTS = Path(__file__).resolve().parents[1] / "results"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--episodes", type=int, default=3000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    env = ScriptedEnv(max_steps=20)
    policy = RandomPolicy(seed=0)
    trajectories = [play_episode(env, policy, scripted_task(f"t{i}", rooms=8, seed=i)) for i in range(args.episodes)]
    steps = sum(t.num_steps for t in trajectories)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for fmt in ("jsonl", "parquet"):
            path = Path(tmp) / f"data.{fmt}"
            write_s, read_s = [], []
            for _ in range(args.repeats):
                started = time.perf_counter()
                write_trajectories(path, trajectories)
                write_s.append(time.perf_counter() - started)
                started = time.perf_counter()
                count = sum(1 for _ in read_trajectories(path))
                read_s.append(time.perf_counter() - started)
                assert count == len(trajectories)
            results[fmt] = {
                "write_steps_per_s": steps / min(write_s),
                "read_steps_per_s": steps / min(read_s),
                "bytes_per_step": path.stat().st_size / steps,
            }
    report = {"episodes": len(trajectories), "steps": steps, "formats": results}
    report["parquet_vs_jsonl"] = {key: results["parquet"][key] / results["jsonl"][key] for key in results["jsonl"]}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "core_trajectory_io.json").write_text(json.dumps(report, indent=2))
    print(f"{len(trajectories)} episodes, {steps} steps (best of {args.repeats})\n")
    print("| format | write steps/s | read steps/s | bytes/step |\n| --- | --- | --- | --- |")
    for fmt, row in results.items():
        write, read, size = row["write_steps_per_s"], row["read_steps_per_s"], row["bytes_per_step"]
        print(f"| {fmt} | {write:,.0f} | {read:,.0f} | {size:,.0f} |")
    ratios = report["parquet_vs_jsonl"]
    print(
        f"\nParquet / JSONL: write {ratios['write_steps_per_s']:.2f}x, read {ratios['read_steps_per_s']:.2f}x, "
        f"size {ratios['bytes_per_step']:.2f}x"
    )


if __name__ == "__main__":
    main()
