"""Synthetic vs real cost per transition, for each environment, in one run.

For every environment (TextWorld, ALFWorld, MiniWoB++, BrowserGym on the local demo shop):

1. **Real**: play episodes with the environment's expert (text envs: also a noisy expert, for
   variety), timing every reset and step. Real cost per transition = episode wall time (reset, steps
   and the expert's own work) / transitions; the step-only cost is reported beside it.
2. **Experience model**: fit the same tiny experience model (dg-apps' ``fit_expmodel``: replay
   buffer, rule-based reasoning, Lightning SFT) on 75% of those episodes, by episode.
3. **Synthetic**: for the held-out transitions, the (history, state, action) queries that a
   synthetic environment sends: top-k replay retrieval plus one experience-model generation each,
   batched at 1 and at ``--batch``. Synthetic cost per transition = that wall time / transitions.

The table holds both costs, their ratio (> 1: a synthetic transition is cheaper than a real one), and
the prompt and completion tokens per synthetic transition: they set what a larger model would cost
(tokens per transition x its seconds per token). Every environment gets the same model size, data
recipe and settings, so the differences come from the environments' states.

    python benchmarks/expmodel/cost.py [--envs textworld alfworld miniwob browsergym] [--quick]
    nox -s bench -- cost [args]

Writes ``benchmarks/results/cost_per_transition.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import re
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from dg_apps.config import ExpModelConfig
from dg_apps.models import fit_expmodel, load_expmodel
from dg_core import Action, ExperienceQuery, Policy, PolicyRequest, Trajectory, play_episode

RESULTS = Path(__file__).resolve().parents[1] / "results"
ENVS = ("textworld", "alfworld", "miniwob", "browsergym")
NAMES = {
    "textworld": "TextWorld (coin collector, level 5)",
    "alfworld": "ALFWorld (generated problems, 6 task types)",
    "miniwob": "MiniWoB++ (7 tasks with scripted experts)",
    "browsergym": "BrowserGym / WebArenaEnv (local demo shop, default pacing)",
}


@dataclass
class Episodes:
    """Real episodes and what they cost."""

    trajectories: list[Trajectory] = field(default_factory=list)
    episode_s: list[float] = field(default_factory=list)

    @property
    def transitions(self) -> int:
        return sum(t.num_steps for t in self.trajectories)

    def add(self, play: Callable[[], Trajectory]) -> None:
        started = time.perf_counter()
        trajectory = play()
        self.episode_s.append(time.perf_counter() - started)
        self.trajectories.append(trajectory)

    def summary(self) -> dict[str, Any]:
        steps = [step.duration_s for t in self.trajectories for step in t.steps]
        total = sum(self.episode_s)
        return {
            "episodes": len(self.trajectories),
            "transitions": self.transitions,
            "success_rate": statistics.fmean(t.success for t in self.trajectories),
            "s_per_transition": total / self.transitions,
            "step_s_per_transition": sum(steps) / len(steps),
            "mean_steps_per_episode": self.transitions / len(self.trajectories),
        }


# -- real environments ------------------------------------------------------------------------------------
def _expert_or_noisy(env: Any, index: int) -> Policy:
    from dg_envs import ExpertPolicy, NoisyExpertPolicy

    return ExpertPolicy(env) if index % 2 == 0 else NoisyExpertPolicy(env, epsilon=0.3, seed=index)


def _play(env: Any, episodes: int, desc: str, policy: Callable[[int], Policy], task: Callable[[int], Any]) -> Episodes:
    """Episode ``i`` (seed ``i``) plays ``task(i)`` with ``policy(i)``; the env is closed after."""
    out = Episodes()
    try:
        for index in tqdm(range(episodes), desc=desc, leave=False):
            out.add(lambda i=index: play_episode(env, policy(i), task(i), seed=i))
    finally:
        env.close()
    return out


def real_textworld(episodes: int) -> Episodes:
    from dg_envs.textworld import TextWorldEnv, textworld_tasks

    tasks = textworld_tasks("coin_collector", count=max(8, episodes // 2), seed=7, settings={"level": 5})
    env = TextWorldEnv(max_steps=10)
    return _play(env, episodes, "textworld", lambda i: _expert_or_noisy(env, i), lambda i: tasks[i % len(tasks)])


def real_alfworld(episodes: int) -> Episodes:
    from dg_envs.alfworld import TASK_TYPES, AlfWorldEnv, alfworld_tasks

    tasks = alfworld_tasks(TASK_TYPES, count=max(1, episodes // (2 * len(TASK_TYPES))), seed=7)
    env = AlfWorldEnv(max_steps=20)
    return _play(env, episodes, "alfworld", lambda i: _expert_or_noisy(env, i), lambda i: tasks[i % len(tasks)])


def real_miniwob(episodes: int) -> Episodes:
    from dg_envs.web import EXPERT_TASKS, MiniWoBEnv, MiniWoBExpert, miniwob_task

    expert = MiniWoBExpert()
    return _play(
        MiniWoBEnv(max_steps=10),
        episodes,
        "miniwob",
        lambda i: expert,
        lambda i: miniwob_task(EXPERT_TASKS[i % len(EXPERT_TASKS)], seed=i),
    )


# The demo shop's tasks, solved by following a plan of (role, accessible name, action template) per task.
SHOP_PLANS: dict[str, list[tuple[str, str, str]]] = {
    "shop-price-blue-kettle": [
        ("textbox", "Search", 'fill("{}", "kettle")'),
        ("button", "Go", 'click("{}")'),
        ("link", "Blue Kettle", 'click("{}")'),
        ("", "", 'send_msg_to_user("It costs 24.99")'),
    ],
    "shop-buy-red-mug": [
        ("textbox", "Search", 'fill("{}", "mug")'),
        ("button", "Go", 'click("{}")'),
        ("link", "Red Mug", 'click("{}")'),
        ("spinbutton", "Quantity", 'fill("{}", "2")'),
        ("button", "Buy now", 'click("{}")'),
    ],
    "shop-contact-billing": [
        ("textbox", "Your name", 'fill("{}", "Ada")'),
        ("combobox", "Topic", 'select_option("{}", "Billing")'),
        ("button", "Submit", 'click("{}")'),
    ],
    "shop-open-oak-tray": [("link", "Oak Tray", 'click("{}")')],
}


class ShopPlanPolicy:
    """Plays the demo shop's tasks by their plans, finding each element's id on the current page."""

    policy_id = "shop-plan"

    def act(self, requests: Sequence[PolicyRequest]) -> list[Action]:
        actions = []
        for request in requests:
            plan = SHOP_PLANS[request.task.id]
            role, name, template = plan[min(len(request.history), len(plan) - 1)]
            if not role:
                actions.append(Action(text=template))
                continue
            match = re.search(rf"\[(\w+)\] {role} '{re.escape(name)}'", request.state.text)
            if match is None:
                raise RuntimeError(f"{request.task.id}: no {role} {name!r} on the page:\n{request.state.text}")
            actions.append(Action(text=template.format(match.group(1))))
        return actions


def real_browsergym(episodes: int) -> Episodes:
    from dg_envs.web import DemoShop, WebArenaEnv, demo_shop_tasks

    with DemoShop() as shop:
        tasks = demo_shop_tasks(shop.url)
        env = WebArenaEnv(max_steps=8)
        return _play(env, episodes, "browsergym", lambda i: ShopPlanPolicy(), lambda i: tasks[i % len(tasks)])


REAL: dict[str, Callable[[int], Episodes]] = {
    "textworld": real_textworld,
    "alfworld": real_alfworld,
    "miniwob": real_miniwob,
    "browsergym": real_browsergym,
}
EPISODES = {"textworld": 48, "alfworld": 24, "miniwob": 28, "browsergym": 12}
MAX_EPOCHS = 40


# -- synthetic -----------------------------------------------------------------------------------------------
def split_by_episode(trajectories: list[Trajectory]) -> tuple[list[Trajectory], list[Trajectory]]:
    """Every fourth episode held out (at least one)."""
    held_out = trajectories[3::4] or trajectories[-1:]
    train = [t for t in trajectories if t not in held_out]
    return train, held_out


def queries_of(trajectories: list[Trajectory], history_window: int) -> list[ExperienceQuery]:
    """The queries a synthetic env sends for these transitions (retrieval added when they are answered)."""
    queries = []
    for trajectory in trajectories:
        for index, step in enumerate(trajectory.steps):
            history = tuple(trajectory.steps[max(0, index - history_window) : index]) if history_window else ()
            queries.append(ExperienceQuery(task=trajectory.task, history=history, state=step.state, action=step.action))
    return queries


def synthetic_cost(run: Path, queries: list[ExperienceQuery], batch: int, count: int) -> dict[str, Any]:
    """Seconds per synthetic transition: replay retrieval + one generation, ``count`` queries in batches."""
    from dg_expmodel import ReplayRetriever

    bundle = load_expmodel(run, read_only=True, batch_size=batch)
    try:
        model, k = bundle.model, bundle.options.max_retrieved
        retriever = ReplayRetriever(bundle.buffer)
        chosen = [queries[i % len(queries)] for i in range(count)]
        model.predict(chosen[:1])  # warm-up: first-call allocations
        model.stats.reset()
        started = time.perf_counter()
        for at in range(0, count, batch):
            part = chosen[at : at + batch]
            if k > 0:
                found = retriever(part, k)
                part = [q.model_copy(update={"retrieved": tuple(r)}) for q, r in zip(part, found, strict=True)]
            model.predict(part)
        seconds = time.perf_counter() - started
        stats = model.stats
        return {
            "batch": batch,
            "transitions": count,
            "s_per_transition": seconds / count,
            "prompt_tokens": stats.prompt_tokens / max(1, stats.generations),
            "completion_tokens": stats.completion_tokens / max(1, stats.generations),
            "parse_failure_rate": stats.parse_failure_rate,
            "truncated_prompts": stats.truncated_prompts,
        }
    finally:
        bundle.buffer.close()


@contextmanager
def _workdir(keep: Path | None) -> Iterator[Path]:
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        yield keep
        return
    folder = Path(tempfile.mkdtemp(prefix="dg-cost-"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def measure(
    env: str,
    episodes: int,
    expmodel: ExpModelConfig,
    *,
    batch: int,
    queries: int,
    min_examples: int,
    work: Path,
    progress: bool,
) -> dict[str, Any]:
    print(f"[{env}] playing {episodes} real episodes", flush=True)
    real = REAL[env](episodes)
    train, held_out = split_by_episode(real.trajectories)
    print(
        f"[{env}] {real.transitions} real transitions; fitting the experience model on {len(train)} episodes",
        flush=True,
    )
    # Small data sets (MiniWoB's episodes are one or two steps) get more epochs, so that every model sees about
    # the same number of examples and learns the response format before its cost is measured.
    examples = sum(t.num_steps for t in train)
    epochs = max(expmodel.epochs, min(MAX_EPOCHS, math.ceil(min_examples / examples)))
    expmodel = expmodel.model_copy(update={"epochs": epochs})
    started = time.perf_counter()
    fit = fit_expmodel(expmodel, train, work / env, trainer={"accelerator": "cpu"}, seed=0, progress=progress)
    fit_s = time.perf_counter() - started
    pending = queries_of(held_out, expmodel.history_window)
    print(f"[{env}] synthetic transitions for {len(pending)} held-out (state, action) pairs", flush=True)
    synthetic = [
        synthetic_cost(work / env, pending, 1, max(4, queries // 4)),
        synthetic_cost(work / env, pending, batch, queries),
    ]
    return {
        "env": env,
        "real": real.summary(),
        "fit": {
            "examples": fit["examples"],
            "epochs": epochs,
            "seconds": fit_s,
            "train_loss": fit["fit_metrics"].get("train/loss"),
        },
        "held_out_transitions": len(pending),
        "synthetic": synthetic,
    }


def markdown(rows: list[dict[str, Any]], expmodel: ExpModelConfig, batch: int, min_examples: int) -> str:
    lines = [
        "# Synthetic vs real cost per transition",
        "",
        f"Experience model: tiny decoder ({expmodel.hidden_size} hidden, {expmodel.num_layers} layers), "
        f"retrieval top-{expmodel.top_k}, history {expmodel.history_window}, reasoning on, "
        f"trained on 75% of the real episodes for at least {expmodel.epochs} epochs and {min_examples:,} examples "
        f"seen; CPU, {torch.get_num_threads()} threads. "
        "Synthetic cost: retrieval + generation per held-out (state, action) query. "
        "Ratio: real s / synthetic s (> 1: synthetic is cheaper).",
        "",
        f"| env | real episodes (success) | real ms / transition (step only) | synthetic ms / transition, batch 1 "
        f"| batch {batch} | real / synthetic (batch {batch}) | prompt + completion tokens | parse failures "
        "| fit examples x epochs |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        real, (one, many) = row["real"], row["synthetic"]
        lines.append(
            f"| {NAMES[row['env']]} | {real['episodes']} ({real['success_rate']:.0%}), "
            f"{real['transitions']} transitions "
            f"| {1000 * real['s_per_transition']:,.1f} ({1000 * real['step_s_per_transition']:,.1f}) "
            f"| {1000 * one['s_per_transition']:,.1f} | {1000 * many['s_per_transition']:,.1f} "
            f"| {real['s_per_transition'] / many['s_per_transition']:.2f}x "
            f"| {many['prompt_tokens']:,.0f} + {many['completion_tokens']:,.0f} | {many['parse_failure_rate']:.0%} "
            f"| {row['fit']['examples']} x {row['fit']['epochs']} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--envs", nargs="+", default=list(ENVS), choices=ENVS)
    parser.add_argument("--batch", type=int, default=16, help="synthetic batch size (besides 1)")
    parser.add_argument("--queries", type=int, default=64, help="synthetic transitions timed at --batch")
    parser.add_argument("--epochs", type=int, default=8, help="experience-model epochs")
    parser.add_argument(
        "--min-examples", type=int, default=2000, help="more epochs (up to 40) until the model has seen this many"
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run: few episodes, one epoch")
    parser.add_argument("--keep", type=Path, default=None, help="keep the experience models in this folder")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's; 1 when sharing the machine)"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    expmodel = ExpModelConfig(
        hidden_size=128,
        num_layers=2,
        num_heads=4,
        vocab_size=2048,
        max_length=2048,
        history_window=1,
        top_k=1,
        epochs=1 if args.quick else args.epochs,
        batch_size=8,
        max_new_tokens=768,
    )
    min_examples = 0 if args.quick else args.min_examples
    rows = []
    with _workdir(args.keep) as work:
        for env in args.envs:
            episodes = max(4, EPISODES[env] // 4) if args.quick else EPISODES[env]
            queries = 8 if args.quick else args.queries
            rows.append(
                measure(
                    env,
                    episodes,
                    expmodel,
                    batch=args.batch,
                    queries=queries,
                    min_examples=min_examples,
                    work=work,
                    progress=not args.no_progress,
                )
            )
    table = markdown(rows, expmodel, args.batch, min_examples)
    report = {
        "rows": rows,
        "expmodel": expmodel.model_dump(mode="json"),
        "batch": args.batch,
        "min_examples": min_examples,
        "quick": args.quick,
        "machine": {
            "python": platform.python_version(),
            "machine": platform.machine(),
            "threads": torch.get_num_threads(),
        },
    }
    RESULTS.mkdir(exist_ok=True)
    stem = "cost_per_transition-quick" if args.quick else "cost_per_transition"
    (RESULTS / f"{stem}.json").write_text(json.dumps(report, indent=2))
    (RESULTS / f"{stem}.md").write_text(table + "\n")
    print("\n" + table + f"\n\nresults in {RESULTS / stem}.{{json,md}}")


if __name__ == "__main__":
    main()
