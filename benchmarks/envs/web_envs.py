"""Web environments on Debian Chromium: reset seconds, steps/s, and AXTree compression.

- WebArenaEnv (BrowserGym) on the demo shop served on 127.0.0.1: a scripted walk through the home,
  search, list, detail, form and confirmation pages, with BrowserGym's default pacing (Playwright
  ``slow_mo`` 1000 ms, 0.5 s pause before reading the page) and with fast pacing (0 ms, 0.1 s).
  Compression: estimated tokens of BrowserGym's flattened AXTree (``flatten_axtree_to_str``) over the
  compacted tree, per page visited.
- MiniWoBEnv: the scripted expert over its tasks; first reset of a task (starts the browser) and
  later resets separately.

Prints tables and writes ``benchmarks/results/envs_web.json``.

    python benchmarks/envs/web_envs.py [--episodes 3]
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import statistics
import time
from pathlib import Path
from typing import Any

from dg_core import State, play_episode
from dg_envs.web import EXPERT_TASKS, DemoShop, MiniWoBEnv, MiniWoBExpert, WebArenaEnv, miniwob_task, site_task

RESULTS = Path(__file__).resolve().parents[1] / "results"


def _element(state: State, role: str, name: str) -> str:
    match = re.search(rf"\[(\w+)\] {role} '{re.escape(name)}'", state.text)
    if match is None:
        raise RuntimeError(f"no {role} {name!r} on the page:\n{state.text}")
    return match.group(1)


# (role, name, action template) steps of the walk; the action targets the element found.
WALK = [
    ("textbox", "Search", 'fill("{}", "kettle")'),
    ("button", "Go", 'click("{}")'),
    ("link", "Blue Kettle", 'click("{}")'),
    ("link", "All products", 'click("{}")'),
    ("link", "Red Mug", 'click("{}")'),
    ("spinbutton", "Quantity", 'fill("{}", "3")'),
    ("link", "Contact us", 'click("{}")'),
    ("textbox", "Your name", 'fill("{}", "Bench")'),
    ("combobox", "Topic", 'select_option("{}", "Shipping")'),
    ("button", "Submit", 'click("{}")'),
]


def bench_webarena(shop: DemoShop, episodes: int, delay_s: float, slow_mo_ms: int | None) -> dict[str, Any]:
    task = site_task("bench-walk", "Walk the shop.", shop.url, {"url_contains": "/never-reached"})
    env = WebArenaEnv(max_steps=len(WALK) + 1, pre_observation_delay_s=delay_s, slow_mo_ms=slow_mo_ms)
    resets, step_times = [], []
    pages: dict[str, tuple[int, int]] = {}
    try:
        for episode in range(episodes):
            started = time.perf_counter()
            state = env.reset(task, seed=episode)
            resets.append(time.perf_counter() - started)
            pages[str(state.info["url"])] = (int(state.info["raw_axtree_tokens"]), int(state.info["axtree_tokens"]))
            for role, name, template in WALK:
                started = time.perf_counter()
                result = env.step(template.format(_element(state, role, name)))
                step_times.append(time.perf_counter() - started)
                state = result.state
                if result.info.get("invalid_action"):
                    raise RuntimeError(f"walk step refused: {result.info}")
                url = str(state.info["url"]).split("?")[0]
                pages[url] = (int(state.info["raw_axtree_tokens"]), int(state.info["axtree_tokens"]))
    finally:
        env.close()
    raw, compact = sum(r for r, _ in pages.values()), sum(c for _, c in pages.values())
    return {
        "pre_observation_delay_s": delay_s,
        "slow_mo_ms": 1000 if slow_mo_ms is None else slow_mo_ms,
        "episodes": episodes,
        "steps": len(step_times),
        "reset_s_median": statistics.median(resets),
        "steps_per_s": len(step_times) / sum(step_times),
        "step_s_median": statistics.median(step_times),
        "pages": {url.replace(shop.url, "/"): {"raw_tokens": r, "compact_tokens": c} for url, (r, c) in pages.items()},
        "compression_ratio": raw / compact,
    }


def bench_miniwob(episodes: int) -> dict[str, Any]:
    env = MiniWoBEnv(max_steps=10)
    expert = MiniWoBExpert()
    first_resets, resets, step_times, successes, total = [], [], [], 0, 0
    try:
        for task_name in EXPERT_TASKS:
            task = miniwob_task(task_name)
            for seed in range(episodes):
                started = time.perf_counter()
                env.reset(task, seed=seed)
                (first_resets if seed == 0 else resets).append(time.perf_counter() - started)
                trajectory = play_episode(env, expert, task, seed=seed)
                step_times.extend(step.duration_s for step in trajectory.steps)
                successes += trajectory.success
                total += 1
    finally:
        env.close()
    return {
        "tasks": list(EXPERT_TASKS),
        "episodes": total,
        "expert_success_rate": successes / total,
        "steps": len(step_times),
        "first_reset_s_median": statistics.median(first_resets),
        "reset_s_median": statistics.median(resets) if resets else None,
        "steps_per_s": len(step_times) / sum(step_times),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--episodes", type=int, default=3)
    args = parser.parse_args()
    with DemoShop() as shop:
        webarena = [bench_webarena(shop, args.episodes, delay, slow_mo) for delay, slow_mo in ((0.5, None), (0.1, 0))]
    miniwob = bench_miniwob(args.episodes)
    report = {"machine": platform.machine(), "webarena_browsergym": webarena, "miniwob": miniwob}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "envs_web.json").write_text(json.dumps(report, indent=2))
    print("| adapter | reset s (median) | steps/s | note |\n| --- | --- | --- | --- |")
    for row in webarena:
        pacing = f"slow_mo {row['slow_mo_ms']} ms, pause {row['pre_observation_delay_s']} s"
        note = f"demo shop, {row['steps']} steps, {pacing}"
        print(f"| WebArenaEnv (BrowserGym) | {row['reset_s_median']:.2f} | {row['steps_per_s']:.2f} | {note} |")
    note = f"expert, {miniwob['episodes']} episodes, success {miniwob['expert_success_rate']:.0%}"
    first = miniwob["first_reset_s_median"]
    print(
        f"| MiniWoBEnv | {miniwob['reset_s_median']:.2f} (first {first:.2f}) | {miniwob['steps_per_s']:.1f} | {note} |"
    )
    print("\n| page | raw AXTree tokens | compact tokens | ratio |\n| --- | --- | --- | --- |")
    for url, page in webarena[0]["pages"].items():
        raw, compact = page["raw_tokens"], page["compact_tokens"]
        print(f"| {url} | {raw} | {compact} | {raw / compact:.1f}x |")
    print(f"| all pages | | | {webarena[0]['compression_ratio']:.1f}x |")


if __name__ == "__main__":
    main()
