"""Text environments: reset seconds, steps/s, and abstract-state size against the raw observation.

For each adapter (TextWorld custom quests, TextWorld cooking, ALFWorld generated problems) it plays the
expert over a few games through the dg adapter (timed), then replays the same commands in the bare
engine to get the raw observations (untimed), and compares token counts per step: the abstract state
text, the abstract state with its action list, and the raw observation. Tokens are counted with a
word-piece approximation (``\\w+`` runs and single punctuation marks); no tokenizer is needed.
WebShop is not measured: its data cannot be installed here.

Prints a table and writes ``benchmarks/results/envs_text.json``.

    python benchmarks/envs/text_envs.py [--games 6]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dg_core import Env, State, Task, play_episode
from dg_envs import ExpertPolicy
from dg_envs.alfworld import AlfWorldEnv, alfworld_tasks
from dg_envs.textworld import TextWorldEnv, textworld_tasks

RESULTS = Path(__file__).resolve().parents[1] / "results"
_TOKEN = re.compile(r"\w+|[^\w\s]")


def tokens(text: str) -> int:
    """Approximate token count of ``text``."""
    return len(_TOKEN.findall(text))


def state_tokens(state: State) -> tuple[int, int]:
    """Tokens of the state text, and of the text plus its action list."""
    actions = "\n".join(state.available_actions or ())
    return tokens(state.text), tokens(state.text) + tokens(actions)


def p95(values: list[int]) -> float:
    ordered = sorted(values)
    return float(ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))])


def raw_textworld(task: Task, commands: list[str]) -> list[str]:
    """TextWorld's raw feedback for the reset and each command."""
    import textworld

    from dg_envs.textworld._games import quiet_jericho

    infos = textworld.EnvInfos(admissible_commands=True)
    with quiet_jericho():
        game = textworld.start(str(task.config["game_file"]), infos)
        state = game.reset()
    raw = [str(state["feedback"]) + "\n" + "\n".join(state["admissible_commands"])]
    for command in commands:
        state, _, _ = game.step(command)
        raw.append(str(state["feedback"]) + "\n" + "\n".join(state["admissible_commands"]))
    game.close()
    return raw


def raw_alfworld(task: Task, commands: list[str]) -> list[str]:
    """ALFWorld's raw feedback for the reset and each command."""
    import textworld
    from alfworld.agents.environment.alfred_tw_env import AlfredDemangler, AlfredInfos

    infos = textworld.EnvInfos(admissible_commands=True, feedback=True)
    game = textworld.start(str(task.config["game_file"]), infos, wrappers=[AlfredDemangler(shuffle=False), AlfredInfos])
    state = game.reset()
    raw = [str(state["feedback"]) + "\n" + "\n".join(state["admissible_commands"])]
    for command in commands:
        state, _, _ = game.step(command)
        raw.append(str(state["feedback"]) + "\n" + "\n".join(state["admissible_commands"]))
    game.close()
    return raw


def measure(name: str, env: Env, tasks: list[Task], raw: Callable[[Task, list[str]], list[str]]) -> dict[str, Any]:
    resets, step_seconds, steps, successes = [], 0.0, 0, 0
    state_only, with_actions, raw_counts = [], [], []
    for task in tasks:
        started = time.perf_counter()
        env.reset(task)
        resets.append(time.perf_counter() - started)
        trajectory = play_episode(env, ExpertPolicy(env), task)  # resets again: the game is loaded now
        step_seconds += sum(step.duration_s for step in trajectory.steps)
        steps += trajectory.num_steps
        successes += int(trajectory.success)
        states = [trajectory.steps[0].state] + [step.next_state for step in trajectory.steps]
        for state in states:
            text_only, text_and_actions = state_tokens(state)
            state_only.append(text_only)
            with_actions.append(text_and_actions)
        raw_counts += [tokens(observation) for observation in raw(task, [s.action.text for s in trajectory.steps])]
    return {
        "adapter": name,
        "episodes": len(tasks),
        "expert_success_rate": successes / len(tasks),
        "steps": steps,
        "first_reset_s_mean": statistics.mean(resets),
        "steps_per_s": steps / step_seconds if step_seconds else 0.0,
        "state_tokens_mean": statistics.mean(state_only),
        "state_tokens_p95": p95(state_only),
        "state_with_actions_tokens_mean": statistics.mean(with_actions),
        "state_with_actions_tokens_p95": p95(with_actions),
        "raw_tokens_mean": statistics.mean(raw_counts),
        "raw_tokens_p95": p95(raw_counts),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--games", type=int, default=6, help="games per adapter")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as cache:
        custom = textworld_tasks("custom", count=args.games, seed=1, fractions=(1.0, 0.0, 0.0), cache_dir=cache)
        with TextWorldEnv(cache_dir=cache) as env:
            rows.append(measure("textworld (custom, world 5, quest 5)", env, custom, raw_textworld))
        cooking = textworld_tasks(
            "cooking", count=args.games, seed=1, settings={"recipe": 2, "take": 1, "go": 6, "open": True},
            fractions=(1.0, 0.0, 0.0), cache_dir=cache,
        )  # fmt: skip
        with TextWorldEnv(cache_dir=cache) as env:
            rows.append(measure("textworld (cooking, recipe 2, 6 rooms)", env, cooking, raw_textworld))
        per_type = max(1, args.games // 6)
        alfworld = alfworld_tasks(count=per_type, seed=1000, fractions=(1.0, 0.0, 0.0), cache_dir=cache)
        with AlfWorldEnv(cache_dir=cache) as env:
            rows.append(measure("alfworld (generated, 6 task types)", env, alfworld, raw_alfworld))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "envs_text.json").write_text(json.dumps({"games_per_adapter": args.games, "rows": rows}, indent=2))
    print("| adapter | expert success | reset s | steps/s | state tokens mean / p95 | + actions mean / p95 |"
          " raw obs + actions mean / p95 |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for row in rows:
        print(
            f"| {row['adapter']} | {row['expert_success_rate']:.2f} | {row['first_reset_s_mean']:.2f} | "
            f"{row['steps_per_s']:.1f} | {row['state_tokens_mean']:.0f} / {row['state_tokens_p95']:.0f} | "
            f"{row['state_with_actions_tokens_mean']:.0f} / {row['state_with_actions_tokens_p95']:.0f} | "
            f"{row['raw_tokens_mean']:.0f} / {row['raw_tokens_p95']:.0f} |"
        )
    print("\nTokens: word-piece approximation. Steps/s: expert policy, adapter included (ALFWorld runs its")
    print("handcoded expert every step). Reset: first reset of a game (loading it), mean over games.")


if __name__ == "__main__":
    main()
