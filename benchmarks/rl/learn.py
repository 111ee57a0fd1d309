"""Does GRPO (and PPO) in *choose* mode raise held-out success over the initial policy?

A tiny Qwen2 policy (built from a config, tokenizer trained here) plays the environment through dg-rl's
rollout engine and is trained by ``GRPOModule`` / ``PPOModule`` under a Lightning ``Trainer``. Success on
held-out tasks (never trained on) is measured before and after, for each seed. Two initial policies:
the untrained model, and a behaviour-cloning (SFT) warm start on expert demonstrations of the training
tasks, reported separately. Prints a table and writes ``benchmarks/results/rl_learn_<env>.json``.

    python benchmarks/rl/learn.py [--env scripted] [--seeds 0 1 2] [--steps 30]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import torch
from transformers import PreTrainedTokenizerFast

from dg_core import Env, EnvPool, Task
from dg_core.testing import ITEMS, ScriptedEnv, scripted_task
from dg_rl import (
    GRPOLoss,
    GRPOModule,
    LMPolicy,
    PPOLoss,
    PPOModule,
    PromptFormat,
    RolloutDataModule,
    RolloutEngine,
    behaviour_cloning,
    demonstrations,
    tiny_causal_lm,
    train_bpe_tokenizer,
)

RESULTS = Path(__file__).resolve().parents[1] / "results"


def scripted_split(count: int, offset: int, split: str) -> list[Task]:
    """Corridor tasks of 3-5 rooms; train and test worlds come from disjoint seeds."""
    rng = random.Random(offset)
    return [
        scripted_task(
            f"{split}-{i}", rooms=rng.randint(3, 5), goal_item=rng.choice(ITEMS), seed=offset + i, split=split
        )
        for i in range(count)
    ]


def textworld_split(count: int, split: str) -> list[Task]:
    """About ``count`` games of one split of a generated TextWorld coin-collector suite (built once, cached).

    The suite's splits are 80 / 10 / 10 %, so the suite is sized for the split asked.
    """
    from dg_envs.textworld import textworld_tasks

    suite = int(count / 0.8) if split == "train" else count * 10
    return textworld_tasks("coin_collector", count=suite, seed=7, settings={"level": 5}, split=split)  # type: ignore[arg-type]


def make_env_factory(name: str, max_steps: int) -> Callable[[], Env]:
    if name == "scripted":
        return lambda: ScriptedEnv(max_steps=max_steps)
    from dg_envs.textworld import TextWorldEnv

    return lambda: TextWorldEnv(max_steps=max_steps)


def expert_trajectories(factory: Callable[[], Env], tasks: list[Task]) -> list[Any]:
    env = factory()
    out = []
    for task in tasks:
        env.reset(task)
        while not env.done:
            env.step(env.expert_action())  # type: ignore[attr-defined]
        out.append(env.trajectory(policy_id="expert"))
    return out


def corpus_of(factory: Callable[[], Env], tasks: list[Task], expert: list[Any]) -> list[str]:
    env = factory()
    texts = []
    rng = random.Random(0)
    for trajectory in expert:
        for step in trajectory.steps:
            texts += [step.state.text, step.next_state.text, " | ".join(step.state.available_actions or ())]
    for task in tasks:  # random play adds the states experts never see
        state = env.reset(task)
        texts.append(task.instruction)
        while not env.done:
            state = env.step(rng.choice(state.available_actions or ("look",))).state
            texts.append(state.text)
    return texts


def evaluate(policy: LMPolicy, factory: Callable[[], Env], tasks: list[Task], episodes: int, seed: int) -> float:
    policy.generator.manual_seed(10_000 + seed)
    engine = RolloutEngine(policy, EnvPool(factory), group_size=episodes)
    return engine.collect(tasks).stats.success_rate


def train(
    algorithm: str, policy: LMPolicy, factory: Callable[[], Env], tasks: list[Task], args: argparse.Namespace, seed: int
) -> dict[str, float]:
    engine = RolloutEngine(
        policy, EnvPool(factory), group_size=args.group_size, max_episode_tokens=args.max_episode_tokens
    )
    data = RolloutDataModule(engine, tasks, tasks_per_step=args.tasks_per_step, updates_per_batch=2, seed=seed)
    module: L.LightningModule
    if algorithm == "grpo":
        module = GRPOModule(policy, loss=GRPOLoss(kl_coef=args.kl_coef), learning_rate=args.lr)
    else:
        module = PPOModule(policy, loss=PPOLoss(entropy_coef=0.01), learning_rate=args.lr)
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=args.steps * 2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    started = time.perf_counter()
    trainer.fit(module, datamodule=data)
    metrics = {key: float(value) for key, value in trainer.callback_metrics.items()}
    return {
        "train_seconds": time.perf_counter() - started,
        "last_rollout_success": metrics.get("rollout/success_rate", float("nan")),
        "last_kl": metrics.get("train/kl", float("nan")),
        "last_entropy": metrics.get("train/entropy", float("nan")),
    }


def run_one(
    args: argparse.Namespace,
    algorithm: str,
    warm_start: bool,
    seed: int,
    tokenizer: PreTrainedTokenizerFast,
    factory: Callable[[], Env],
    train_tasks: list[Task],
    test_tasks: list[Task],
    demos: list[Any],
) -> dict[str, Any]:
    torch.manual_seed(seed)
    model = tiny_causal_lm(tokenizer, hidden_size=args.hidden, num_layers=2, seed=seed)
    policy = LMPolicy(
        model, tokenizer, mode="choose", prompt_format=PromptFormat(history_turns=args.history), seed=seed
    )
    row: dict[str, Any] = {"algorithm": algorithm, "warm_start": "sft" if warm_start else "none", "seed": seed}
    row["initial"] = evaluate(policy, factory, test_tasks, args.eval_episodes, seed)
    if warm_start:
        behaviour_cloning(policy, demos, epochs=args.sft_epochs, learning_rate=1e-3, seed=seed)
        row["sft"] = evaluate(policy, factory, test_tasks, args.eval_episodes, seed)
    row.update(train(algorithm, policy, factory, train_tasks, args, seed))
    row["final"] = evaluate(policy, factory, test_tasks, args.eval_episodes, seed)
    start = row.get("sft", row["initial"])
    row["gain"] = row["final"] - start
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--env", choices=["scripted", "textworld"], default="scripted")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=12, help="rollout batches (2 updates each)")
    parser.add_argument("--algorithms", nargs="+", default=["grpo", "ppo"])
    parser.add_argument("--sft", action="store_true", help="also run the first algorithm from an SFT warm start")
    parser.add_argument("--train-tasks", type=int, default=64)
    parser.add_argument("--test-tasks", type=int, default=32)
    parser.add_argument("--tasks-per-step", type=int, default=8)
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--eval-episodes", type=int, default=2)
    parser.add_argument("--max-steps", type=int, default=8)
    parser.add_argument("--max-episode-tokens", type=int, default=256)
    parser.add_argument("--history", type=int, default=0)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--kl-coef", type=float, default=0.01)
    parser.add_argument("--sft-epochs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--output", type=Path, default=None, help="JSON report path (default results/rl_learn_<env>.json)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", module="lightning")
    factory = make_env_factory(args.env, args.max_steps)
    if args.env == "scripted":
        train_tasks = scripted_split(args.train_tasks, 0, "train")
        test_tasks = scripted_split(args.test_tasks, 100_000, "test")
    else:
        train_tasks = textworld_split(args.train_tasks, "train")
        test_tasks = textworld_split(args.test_tasks, "test")
    expert = expert_trajectories(factory, train_tasks)
    demos = demonstrations(expert)
    tokenizer = train_bpe_tokenizer(corpus_of(factory, train_tasks, expert), vocab_size=1024)
    rows = []
    for algorithm in args.algorithms:
        for warm_start in [False, True] if args.sft and algorithm == args.algorithms[0] else [False]:
            for seed in args.seeds:
                rows.append(
                    run_one(args, algorithm, warm_start, seed, tokenizer, factory, train_tasks, test_tasks, demos)
                )
    print(f"\n{'algorithm':9} {'init':5} {'seed':>4} {'initial':>8} {'sft':>6} {'final':>6} {'gain':>6} {'train s':>8}")
    for row in rows:
        sft = f"{row['sft']:.3f}" if "sft" in row else "  -  "
        print(
            f"{row['algorithm']:9} {row['warm_start']:5} {row['seed']:>4} {row['initial']:8.3f} {sft:>6} "
            f"{row['final']:6.3f} {row['gain']:+6.3f} {row['train_seconds']:8.1f}"
        )
    summary = {}
    for algorithm in args.algorithms:
        for init in ("none", "sft"):
            chosen = [r for r in rows if r["algorithm"] == algorithm and r["warm_start"] == init]
            if chosen:
                summary[f"{algorithm}/{init}"] = {
                    "initial_mean": statistics.mean(r.get("sft", r["initial"]) for r in chosen),
                    "final_mean": statistics.mean(r["final"] for r in chosen),
                    "seeds_improved": sum(r["gain"] > 0 for r in chosen),
                    "seeds": len(chosen),
                }
    print(json.dumps(summary, indent=1))
    RESULTS.mkdir(parents=True, exist_ok=True)
    report = {
        "env": args.env,
        "config": vars(args),
        "runs": rows,
        "summary": summary,
        "held_out_tasks": len(test_tasks),
        "train_tasks": len(train_tasks),
    }
    output = args.output or RESULTS / f"rl_learn_{args.env}.json"
    output.write_text(json.dumps(report, indent=1, default=str))


if __name__ == "__main__":
    main()
