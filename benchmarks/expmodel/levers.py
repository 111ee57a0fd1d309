"""Levers on the experience model's fidelity (issue 17 section 2), measured before and after on TextWorld.

Every variant is fitted (or not: ``nearest``) on offline real episodes of the custom TextWorld suite of
``textworld_fidelity.py`` (48 games: 3 rooms, 4 objects, quests of 2 steps; its train split) and audited on the
same held-out episodes of the suite's validation and test games with dg-expmodel's audit (full configuration
only, no ablation, no open loop): teacher-forced eps_R, eps_P, success and done precision / recall, per-field
next-state fidelity on determined and revealing transitions, hallucinated entities, parse failures; and
policy-level fidelity (random, expert and noisy-expert, each played from the same held-out tasks, seeds and
initial states in the real env and in the variant's synthetic env; success gaps with paired 95% t intervals).

Variants (``VARIANTS``). The tiny model of textworld_fidelity.py (4 layers x 128, 12 epochs over about 1300
transitions) takes about 3.5 hours to fit on 2 shared cores, so the baseline here is scaled down to fit the
machine, and every lever changes one thing against it:

- ``baseline``: textworld_fidelity.py's data (per train game 1 expert + 2 random episodes) and prompts (history 2,
  2 retrieved); tiny model 2 layers x 128 (word-level tokenizer of 2048), 2 epochs;
- ``more-data``: per train game 1 expert + 4 random + 4 noisy-expert episodes (about 2.3 times the transitions),
  1 epoch (about 1.15 times the baseline's example passes);
- ``more-data-2-epochs``: more-data's episodes, 2 epochs (about ``more-epochs``' example passes: data against
  epochs at equal compute);
- ``bigger``: 4 layers (textworld_fidelity.py's depth), same data and epochs;
- ``more-epochs``: 4 epochs, same data and model;
- ``short-responses``: the model is trained and asked without reasoning (an empty reasoning field: the response
  is the next state, its actions, reward and done), same data, model and epochs;
- ``nearest``: dg-expmodel's non-parametric NearestExperienceModel over the baseline buffer (no fit): the
  reference every learned model must beat;
- ``outcome-head``: the baseline's fitted model (reused from ``runs/expmodel-levers/baseline`` when it is there,
  fitted again otherwise) with a separate reward / done head, dg-expmodel's ``OutcomeHead`` (the outcome of the
  nearest real train transition, keyed by action and by instruction with state): the next states stay the model's;
- ``nearest+outcome-head``: ``nearest`` with the same head.

    python benchmarks/expmodel/levers.py                      # every variant whose result is missing
    python benchmarks/expmodel/levers.py --variant baseline   # one (again: delete its result.json first)
    python benchmarks/expmodel/levers.py --table              # only rewrite the table from the results on disk

Each variant writes ``benchmarks/results/expmodel_levers_textworld/<variant>/`` (``result.json``, the audit's
``audit.json`` / ``audit.md``) as it finishes, and a variant whose ``result.json`` exists is skipped (an
interrupted run loses at most the variant it was in). The table of all finished variants is rewritten after each:
``benchmarks/results/expmodel_levers_textworld.{json,md}``. Checkpoints go to ``runs/expmodel-levers/`` (not
kept). One fit seed per variant; the numbers carry that noise.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from textworld_fidelity import MAX_STEPS, collect, fit_tiny, split_suite, training_examples

from dg_envs import named_policy
from dg_envs.textworld import TextWorldEnv
from dg_expmodel import (
    ABLATIONS,
    LLMExperienceModel,
    NearestExperienceModel,
    OutcomeHead,
    OutcomeHeadModel,
    PolicyFidelitySetup,
    PromptOptions,
    ReplayRetriever,
    Sampling,
    TransformersBackend,
    audit_experience_model,
)
from dg_replay import HashingEncoder

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results"
NAME = "expmodel_levers_textworld"
GAMES = 48
"""Games in the suite (all splits), as in textworld_fidelity.py."""
OPTIONS = PromptOptions(history_window=2, max_retrieved=2)
"""Prompt options of every variant (textworld_fidelity.py's): the last 2 steps, 2 retrieved transitions."""
HELD_OUT = {"episodes_per_task": 2, "noisy_per_task": 2, "seed": 2}
"""Held-out episodes per validation / test game: 1 expert, 1 random, 2 noisy-expert (epsilon 0.2)."""
POLICIES = ("random", "expert", "noisy-expert")
POLICY_EPISODES = 12
"""Episodes per policy in each env (the held-out games in turn, seeds 100, 101, ...)."""
EPSILON = 0.2
TARGETS = {
    "success_precision": 0.9,
    "success_recall": 0.9,
    "done_accuracy": 0.98,
    "determined_f1": 0.95,
    "determined_exact": 0.8,
    "success_gap": 0.05,
    "parse_failures": 0.01,
    "hallucination": 0.10,
}
"""Issue 17's targets."""


@dataclass(frozen=True)
class Variant:
    """One lever setting."""

    name: str
    lever: str
    """What changes against the baseline."""
    episodes_per_task: int = 3
    """Train episodes per train game: 1 expert, the rest random."""
    noisy_per_task: int = 0
    """Extra noisy-expert train episodes per train game."""
    model: str = "tiny"
    """``tiny`` (fitted here) or ``nearest`` (no fit)."""
    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    epochs: int = 2
    reasoning: bool = True
    """Whether the response starts with the annotator's reasoning (False: an empty reasoning field, shorter)."""
    outcome_head: bool = False
    """Rewards and done flags from dg-expmodel's OutcomeHead over the train transitions (next states: the model's)."""
    fit_from: str | None = None
    """Reuse this variant's fitted model when its checkpoint directory holds one (same settings)."""


VARIANTS = {
    v.name: v
    for v in (
        Variant("baseline", "textworld_fidelity.py's data and prompts; model and epochs scaled down to fit the CPU"),
        Variant(
            "more-data",
            "per train game 1 expert + 4 random + 4 noisy-expert episodes, 1 epoch (compute: see example passes)",
            episodes_per_task=5,
            noisy_per_task=4,
            epochs=1,
        ),
        Variant(
            "more-data-2-epochs",
            "more-data's episodes, 2 epochs (about more-epochs' example passes)",
            episodes_per_task=5,
            noisy_per_task=4,
        ),
        Variant("bigger", "4 layers (textworld_fidelity.py's depth) instead of 2, same data and epochs", num_layers=4),
        Variant("more-epochs", "4 epochs instead of 2, same data and model", epochs=4),
        Variant(
            "short-responses",
            "no reasoning in the response (empty field): next state, actions, reward, done only",
            reasoning=False,
        ),
        Variant(
            "nearest", "no network: the identical retrieved real transition, else the failure state", model="nearest"
        ),
        Variant(
            "outcome-head",
            "baseline's model with a separate reward / done head (OutcomeHead: the nearest real transition's outcome)",
            outcome_head=True,
            fit_from="baseline",
        ),
        Variant(
            "nearest+outcome-head",
            "nearest with the separate reward / done head (OutcomeHead)",
            model="nearest",
            outcome_head=True,
        ),
    )
}


class _CountingNearest(NearestExperienceModel):
    """NearestExperienceModel that keeps counting ``matched`` / ``fallbacks`` when the audit asks it for the
    options it already has (the package's ``with_options`` returns a fresh model, whose counts would be lost)."""

    def with_options(self, options: PromptOptions) -> NearestExperienceModel:
        return self if options == self.options else NearestExperienceModel(options)


def _fitted(variant: str) -> Path:
    """Where ``variant``'s fitted Hugging Face model lands (fit_experience_model's ``model/``)."""
    return ROOT / "runs" / "expmodel-levers" / variant / "expmodel" / "model"


def _llm_model(model_dir: Path, options: PromptOptions) -> LLMExperienceModel:
    """A fitted model behind the transformers backend, sampled as every learned variant is (320 new tokens, 1 retry)."""
    backend = TransformersBackend.from_pretrained(model_dir, batch_size=16)
    return LLMExperienceModel(backend, options=options, sampling=Sampling(max_new_tokens=320), retries=1)


def _policy_maker(name: str, env: Any, seed: int) -> Any:
    return named_policy(name, env, seed=seed, epsilon=EPSILON)


def _real_env() -> TextWorldEnv:
    return TextWorldEnv(max_steps=MAX_STEPS)


def run_variant(variant: Variant, directory: Path) -> dict[str, Any]:
    """Collect, fit (unless ``nearest``) and audit one variant; its result record."""
    started = time.perf_counter()
    seconds: dict[str, float] = {}
    options = OPTIONS.model_copy(update={"reasoning": variant.reasoning})
    train_tasks, test_tasks = split_suite(GAMES)
    train = collect(train_tasks, variant.episodes_per_task, seed=1, noisy_per_task=variant.noisy_per_task)
    held_out = collect(
        test_tasks, HELD_OUT["episodes_per_task"], seed=HELD_OUT["seed"], noisy_per_task=HELD_OUT["noisy_per_task"]
    )
    buffer, examples = training_examples(train, options)
    seconds["collect_and_annotate"] = time.perf_counter() - started
    print(f"[{variant.name}] {len(train)} train episodes, {len(examples)} transitions; {len(held_out)} held out")

    model: Any
    fit_record: dict[str, Any] | None = None
    if variant.model == "nearest":
        model = _CountingNearest(options)
        size = "no parameters"
    elif variant.fit_from and (_fitted(variant.fit_from) / "config.json").is_file():
        reused = VARIANTS[variant.fit_from]
        model = _llm_model(_fitted(variant.fit_from), options)
        parameters = sum(p.numel() for p in model.backend.model.parameters())
        size = (
            f"{parameters / 1e6:.2f}M parameters ({reused.num_layers} layers x {reused.hidden_size}, "
            f"{reused.epochs} epochs, 1 fit seed: {variant.fit_from}'s fitted model, reused)"
        )
        print(f"[{variant.name}] reusing {variant.fit_from}'s fitted model: {size}")
    elif (_fitted(variant.name) / "config.json").is_file() and (
        _fitted(variant.name).parent / "metrics.json"
    ).is_file():
        # Its own fit finished in an earlier invocation (whose audit did not): audit that model, do not fit again.
        model = _llm_model(_fitted(variant.name), options)
        parameters = sum(p.numel() for p in model.backend.model.parameters())
        fit_record = {
            "metrics": json.loads((_fitted(variant.name).parent / "metrics.json").read_text()),
            "parameters": parameters,
            "reused": "fitted by an earlier invocation of this benchmark",
        }
        size = (
            f"{parameters / 1e6:.2f}M parameters ({variant.num_layers} layers x {variant.hidden_size}, "
            f"{variant.epochs} epochs, 1 fit seed; fitted by an earlier invocation)"
        )
        print(f"[{variant.name}] reusing its own fitted model: {size}")
    else:
        mark = time.perf_counter()
        fit, parameters = fit_tiny(
            examples,
            _fitted(variant.name).parent,
            hidden_size=variant.hidden_size,
            num_layers=variant.num_layers,
            num_heads=variant.num_heads,
            epochs=variant.epochs,
        )
        seconds["fit"] = time.perf_counter() - mark
        fit_record = {
            "examples": fit.examples,
            "dropped": fit.dropped,
            "metrics": fit.metrics,
            "parameters": parameters,
        }
        size = (
            f"{parameters / 1e6:.2f}M parameters ({variant.num_layers} layers x {variant.hidden_size}, "
            f"{variant.epochs} epochs, 1 fit seed)"
        )
        print(f"[{variant.name}] fitted {size} in {seconds['fit']:.0f}s: {fit.metrics}")
        model = _llm_model(fit.model_dir, options)
    if variant.outcome_head:
        model = OutcomeHeadModel(model, OutcomeHead.from_trajectories(train, HashingEncoder(dim=384)))
        size += "; + OutcomeHead (k=1, action weight 0.5)"

    mark = time.perf_counter()
    report = audit_experience_model(
        model,
        held_out,
        retriever=ReplayRetriever(buffer),
        encoder=HashingEncoder(dim=384),
        options=options,
        ablations=(ABLATIONS[0],),
        open_loop_episodes=0,
        output_dir=directory,
        permutations=100,
        progress=False,
        policy_fidelity=PolicyFidelitySetup(
            real_env=_real_env,
            policies={name: functools.partial(_policy_maker, name) for name in POLICIES},
            episodes=POLICY_EPISODES,
            seed=100,
            batch_size=POLICY_EPISODES,
        ),
    )
    seconds["audit"] = time.perf_counter() - mark
    seconds["total"] = time.perf_counter() - started
    forced = report.row("full").teacher_forced
    assert report.policy_fidelity is not None
    fields = forced.fields
    record: dict[str, Any] = {
        "variant": asdict(variant),
        "model": size,
        "train_episodes": len(train),
        "train_transitions": len(examples),
        "held_out_episodes": len(held_out),
        "held_out_steps": forced.steps,
        "fit": fit_record,
        "eps_R": forced.eps_r,
        "eps_P": forced.eps_p,
        "success": forced.success.as_dict(),
        "done": forced.done.as_dict(),
        "next_state_exact_match": forced.exact_match,
        "determined": fields.determined.as_dict(),
        "determined_changed": fields.determined_changed.as_dict(),
        "revealing": fields.revealing.as_dict(),
        "hallucination_rate": forced.hallucination_rate,
        "parse_failure_rate": forced.parse_failure_rate,
        "policy_fidelity": report.policy_fidelity.as_dict(),
        "nearest": (
            {"matched": base.matched, "fallbacks": base.fallbacks}
            if isinstance(base := getattr(model, "model", model), NearestExperienceModel)
            else None
        ),
        "seconds": seconds,
        "machine": {
            "torch_threads": torch.get_num_threads(),
            "load_average_at_end": os.getloadavg(),
            "platform": platform.platform(),
        },
    }
    (directory / "result.json").write_text(json.dumps(record, indent=2))
    print(f"[{variant.name}] done in {seconds['total']:.0f}s")
    return record


def _f(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _row(record: dict[str, Any]) -> str:
    success, done = record["success"], record["done"]
    predicted = success["true_positive"] + success["false_positive"]
    determined, revealing = record["determined"], record["revealing"]
    changed = record.get("determined_changed")  # results written before the split have none
    gaps = []
    for name in POLICIES:
        gap = record["policy_fidelity"]["policies"][name]["success"]["gap"]
        gaps.append(f"{gap['mean']:+.2f} [{gap['low']:+.2f}, {gap['high']:+.2f}]")
    cells = [
        record["variant"]["name"],
        str(record["train_transitions"]),
        _f(record["eps_R"]),
        _f(record["eps_P"]),
        f"{_f(success['precision'], 2)} ({success['true_positive']}/{predicted})",
        f"{_f(success['recall'], 2)} ({success['true_positive']}/{success['positives']})",
        _f(done["accuracy"]),
        f"{_f(determined['field_f1'])} / {_f(determined['exact_match'])} ({determined['scored_steps']})",
        "-"
        if changed is None
        else f"{_f(changed['field_f1'])} / {_f(changed['exact_match'])} ({changed['scored_steps']})",
        f"{_f(revealing['field_f1'])} / {_f(revealing['exact_match'])} ({revealing['scored_steps']})",
        _f(record["hallucination_rate"]),
        _f(record["parse_failure_rate"]),
        *gaps,
    ]
    return "| " + " | ".join(cells) + " |"


def write_table(directory: Path, *, quiet: bool = False) -> list[dict[str, Any]]:
    """Gather every finished variant's result into ``expmodel_levers_textworld.{json,md}``."""
    records = []
    for name in VARIANTS:
        path = directory / name / "result.json"
        if path.exists():
            records.append(json.loads(path.read_text()))
    t = TARGETS
    header = (
        "| variant | train transitions | eps_R | eps_P | success precision (TP/predicted) "
        "| success recall (TP/positives) | done accuracy | determined field F1 / exact (steps) "
        "| of which changed: F1 / exact (steps) | revealing field F1 / exact (steps) | hallucination | parse failures "
        "| success gap random [95% CI] "
        "| success gap expert [95% CI] | success gap noisy-expert [95% CI] |"
    )
    lines = [
        "# Experience-model levers on TextWorld (issue 17 section 2)",
        "",
        "Generated by `benchmarks/expmodel/levers.py` (`nox -s bench -- expmodel-levers`). Custom TextWorld suite of "
        f"{GAMES} games (3 rooms, 4 objects, quests of 2 steps), trained on its train split; audited on held-out "
        "validation + test games (per game 1 expert, 1 random, 2 noisy-expert episodes), teacher-forced, full "
        "configuration (history 2, 2 retrieved real transitions). Policy-level success gap = real - synthetic success "
        f"rate, {POLICY_EPISODES} episode pairs per policy (same task, seed, initial state; step limit {MAX_STEPS}), "
        "paired 95% t interval. Tiny models are trained from scratch on CPU with a word-level tokenizer; one fit "
        "seed each; the baseline is scaled down from textworld_fidelity.py's 4 layers x 128, 12 epochs (about 3.5 h "
        "to fit on these 2 shared cores) to 2 layers x 128, 2 epochs. Field F1 / exact are over the steps with a "
        "field to score (count in brackets); the determined / revealing split depends on the retrieved context, so "
        "it moves a little with the buffer. *Of which changed*: the determined steps where some field of the next "
        "state differs from the current state's (repeating the state is exact on all the others; '-': result written "
        "before this split was measured). A precision of 1.00 with 0 predicted is vacuous: no success predicted.",
        "",
        header,
        "| --- " * 15 + "|",
        f"| **target (issue 17)** | | | | >= {t['success_precision']} | >= {t['success_recall']} "
        f"| >= {t['done_accuracy']} | >= {t['determined_f1']} / >= {t['determined_exact']} | | | "
        f"< {t['hallucination']} | < {t['parse_failures']} | \\|gap\\| <= {t['success_gap']} "
        f"| \\|gap\\| <= {t['success_gap']} | \\|gap\\| <= {t['success_gap']} |",
        *(_row(r) for r in records),
        "",
        "| variant | lever | model | train episodes | example passes (transitions x epochs) | final train loss "
        "| held-out episodes (steps) | fit seconds | audit seconds |",
        "| --- " * 9 + "|",
    ]
    for r in records:
        fit = r["fit"]
        passes = "-" if fit is None else str(r["train_transitions"] * r["variant"]["epochs"])
        loss = "-" if fit is None else _f(fit["metrics"].get("train/loss"))
        fit_seconds = f"{r['seconds']['fit']:.0f}" if "fit" in r["seconds"] else "-"  # none: no fit, or reused
        lines.append(
            f"| {r['variant']['name']} | {r['variant']['lever']} | {r['model']} | {r['train_episodes']} | {passes} "
            f"| {loss} | {r['held_out_episodes']} ({r['held_out_steps']}) | {fit_seconds} "
            f"| {r['seconds']['audit']:.0f} |"
        )
    for r in records:
        if r.get("nearest"):
            counts = r["nearest"]
            lines += [
                "",
                f"`{r['variant']['name']}` found the identical real transition for {counts['matched']} of "
                f"{counts['matched'] + counts['fallbacks']} queries (teacher-forced and synthetic steps together) and "
                "answered the others with the failure state.",
            ]
    missing = [name for name in VARIANTS if name not in {r["variant"]["name"] for r in records}]
    if missing:
        lines += ["", f"Not run yet: {', '.join(missing)}."]
    text = "\n".join(lines) + "\n"
    (RESULTS / f"{NAME}.md").write_text(text)
    summary = {"targets": TARGETS, "variants": {r["variant"]["name"]: r for r in records}, "missing": missing}
    (RESULTS / f"{NAME}.json").write_text(json.dumps(summary, indent=2))
    if not quiet:
        print(text)
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", action="append", choices=sorted(VARIANTS), help="run only these (repeatable)")
    parser.add_argument("--table", action="store_true", help="only rewrite the table from the results on disk")
    parser.add_argument("--output", type=Path, default=RESULTS / NAME, help="per-variant results")
    args = parser.parse_args()
    if not args.table:
        for name in args.variant or list(VARIANTS):
            directory = args.output / name
            if (directory / "result.json").exists():
                print(f"[{name}] already measured: {directory / 'result.json'} (delete it to measure again)")
                continue
            directory.mkdir(parents=True, exist_ok=True)
            run_variant(VARIANTS[name], directory)
            write_table(args.output, quiet=True)
    write_table(args.output)


if __name__ == "__main__":
    main()
