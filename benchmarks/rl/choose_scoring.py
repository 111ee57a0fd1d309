"""Cost of one choose-mode decision: three scorers of the candidate actions, side by side on the same inputs.

In choose mode ``LMPolicy`` scores every available action by its log-likelihood after the prompt. Three
ways to get the same log-probs:

* ``naive``: every candidate row is ``prompt + candidate`` run in full (the prompt runs once per candidate).
* ``pack_rows``: ``score_completions`` on ``pack_rows`` (the scorer choose mode used before): each distinct
  prompt runs once, then its KV cache is copied once per candidate row and the candidates run on the copies.
* ``shared_prefix``: ``score_candidates`` (what choose mode uses now): each distinct prompt runs once; all
  candidates of a prompt run as one sequence after it, a 4D mask letting each candidate token see the prompt
  and its own candidate's earlier tokens, position ids restarting at the prompt length ("tree attention").
  The prompt cache is read by every candidate, not copied per candidate.

Two settings: the demo's tiny Qwen2 policy (``apps/configs/demo.yaml``: hidden 64, 2 layers, 4 heads, vocab
1024, prompt budget 512, no history) on 32 TextWorld-like requests with 300-500-token prompts and 5-10
candidates; and the pretrained SmolLM2-135M-Instruct (chat prompts of about 400 tokens, 50 candidates as
in a cooking game) on a few requests. The texts are generated here in TextWorld's style (rooms, furniture,
items, exits, an action list), from a seed. ``naive`` and ``pack_rows`` / ``shared_prefix`` are timed in
alternating rounds; the median over rounds is reported with its min-max. The pretrained ``naive`` costs
about a minute per round on 2 cores, so it runs ``--naive-repeats`` rounds (default 1: no spread).

Model cost is counted from the shapes each scorer runs (padding included): positions through the model x 2 x
non-embedding parameters, plus 2 x hidden x vocab per position whose logits are computed, plus 4 x layers x
query width per (query, key) pair of attention (every pair of a masked forward is computed). KV bytes copied:
key and value entries, all layers, that ``batch_select_indices`` and the cache's concatenation copy.

    python benchmarks/rl/choose_scoring.py [--settings tiny pretrained] [--quick]

Writes ``benchmarks/results/choose_scoring.{json,md}`` (``choose_scoring-quick`` with ``--quick``).
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import transformers
from torch import Tensor

from dg_apps.config import DemoConfig, load_config
from dg_core import PolicyRequest, State, Task
from dg_rl import LMPolicy, PromptFormat, pack_rows, score_completions, tiny_causal_lm, train_bpe_tokenizer
from dg_rl._scoring import score_candidates, score_unshared

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results"
DEMO_CONFIG = ROOT / "apps" / "configs" / "demo.yaml"
SCORERS = ("naive", "pack_rows", "shared_prefix")

ROOMS = ("kitchen", "pantry", "backyard", "living room", "bedroom", "bathroom", "corridor", "garden", "shed")
FURNITURE = ("fridge", "counter", "table", "stove", "oven", "shelf", "sofa", "toolbox", "BBQ", "patio table")
ITEMS = (
    "red apple",
    "yellow potato",
    "red onion",
    "carrot",
    "knife",
    "cookbook",
    "white tuna",
    "block of cheese",
    "black pepper",
    "purple potato",
    "red hot pepper",
    "chicken wing",
    "banana",
    "orange bell pepper",
    "coin",
    "key",
)
DIRECTIONS = ("north", "south", "east", "west")
SENTENCES = (
    "You've just walked into a {room}. You begin to take stock of what's here.",
    "You can make out a {furniture}. The {furniture} is {state}.",
    "On the {furniture} you see a {item}, a {item} and a {item}.",
    "There is an {open} door leading {direction}.",
    "You don't like doors? Why not try going {direction}, that entranceway is unblocked.",
    "What's that over there? It looks like it's a {furniture}. Check it out!",
    "You make out a {furniture}. Wow, isn't TextWorld just the best? The {furniture} contains a {item}.",
    "You hear a noise from the {room} to the {direction}, but it is probably nothing.",
)
COOKING = (
    "You are hungry! Let's cook a delicious meal. Check the cookbook in the kitchen for the recipe. "
    "Once done, enjoy your meal!"
)


def textworld_request(rng: random.Random, candidates: int, index: int) -> tuple[Task, list[str], list[str]]:
    """A task, a supply of observation sentences and ``candidates`` distinct actions in TextWorld's style."""
    room = rng.choice(ROOMS)
    here = rng.sample(FURNITURE, 4)
    items = rng.sample(ITEMS, 8)
    sentences = [
        rng.choice(SENTENCES).format(
            room=room,
            furniture=rng.choice(here),
            item=rng.choice(items),
            state=rng.choice(("open", "closed", "empty")),
            open=rng.choice(("open", "closed")),
            direction=rng.choice(DIRECTIONS),
        )
        for _ in range(200)
    ]
    pool = ["look", "inventory", "prepare meal", *(f"go {d}" for d in DIRECTIONS)]
    for furniture in here:
        pool += [f"open {furniture}", f"close {furniture}", f"examine {furniture}"]
    for item in items:
        pool += [f"take {item}", f"drop {item}", f"eat {item}", f"examine {item}"]
        pool += [f"{verb} {item} with knife" for verb in ("slice", "dice", "chop")]
        pool += [f"cook {item} with {tool}" for tool in ("stove", "oven", "BBQ")]
        pool += [f"put {item} on {furniture}" for furniture in here]
    task = Task(id=f"tw{index}", env_id="textworld-like", instruction=COOKING)
    return task, sentences, rng.sample(pool, candidates)


def build_requests(
    policy: LMPolicy, count: int, candidates: tuple[int, int], prompt_tokens: tuple[int, int], seed: int
) -> list[PolicyRequest]:
    """``count`` requests whose prompts (as ``policy`` encodes them) hold ``prompt_tokens`` tokens."""
    rng = random.Random(seed)
    requests = []
    for index in range(count):
        task, sentences, actions = textworld_request(rng, rng.randint(*candidates), index)
        target = rng.randint(*prompt_tokens)
        shown = 1
        while True:
            text = f"-= {task.id} =-\n" + " ".join(sentences[:shown])
            request = PolicyRequest(task=task, state=State(text=text, available_actions=tuple(actions)))
            if len(policy.encode_prompt(request)[0]) >= target or shown == len(sentences):
                break
            shown += 1
        requests.append(request)
    return requests


def corpus(seed: int) -> list[str]:
    """Texts of the tiny tokenizer (another seed than the measured requests)."""
    rng = random.Random(seed)
    texts = [COOKING]
    for index in range(200):
        _, sentences, actions = textworld_request(rng, 20, index)
        texts += [" ".join(sentences[:20]), " | ".join(actions)]
    return texts


@dataclass
class Rows:
    """The candidate rows of a batch of requests, as the policy encodes them."""

    prompts: list[list[int]]
    actions: list[list[int]]
    per_request: list[int]
    """Number of candidates of each request (its rows are consecutive)."""


def encode(policy: LMPolicy, requests: list[PolicyRequest]) -> Rows:
    prompts: list[list[int]] = []
    actions: list[list[int]] = []
    per_request = []
    for request in requests:
        prompt, _ = policy.encode_prompt(request)
        options = request.state.available_actions or ()
        per_request.append(len(options))
        for option in options:
            prompts.append(prompt)
            actions.append(policy.encode_action(option)[0])
    return Rows(prompts, actions, per_request)


def _flat(logprobs: Tensor, actions: list[list[int]]) -> list[Tensor]:
    return [logprobs[row, : len(ids)].float().cpu() for row, ids in enumerate(actions)]


def naive(policy: LMPolicy, rows: Rows) -> list[Tensor]:
    """Every row ``prompt + candidate`` in full, one forward per request (its rows share a prompt length)."""
    out: list[Tensor] = []
    start = 0
    for count in rows.per_request:
        prompts, actions = rows.prompts[start : start + count], rows.actions[start : start + count]
        out += _flat(score_unshared(policy.model, prompts, actions, pad_id=policy.pad_id).logprobs, actions)
        start += count
    return out


def packed(scorer: Callable[..., Any]) -> Callable[[LMPolicy, Rows], list[Tensor]]:
    """``scorer`` on ``pack_rows`` chunks of ``policy.score_batch_rows`` rows, as ``LMPolicy.candidate_scores``."""

    def run(policy: LMPolicy, rows: Rows) -> list[Tensor]:
        out: list[Tensor] = []
        for start in range(0, len(rows.prompts), policy.score_batch_rows):
            chunk = slice(start, start + policy.score_batch_rows)
            batch = pack_rows(rows.prompts[chunk], rows.actions[chunk], pad_id=policy.pad_id, device=policy.device)
            out += _flat(scorer(policy.model, batch).logprobs, rows.actions[chunk])
        return out

    return run


RUNNERS: dict[str, Callable[[LMPolicy, Rows], list[Tensor]]] = {
    "naive": naive,
    "pack_rows": packed(score_completions),
    "shared_prefix": packed(score_candidates),
}


def model_shape(model: Any) -> dict[str, int]:
    config = model.config
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    embedding = model.get_input_embeddings().weight.numel()
    params = sum(p.numel() for p in model.parameters())
    return {
        "parameters": params,
        "non_embedding_parameters": params - embedding,
        "hidden": config.hidden_size,
        "vocab": config.vocab_size,
        "layers": config.num_hidden_layers,
        "query_width": heads * head_dim,
        "kv_width": config.num_key_value_heads * head_dim,
        "bytes": next(model.parameters()).element_size(),
    }


def costs(scorer: str, policy: LMPolicy, rows: Rows, shape: dict[str, int]) -> dict[str, float]:
    """Positions through the model, FLOPs and KV bytes copied by ``scorer`` on ``rows`` (from the shapes it runs)."""
    positions = logit_positions = pairs = copied = 0
    if scorer == "naive":
        start = 0
        for count in rows.per_request:
            prompts, actions = rows.prompts[start : start + count], rows.actions[start : start + count]
            full = max(len(p) + len(a) for p, a in zip(prompts, actions, strict=True))
            positions += count * full
            pairs += count * full * full
            logit_positions += count * (full - 1 - (min(len(p) for p in prompts) - 1))
            start += count
    else:
        for start in range(0, len(rows.prompts), policy.score_batch_rows):
            chunk = slice(start, start + policy.score_batch_rows)
            batch = pack_rows(
                rows.prompts[chunk], rows.actions[chunk], pad_id=policy.pad_id, device=torch.device("cpu")
            )
            distinct, width = batch.prompt_ids.shape
            count, completion_width = batch.completion_ids.shape
            positions += distinct * width
            pairs += distinct * width * width
            if scorer == "pack_rows":
                fed = completion_width - 1
                positions += count * fed
                pairs += count * fed * (width + fed)
                logit_positions += distinct * width + count * fed
                copied += count * width + (count * (width + fed) if fed else 0)
            else:
                fed_per_row = (batch.completion_lengths - 1).clamp(min=0)
                tree = int(torch.zeros(distinct, dtype=torch.long).index_add_(0, batch.row_prompt, fed_per_row).max())
                positions += distinct * tree
                pairs += distinct * tree * (width + tree)
                logit_positions += len(torch.unique(batch.prompt_mask.sum(1))) * distinct + distinct * tree
                copied += distinct * (width + tree) if tree else 0
    flops = (
        2 * shape["non_embedding_parameters"] * positions
        + 2 * shape["hidden"] * shape["vocab"] * logit_positions
        + 4 * shape["layers"] * shape["query_width"] * pairs
    )
    kv_bytes = copied * 2 * shape["layers"] * shape["kv_width"] * shape["bytes"]
    return {"positions": positions, "flops": flops, "kv_bytes_copied": kv_bytes}


def measure(
    name: str, policy: LMPolicy, requests: list[PolicyRequest], repeats: int, naive_repeats: int
) -> dict[str, Any]:
    rows = encode(policy, requests)
    shape = model_shape(policy.model)
    warm = Rows(rows.prompts[:3], rows.actions[:3], [3])
    for runner in RUNNERS.values():  # first calls pay for allocation and kernel choice
        runner(policy, warm)
    seconds: dict[str, list[float]] = {scorer: [] for scorer in SCORERS}
    logprobs: dict[str, list[Tensor]] = {}
    for round_index in range(repeats):
        order = SCORERS if round_index % 2 == 0 else SCORERS[::-1]  # alternate: machine noise hits all alike
        for scorer in order:
            if scorer == "naive" and round_index >= naive_repeats:
                continue
            started = time.perf_counter()
            logprobs[scorer] = RUNNERS[scorer](policy, rows)
            seconds[scorer].append(time.perf_counter() - started)
    reference = torch.cat(logprobs["naive"])
    decisions = len(requests)
    results: dict[str, Any] = {}
    for scorer in SCORERS:
        cost = costs(scorer, policy, rows, shape)
        values = torch.cat(logprobs[scorer])
        results[scorer] = {
            "seconds_per_batch": seconds[scorer],
            "seconds_per_decision_median": statistics.median(seconds[scorer]) / decisions,
            "seconds_per_decision_min": min(seconds[scorer]) / decisions,
            "seconds_per_decision_max": max(seconds[scorer]) / decisions,
            "positions_per_decision": cost["positions"] / decisions,
            "gflops_per_decision": cost["flops"] / decisions / 1e9,
            "kv_mb_copied_per_decision": cost["kv_bytes_copied"] / decisions / 1e6,
            "max_abs_logprob_diff_vs_naive": float((values - reference).abs().max()),
        }
    for scorer in SCORERS:
        for base in ("naive", "pack_rows"):
            results[scorer][f"speedup_vs_{base}"] = (
                results[base]["seconds_per_decision_median"] / results[scorer]["seconds_per_decision_median"]
            )
            results[scorer][f"flops_ratio_vs_{base}"] = (
                results[base]["gflops_per_decision"] / results[scorer]["gflops_per_decision"]
            )
    prompt_lengths = [len(policy.encode_prompt(request)[0]) for request in requests]
    return {
        "setting": name,
        "requests": decisions,
        "candidates": rows.per_request,
        "prompt_tokens": {
            "min": min(prompt_lengths),
            "median": statistics.median(prompt_lengths),
            "max": max(prompt_lengths),
        },
        "candidate_tokens": {
            "min": min(len(a) for a in rows.actions),
            "median": statistics.median(len(a) for a in rows.actions),
            "max": max(len(a) for a in rows.actions),
        },
        "model": shape,
        "rounds": repeats,
        "naive_rounds": min(repeats, naive_repeats),
        "scorers": results,
    }


def tiny_setting(args: argparse.Namespace) -> tuple[str, LMPolicy, list[PolicyRequest], dict[str, Any]]:
    config = load_config(DemoConfig, DEMO_CONFIG).policy
    tokenizer = train_bpe_tokenizer(corpus(args.seed + 1), vocab_size=config.vocab_size)
    model = tiny_causal_lm(
        tokenizer,
        hidden_size=config.hidden_size,
        num_layers=config.num_layers,
        num_heads=config.num_heads,
        seed=args.seed,
    ).eval()
    policy = LMPolicy(
        model,
        tokenizer,
        mode="choose",
        prompt_format=PromptFormat(history_turns=config.history_turns),
        max_turn_tokens=config.max_turn_tokens,
        max_prompt_tokens=config.max_prompt_tokens,
    )
    requests = build_requests(
        policy, 4 if args.quick else args.tiny_requests, (5, 10), (60, 120) if args.quick else (300, 500), args.seed
    )
    settings = {"kind": "tiny", "config": str(DEMO_CONFIG.relative_to(ROOT)), "policy": config.model_dump(mode="json")}
    return "tiny", policy, requests, settings


def pretrained_setting(args: argparse.Namespace) -> tuple[str, LMPolicy, list[PolicyRequest], dict[str, Any]]:
    from dg_models import load_model

    config = load_config(DemoConfig, DEMO_CONFIG).policy
    loaded = load_model("smollm2", dtype="float32")
    policy = LMPolicy(
        loaded.model.eval(),
        loaded.tokenizer,
        mode="choose",
        prompt_format=PromptFormat(history_turns=config.history_turns),
        max_turn_tokens=config.max_turn_tokens,
        max_prompt_tokens=config.max_prompt_tokens,
    )
    candidates = 8 if args.quick else args.pretrained_candidates
    requests = build_requests(
        policy,
        1 if args.quick else args.pretrained_requests,
        (candidates, candidates),
        (200, 220) if args.quick else (380, 420),
        args.seed,
    )
    settings = {"kind": "pretrained", "model": "SmolLM2-135M-Instruct (Q4_1 GGUF, float32)", "chat": policy.chat}
    return "pretrained", policy, requests, settings


def markdown(reports: list[dict[str, Any]], threads: int) -> str:
    lines = [
        f"Choose-mode decision cost, {threads} CPU threads, float32, torch {torch.__version__}, "
        f"transformers {transformers.__version__}. s/decision: median over rounds (min-max); "
        "GFLOPs and KV MB copied per decision from the shapes each scorer runs.",
        "",
        "| model | requests x candidates | prompt tokens | scorer | s/decision | GFLOPs/decision | KV MB copied "
        "| speedup vs naive (s / FLOPs) | speedup vs pack_rows (s / FLOPs) | max abs log-prob diff vs naive |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for report in reports:
        counts = report["candidates"]
        shape = (
            f"{report['requests']} x {min(counts)}-{max(counts)}"
            if min(counts) != max(counts)
            else (f"{report['requests']} x {counts[0]}")
        )
        prompts = report["prompt_tokens"]
        for scorer, result in report["scorers"].items():
            rounds = report["naive_rounds"] if scorer == "naive" else report["rounds"]
            lines.append(
                f"| {report['setting']} ({report['model']['parameters'] / 1e6:.2f}M) | {shape} "
                f"| {prompts['min']}-{prompts['max']} | {scorer} "
                f"| {result['seconds_per_decision_median']:.4f} ({result['seconds_per_decision_min']:.4f}-"
                f"{result['seconds_per_decision_max']:.4f}, {rounds} rounds) "
                f"| {result['gflops_per_decision']:.2f} | {result['kv_mb_copied_per_decision']:.1f} "
                f"| {result['speedup_vs_naive']:.2f}x / {result['flops_ratio_vs_naive']:.2f}x "
                f"| {result['speedup_vs_pack_rows']:.2f}x / {result['flops_ratio_vs_pack_rows']:.2f}x "
                f"| {result['max_abs_logprob_diff_vs_naive']:.1e} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--settings", nargs="+", choices=("tiny", "pretrained"), default=["tiny", "pretrained"])
    parser.add_argument("--tiny-requests", type=int, default=32)
    parser.add_argument("--pretrained-requests", type=int, default=2)
    parser.add_argument("--pretrained-candidates", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=7, help="timed rounds of the tiny setting")
    parser.add_argument("--pretrained-repeats", type=int, default=3)
    parser.add_argument("--naive-repeats", type=int, default=1, help="rounds of the pretrained naive scorer")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="a smoke run: few, short requests, 2 rounds")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    builders = {"tiny": tiny_setting, "pretrained": pretrained_setting}
    reports = []
    for setting in args.settings:
        name, policy, requests, settings = builders[setting](args)
        repeats = 2 if args.quick else args.repeats if setting == "tiny" else args.pretrained_repeats
        naive_repeats = repeats if setting == "tiny" else args.naive_repeats
        report = measure(name, policy, requests, repeats, naive_repeats)
        report["settings"] = settings
        reports.append(report)
        print("\n".join(markdown([report], args.threads).splitlines()[-len(SCORERS) :]), flush=True)
    table = markdown(reports, args.threads)
    report_json = {
        "reports": reports,
        "seed": args.seed,
        "quick": args.quick,
        "config": vars(args),
        "machine": {
            "python": platform.python_version(),
            "machine": platform.machine(),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
        },
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = "choose_scoring-quick" if args.quick else "choose_scoring"
    (RESULTS / f"{stem}.json").write_text(json.dumps(report_json, indent=1))
    (RESULTS / f"{stem}.md").write_text(table + "\n")
    print("\n" + table + f"\n\nresults in {RESULTS / stem}.{{json,md}}")


if __name__ == "__main__":
    main()
