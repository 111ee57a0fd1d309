"""End to end on TextWorld: collect, annotate, seed the replay buffer, train a tiny experience model on CPU,
then measure it on held-out games — next-state exact match and reward accuracy, and the full fidelity audit
(eps_R, eps_P, hallucination, open-loop typology) with and without retrieval, reasoning and history.

    python benchmarks/expmodel/textworld_fidelity.py [--quick] [--output DIR]

Writes DIR/summary.json, DIR/audit.md, DIR/audit.json and plots (default benchmarks/results/textworld_fidelity,
or .../textworld_fidelity_quick with --quick).
"""

from __future__ import annotations

import argparse
import functools
import json
import time
from pathlib import Path

from dg_core import RandomPolicy, Trajectory, play_episode
from dg_core.testing import ScriptedPolicy
from dg_envs import NoisyExpertPolicy
from dg_envs.textworld import TextWorldEnv, textworld_tasks
from dg_expmodel import (
    FitResult,
    LLMExperienceModel,
    PromptOptions,
    ReplayRetriever,
    RuleBasedAnnotator,
    Sampling,
    TransformersBackend,
    audit_experience_model,
    examples_from_trajectories,
    fit_experience_model,
    tiny_causal_lm,
    train_tokenizer,
)
from dg_replay import HashingEncoder, ReplayBuffer

RESULTS = Path(__file__).resolve().parents[1] / "results"


SUITE_SETTINGS = {"world_size": 3, "nb_objects": 4, "quest_length": 2}
"""The custom TextWorld games of this benchmark (3 rooms, 4 objects, quests of 2 steps)."""
MAX_STEPS = 20
"""Step limit of every episode collected or played here."""


def split_suite(count: int) -> tuple[list, list]:  # type: ignore[type-arg]
    """The suite's train tasks and its held-out (validation and test) tasks, never trained on."""
    suite = textworld_tasks("custom", count=count, seed=7, settings=SUITE_SETTINGS)
    train_tasks = [t for t in suite if t.split == "train"]
    test_tasks = [t for t in suite if t.split in ("validation", "test")]
    if not test_tasks:
        raise SystemExit("the suite has no test games; raise the count")
    return train_tasks, test_tasks


def collect(
    tasks: list,  # type: ignore[type-arg]
    episodes_per_task: int,
    seed: int,
    *,
    noisy_per_task: int = 0,
    epsilon: float = 0.2,
) -> list[Trajectory]:
    """Per task: one expert episode, ``episodes_per_task - 1`` random ones and ``noisy_per_task`` noisy-expert ones
    (the expert, with probability ``epsilon`` a random available action), each with its own seed."""
    env = TextWorldEnv(max_steps=MAX_STEPS)
    expert = ScriptedPolicy(lambda _request: env.expert_action(), policy_id="expert")
    out = []
    for index, task in enumerate(tasks):
        out.append(play_episode(env, expert, task))
        for repeat in range(episodes_per_task - 1):
            out.append(play_episode(env, RandomPolicy(seed=seed + 1000 * index + repeat), task))
        for repeat in range(noisy_per_task):
            noisy = NoisyExpertPolicy(env, epsilon=epsilon, seed=seed + 1000 * index + 500 + repeat)
            out.append(play_episode(env, noisy, task))
    env.close()
    return out


def training_examples(train: list[Trajectory], options: PromptOptions) -> tuple[ReplayBuffer, list]:  # type: ignore[type-arg]
    """The replay buffer of ``train`` (real transitions, hashing embeddings) and the SFT examples built from it
    (rule-based reasoning, each prompt grounded in retrieved transitions other than its own)."""
    buffer = ReplayBuffer.create(encoder=HashingEncoder(dim=384))
    buffer.add_trajectories(train)
    retrieve = functools.partial(ReplayRetriever(buffer, exclude_self=True).for_step, k=options.max_retrieved)
    examples = examples_from_trajectories(train, RuleBasedAnnotator(), options=options, retrieve=retrieve)
    return buffer, examples


def fit_tiny(
    examples: list,  # type: ignore[type-arg]
    output_dir: Path,
    *,
    hidden_size: int = 128,
    num_layers: int = 4,
    num_heads: int = 4,
    epochs: int = 12,
) -> tuple[FitResult, int]:
    """Train a word-level tokenizer and a tiny causal LM from scratch on ``examples``; the fit and the model's
    parameter count."""
    tokenizer = train_tokenizer([e.prompt + e.response for e in examples], vocab_size=2048)
    model = tiny_causal_lm(
        tokenizer, hidden_size=hidden_size, num_layers=num_layers, num_heads=num_heads, max_positions=2048
    )
    parameters = sum(p.numel() for p in model.parameters())
    fit = fit_experience_model(
        model,
        tokenizer,
        examples,
        output_dir=output_dir,
        max_epochs=epochs,
        batch_size=8,
        learning_rate=2e-3,
        max_length=2048,
        progress=False,
        resume=False,
    )
    return fit, parameters


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="a smoke run: small suite, 2 epochs")
    parser.add_argument("--games", type=int, default=None, help="games in the suite (all splits)")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--layers", type=int, default=None)
    parser.add_argument("--open-loop", type=int, default=None, help="held-out episodes replayed open loop")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    output = args.output or RESULTS / ("textworld_fidelity_quick" if args.quick else "textworld_fidelity")
    output.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    count = args.games or (16 if args.quick else 48)
    train_tasks, test_tasks = split_suite(count)
    train = collect(train_tasks, 2 if args.quick else 3, seed=1)
    held_out = collect(test_tasks, 2, seed=2)
    print(f"collected {len(train)} train / {len(held_out)} held-out episodes ({time.perf_counter() - started:.0f}s)")

    options = PromptOptions(history_window=2, max_retrieved=2)
    buffer, examples = training_examples(train, options)
    fit, _ = fit_tiny(
        examples,
        output / "expmodel",
        num_layers=args.layers or (2 if args.quick else 4),
        epochs=args.epochs or (2 if args.quick else 12),
    )
    print(f"trained on {fit.examples} examples: {fit.metrics} ({time.perf_counter() - started:.0f}s)")

    backend = TransformersBackend.from_pretrained(fit.model_dir, batch_size=16)
    sampling = Sampling(max_new_tokens=160 if args.quick else 320)
    experience_model = LLMExperienceModel(backend, options=options, sampling=sampling, retries=0 if args.quick else 1)
    audit_episodes = held_out[: 6 if args.quick else len(held_out)]
    report = audit_experience_model(
        experience_model,
        audit_episodes,
        retriever=ReplayRetriever(buffer),
        encoder=HashingEncoder(dim=384),
        options=options,
        open_loop_episodes=args.open_loop if args.open_loop is not None else (3 if args.quick else 12),
        output_dir=output,
        permutations=100,
        progress=False,
    )
    full = report.row("full").teacher_forced
    summary = {
        "train_episodes": len(train),
        "held_out_episodes": len(audit_episodes),
        "train_examples": fit.examples,
        "fit_metrics": fit.metrics,
        "held_out_next_state_exact_match": full.exact_match,
        "held_out_reward_accuracy": full.reward_accuracy,
        "held_out_success_f1": full.success.f1,
        "parse_failure_rate": full.parse_failure_rate,
        "seconds": time.perf_counter() - started,
    }
    (output / "summary.json").write_text(json.dumps(summary, indent=2))
    print(report.markdown())
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
