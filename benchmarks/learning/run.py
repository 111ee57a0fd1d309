"""Does DreamGym's shape hold at our scale? Real-env GRPO vs GRPO in synthetic experience, S2R and ablations.

One command runs every method on one environment with several training seeds, the same policy model and
the same number of policy updates, and evaluates each trained policy on held-out real test tasks:

1. the initial policy (untrained tiny LM, built per seed);
2. GRPO in the real environment (real transitions counted);
3. DreamGym: GRPO purely in the synthetic environment (experience model + replay + curriculum; 0 real
   on-policy transitions);
4. DreamGym-S2R: the DreamGym policy, then a real phase limited to ``s2r_fraction`` of method 2's real
   transitions;
5. ablations of 3: no replay retrieval (experience model trained and run with top_k=0), no reasoning
   (trained and run without reasoning traces), no curriculum (uniform task draws);
6. DreamGym + levers: method 3 with issue 17's fidelity levers on its experience model (``levers``: by default
   exact (state, action) matches copied first and the separate reward / done head);
7. GRPO in the real env at an equal real-data budget: stopped at as many real on-policy transitions as the
   offline data DreamGym's experience model was fitted on (the paper's data-efficiency comparison);
8. with ``--sweeps``: retrieval k and history window (one experience model per value) and lambda (the
   generated-task share, with task generation switched on), on the first seed;
9. with ``--fit-seeds``: DreamGym again with the full experience model fitted with each further seed (every
   training seed), so that the fit's spread is measured beside the policy's.

The experience models are fitted once per variant (offline data and fit seed ``seed`` fixed); the training seeds
vary the policy's initialisation, its rollouts and the curriculum. Each experience model is audited twice: on held-out
real trajectories (eps_R, eps_P, success precision / recall, done accuracy, next-state F1 / exact match on
determined transitions, parse failures, and policy-level fidelity: random, expert and noisy-expert played from the
same tasks and initial states in the real and the synthetic env) and on fresh noisy-expert episodes of the training
tasks, the ones synthetic training plays (the same, with fewer episodes). Its numbers sit beside the results it
produced.

Every stage is a dg run directory under ``--output`` (an interrupted benchmark, run again, keeps finished
stages). Results: ``benchmarks/results/learning_<env>.{json,md,png}``.

    python benchmarks/learning/run.py                          # TextWorld, seeds 0 1 2 (about 50 min on 2 cores)
    python benchmarks/learning/run.py --config alfworld        # ALFWorld-format problems
    python benchmarks/learning/run.py --sweeps                 # also the k / lambda / history sweeps
    python benchmarks/learning/run.py --fit-seeds 1 2          # DreamGym with two more experience-model fits
    python benchmarks/learning/run.py --config quick --seeds 0 # smoke size
    nox -s bench -- learning [args]
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
import warnings
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from pydantic import Field, ValidationError

from dg_apps.commands import run_audit, run_collect, run_fit, s2r_real_phase
from dg_apps.config import (
    AuditConfig,
    CollectConfig,
    DemoConfig,
    EvalConfig,
    ExpModelConfig,
    FitConfig,
    PolicyFidelityConfig,
    TrainConfig,
    load_config,
)
from dg_apps.demo import collect_data, initial_policy, run_stage
from dg_apps.evaluation import run_eval
from dg_apps.models import load_policy, read_data, save_policy
from dg_apps.plots import success_bars
from dg_apps.rundir import RunDir
from dg_apps.training import run_train
from dg_rl import behaviour_cloning, demonstrations

HERE = Path(__file__).resolve().parent
RESULTS = HERE.parents[0] / "results"


class LearningConfig(DemoConfig):
    """The demo's settings plus the benchmark's own."""

    s2r_fraction: float = Field(default=0.1, gt=0, le=1)
    """Real transitions of the S2R real phase, as a share of the real-env GRPO run's."""
    s2r_real_steps: int = Field(default=4, ge=1)
    """Rollout batches of the S2R real phase at most (it also stops at its real budget)."""
    eval_episodes_per_task: int = Field(default=4, ge=1)
    warm_start_epochs: int = Field(default=0, ge=0)
    """Behaviour-cloning epochs of the initial policy on the successful offline episodes (0: untrained start)."""
    levers: dict[str, Any] = Field(default_factory=lambda: {"exact_first": True, "outcome_head": {}})
    """``expmodel`` settings of the "DreamGym + levers" method's experience model (on top of ``expmodel``)."""
    audit_train_episodes: int = Field(default=16, ge=0)
    """Training-task episodes of each experience model's second audit (0: held-out audit only)."""
    audit_policy_episodes: int = Field(default=16, ge=0)
    """Episodes per policy and env of the audits' policy-level fidelity (0 skips it)."""
    sweep_top_k: list[int] = Field(default_factory=lambda: [0, 1, 2])
    sweep_history: list[int] = Field(default_factory=lambda: [0, 1, 2])
    sweep_lambda: list[float] = Field(default_factory=lambda: [0.0, 0.25, 0.5])
    sweep_grow_every: int = Field(default=2, ge=1)
    """Task-generation period of the lambda sweep (generated tasks only exist when generation is on)."""


def levers_expmodel(config: LearningConfig) -> ExpModelConfig:
    """The experience model of "DreamGym + levers": ``expmodel`` with ``levers`` on top, validated as one."""
    try:
        return ExpModelConfig.model_validate({**config.expmodel.model_dump(), **config.levers})
    except ValidationError as error:
        raise SystemExit(f"levers: not valid expmodel settings on top of expmodel:\n{error}") from None


def log(message: str) -> None:
    print(message, flush=True)


def _mean_sd(values: list[float]) -> tuple[float, float]:
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else math.nan


POLICIES = ("random", "expert", "noisy-expert")
"""The policies of the audits' policy-level fidelity, in the tables' order."""


def fidelity_summary(metrics: dict[str, Any], report: Path | None = None) -> dict[str, Any]:
    """What the tables show of one ``dg expmodel audit``'s metrics: teacher-forced errors, the positive class,
    determined next states, and each policy's success gap real - synthetic (mean and 95% interval); the
    hallucinated-entity rate comes from the audit's full report (``report``, its ``audit.json``) where given."""
    hallucination = None
    if report is not None and report.exists():
        hallucination = json.loads(report.read_text())["full"]["teacher_forced"].get("hallucination_rate")
    determined = metrics["next_state_fields"]["determined"]
    success = metrics["success"]
    gaps: dict[str, Any] = {}
    for policy, entry in ((metrics.get("policy_fidelity") or {}).get("policies") or {}).items():
        played = entry["success"]
        gaps[policy] = {
            "real": played["real"]["mean"],
            "synthetic": played["synthetic"]["mean"],
            "gap": played["gap"]["mean"],
            "low": played["gap"]["low"],
            "high": played["gap"]["high"],
            "episodes": entry["episodes"],
        }
    return {
        "episodes": metrics["held_out_episodes"],
        "eps_R": metrics["eps_R"],
        "eps_P": metrics["eps_P"],
        "parse_failure_rate": metrics["parse_failure_rate"],
        "hallucination_rate": hallucination,
        # no win predicted: precision undefined (the audit's convention says 1.0), shown as "-"
        "success_precision": success["precision"] if success["true_positive"] + success["false_positive"] else None,
        "success_recall": success["recall"],
        "done_accuracy": metrics["done"]["accuracy"],
        "determined_f1": determined["field_f1"],
        "determined_exact": determined["exact_match"],
        "determined_steps": determined["steps"],
        "policy_gaps": gaps,
    }


class Benchmark:
    """Stages in ``root`` (one dg run directory each), shared where they do not depend on the seed."""

    def __init__(self, config: LearningConfig, root: RunDir, progress: bool) -> None:
        self.config = config
        self.root = root
        self.progress = progress
        self.data: list[str] = []
        self.held_out = ""
        self.fits: dict[str, Path] = {}
        self.audits: dict[str, dict[str, Any]] = {}
        self.models: dict[str, tuple[ExpModelConfig, int, Path]] = {}
        self.used: list[str] = []  # stage folders the results come from, in order (for the compute total)
        self.warm_starts: list[Path] = []
        self.offline = 0

    def stage(self, name: str, command: str, config: Any, body: Any) -> dict[str, Any]:
        self.used.append(name)
        return run_stage(self.root, name, command, config, body, log)

    def compute_seconds(self) -> float:
        """Wall seconds of every stage the results come from, including stages finished by earlier invocations
        (from each run directory's start and finish times) and the behaviour-cloning warm starts."""
        total = 0.0
        for name in dict.fromkeys(self.used):
            record = RunDir.read_meta(self.root.path / name)
            if record.get("finished"):
                finished = datetime.fromisoformat(record["finished"])
                total += (finished - datetime.fromisoformat(record["started"])).total_seconds()
        for folder in dict.fromkeys(self.warm_starts):  # bc.json files written before this was timed count 0
            total += float(json.loads((folder / "bc.json").read_text()).get("seconds", 0.0))
        return total

    # -- shared: data, experience models, audits ------------------------------------------------------
    def collect(self) -> None:
        self.data, self.held_out = collect_data(self.config, self.root, progress=self.progress, log=log)
        # real transitions of the offline data the experience models are fitted on (the equal-budget run's budget)
        self.offline = sum(len(trajectory.steps) for trajectory in read_data(self.data))

    def expmodel(self, variant: str, expmodel: ExpModelConfig, seed: int | None = None) -> Path:
        """Fit (once) and audit an experience model variant (fit seed: ``seed``, default the config's); its run
        directory."""
        if variant in self.fits:
            return self.fits[variant]
        seed = self.config.seed if seed is None else seed
        for known, (other, other_seed, folder) in self.models.items():
            if (other, other_seed) == (expmodel, seed):  # the same model under another name (a sweep's default)
                self.fits[variant], self.audits[variant] = folder, self.audits[known]
                return folder
        fit = FitConfig(data=self.data, expmodel=expmodel, trainer=self.config.trainer, seed=seed)
        self.stage(f"expmodel-{variant}", "expmodel fit", fit, lambda c, r: run_fit(c, r, progress=self.progress))
        folder = self.root.path / f"expmodel-{variant}"
        config = self.config
        fidelity = PolicyFidelityConfig(episodes=config.audit_policy_episodes, max_steps=config.env.max_steps)
        audit = AuditConfig(
            expmodel=str(folder),
            held_out=[self.held_out],
            open_loop_episodes=config.audit_open_loop,
            ablations=False,
            permutations=50,
            policy_fidelity=fidelity,
        )
        metrics = self.stage(
            f"audit-{variant}", "expmodel audit", audit, lambda c, r: run_audit(c, r, progress=self.progress)
        )
        self.audits[variant] = fidelity_summary(metrics, self.root.path / f"audit-{variant}" / "audit.json")
        if config.audit_train_episodes:
            train_audit = audit.model_copy(
                update={
                    "held_out": [self.train_task_episodes()],
                    "max_episodes": config.audit_train_episodes,
                    "open_loop_episodes": 0,
                }
            )
            metrics = self.stage(
                f"audit-train-{variant}",
                "expmodel audit",
                train_audit,
                lambda c, r: run_audit(c, r, progress=self.progress),
            )
            report = self.root.path / f"audit-train-{variant}" / "audit.json"
            self.audits[variant]["train_tasks"] = fidelity_summary(metrics, report)
        self.fits[variant] = folder
        self.models[variant] = (expmodel, seed, folder)
        return folder

    def train_task_episodes(self) -> str:
        """Fresh noisy-expert episodes of the training tasks (what synthetic training plays; not in the data)."""
        config = CollectConfig(env=self.config.env, tasks="train", policy="noisy-expert", episodes_per_task=1, seed=3)
        metrics = self.stage(
            "04-collect-train-audit", "collect", config, lambda c, r: run_collect(c, r, progress=self.progress)
        )
        return str(metrics["trajectories"])

    # -- per seed -----------------------------------------------------------------------------------
    def initial_policy(self, seed: int) -> Path:
        """The policy every method starts from: untrained, or warm-started by behaviour cloning."""
        untrained = initial_policy(self.config, self.data, self.root.path / f"policy-initial-s{seed}", seed=seed)
        epochs = self.config.warm_start_epochs
        if not epochs:
            return untrained
        folder = self.root.path / f"policy-bc{epochs}-s{seed}"
        self.warm_starts.append(folder)
        if not (folder / "policy.json").exists():
            pairs = demonstrations(read_data(self.data), only_successful=True)
            log(f"[policy-bc{epochs}-s{seed}] behaviour cloning on {len(pairs)} expert steps, {epochs} epochs")
            started = time.perf_counter()
            policy = load_policy(untrained, seed=seed)
            losses = behaviour_cloning(policy, pairs, epochs=epochs, learning_rate=self.config.algorithm.learning_rate)
            save_policy(policy, self.config.policy, folder)
            record = {"demonstration_steps": len(pairs), "epoch_losses": losses}
            (folder / "bc.json").write_text(json.dumps({**record, "seconds": time.perf_counter() - started}))
        return folder

    def train(self, name: str, config: TrainConfig) -> dict[str, Any]:
        return self.stage(name, "train", config, lambda c, r: run_train(c, r, progress=self.progress))

    def evaluate(self, name: str, policy: str, seed: int) -> float:
        config = EvalConfig(
            env=self.config.env,
            tasks="test",
            policy=policy,
            seeds=[seed],
            episodes_per_task=self.config.eval_episodes_per_task,
        )
        stage = f"eval{config.episodes_per_task}-{name}"
        metrics = self.stage(stage, "eval", config, lambda c, r: run_eval(c, r, progress=self.progress))
        return float(metrics["mean"])

    def common(self, seed: int, **update: Any) -> dict[str, Any]:
        policy = self.config.policy.model_copy(update={"model": str(self.initial_policy(seed))})
        return {
            "env": self.config.env,
            "tasks": "train",
            "data": self.data,
            "policy": policy,
            "algorithm": self.config.algorithm,
            "trainer": self.config.trainer,
            "seed": seed,
            **update,
        }

    def synthetic(self, name: str, seed: int, fit: Path, **update: Any) -> dict[str, Any]:
        config = TrainConfig(
            **self.common(
                seed,
                where="synthetic",
                expmodel=str(fit),
                curriculum=update.pop("curriculum", self.config.curriculum),
                synthetic=update.pop("synthetic", self.config.synthetic),
                **update,
            )
        )
        return self.train(name, config)


def record(
    results: dict[str, list[dict[str, Any]]], method: str, seed: int, success: float, train: dict[str, Any] | None
) -> None:
    entry: dict[str, Any] = {"seed": seed, "success": success}
    if train is not None:
        entry.update(
            real_transitions=train["real_transitions"],
            synthetic_transitions=train["synthetic_transitions"],
            optimizer_steps=train["optimizer_steps"],
            seconds=train["seconds"],
        )
        if "expmodel" in train:  # the synthetic env's answers: copied exact matches, failure states
            entry["expmodel"] = {
                key: train["expmodel"].get(key) for key in ("steps", "exact_matches", "parse_failures")
            }
    results.setdefault(method, []).append(entry)


METHODS = ("initial", "real", "real-budget", "dreamgym", "s2r", "levers")
"""What ``--methods`` can pick (S2R needs DreamGym's policy and real GRPO's transition count)."""

EQUAL_BUDGET = "GRPO in real env, equal real-data budget"
LEVERS = "DreamGym + levers (synthetic only)"
MODEL_OF = {
    "DreamGym (synthetic only)": "full",
    "ablation: no curriculum": "full",
    "ablation: no replay retrieval": "no-replay",
    "ablation: no reasoning": "no-reasoning",
    LEVERS: "levers",
}
"""The experience model variant behind each synthetic method (S2R's is ``full``)."""
FIT_SEED = "DreamGym (synthetic only), fit seed "
"""Start of the name of DreamGym trained with a further fit of the full experience model (``--fit-seeds``)."""


def fit_variant(seed: int) -> str:
    return f"full-f{seed}"


def variant_of(method: str) -> str | None:
    """The experience model variant behind a method of the table (None: no experience model)."""
    if method.startswith(FIT_SEED):
        return fit_variant(int(method.removeprefix(FIT_SEED)))
    return MODEL_OF.get(method, "full" if method.startswith("DreamGym-S2R") else None)


def synthetic_method(
    bench: Benchmark,
    results: dict[str, list[dict[str, Any]]],
    method: str,
    name: str,
    seed: int,
    fit: Path,
    **update: Any,
) -> dict[str, Any]:
    """Train a policy in the synthetic env of ``fit`` (stage ``name``), evaluate it, record it as ``method``."""
    train = bench.synthetic(name, seed, fit, **update)
    record(results, method, seed, bench.evaluate(name, str(bench.root.path / name / "policy"), seed), train)
    return train


def run_seed(
    bench: Benchmark,
    seed: int,
    fits: dict[str, Path],
    results: dict[str, list[dict[str, Any]]],
    *,
    ablations: bool,
    methods: tuple[str, ...] = METHODS,
    fit_seeds: tuple[int, ...] = (),
) -> None:
    config = bench.config
    tag = f"s{seed}"
    initial = bench.initial_policy(seed)
    start = f"initial policy (BC warm start, {config.warm_start_epochs} epochs)" if config.warm_start_epochs else ""
    name = f"bc{config.warm_start_epochs}-{tag}" if config.warm_start_epochs else f"initial-{tag}"
    record(results, start or "initial policy", seed, bench.evaluate(name, str(initial), seed), None)

    no_curriculum = config.curriculum.model_copy(update={"enabled": False})
    real = bench.train(f"real-{tag}", TrainConfig(**bench.common(seed, where="real", curriculum=no_curriculum)))
    record(
        results,
        "GRPO in real env",
        seed,
        bench.evaluate(f"real-{tag}", str(bench.root.path / f"real-{tag}" / "policy"), seed),
        real,
    )
    if "real-budget" in methods:
        equal = bench.train(
            f"real-budget-{tag}",
            TrainConfig(**bench.common(seed, where="real", curriculum=no_curriculum, real_budget=bench.offline)),
        )
        policy = str(bench.root.path / f"real-budget-{tag}" / "policy")
        record(results, EQUAL_BUDGET, seed, bench.evaluate(f"real-budget-{tag}", policy, seed), equal)
    if "levers" in methods:
        synthetic_method(bench, results, LEVERS, f"levers-{tag}", seed, fits["levers"])
    if "dreamgym" not in methods:
        return

    dreamgym = synthetic_method(bench, results, "DreamGym (synthetic only)", f"dreamgym-{tag}", seed, fits["full"])
    folder = bench.root.path / f"dreamgym-{tag}"
    for fit_seed in fit_seeds:
        fit = fits[fit_variant(fit_seed)]
        synthetic_method(bench, results, f"{FIT_SEED}{fit_seed}", f"dreamgym-f{fit_seed}-{tag}", seed, fit)

    if "s2r" not in methods:
        return
    budget = max(1, math.ceil(config.s2r_fraction * real["real_transitions"]))
    s2r_config = s2r_real_phase(
        TrainConfig(**bench.common(seed, where="real", curriculum=no_curriculum)),
        folder / "policy",
        real_steps=config.s2r_real_steps,
        real_budget=budget,
    )
    s2r_real = bench.train(f"s2r-real-{tag}", s2r_config)
    combined = {
        "real_transitions": s2r_real["real_transitions"],
        "synthetic_transitions": dreamgym["synthetic_transitions"],
        "optimizer_steps": dreamgym["optimizer_steps"] + s2r_real["optimizer_steps"],
        "seconds": dreamgym["seconds"] + s2r_real["seconds"],
    }
    s2r_folder = bench.root.path / f"s2r-real-{tag}" / "policy"
    record(
        results,
        f"DreamGym-S2R ({config.s2r_fraction:.0%} real budget)",
        seed,
        bench.evaluate(f"s2r-{tag}", str(s2r_folder), seed),
        combined,
    )
    if not ablations:
        return

    for method, name, fit, update in (
        ("ablation: no replay retrieval", "no-replay", fits["no-replay"], {}),
        ("ablation: no reasoning", "no-reasoning", fits["no-reasoning"], {}),
        ("ablation: no curriculum", "no-curriculum", fits["full"], {"curriculum": no_curriculum}),
    ):
        synthetic_method(bench, results, method, f"{name}-{tag}", seed, fit, **update)


def run_sweeps(bench: Benchmark, seed: int) -> list[dict[str, Any]]:
    config = bench.config
    rows: list[dict[str, Any]] = []
    tag = f"s{seed}"
    # A sweep value whose experience model is one of the main runs' reuses that run.
    main_run = {bench.fits["full"]: "dreamgym", bench.fits["no-replay"]: "no-replay"}
    main_run[bench.fits["no-reasoning"]] = "no-reasoning"
    for k in config.sweep_top_k:
        fit = bench.expmodel(f"k{k}", config.expmodel.model_copy(update={"top_k": k}))
        name = f"{main_run[fit]}-{tag}" if fit in main_run else f"sweep-k{k}-{tag}"
        train = bench.synthetic(name, seed, fit)
        success = bench.evaluate(name, str(bench.root.path / name / "policy"), seed)
        rows.append({"sweep": "retrieval k", "value": k, "success": success, "expmodel": f"k{k}", **_cost(train)})
    for window in config.sweep_history:
        fit = bench.expmodel(f"h{window}", config.expmodel.model_copy(update={"history_window": window}))
        name = f"{main_run[fit]}-{tag}" if fit in main_run else f"sweep-h{window}-{tag}"
        train = bench.synthetic(name, seed, fit)
        success = bench.evaluate(name, str(bench.root.path / name / "policy"), seed)
        rows.append(
            {"sweep": "history window", "value": window, "success": success, "expmodel": f"h{window}", **_cost(train)}
        )
    for share in config.sweep_lambda:
        curriculum = config.curriculum.model_copy(
            update={"generated_share": share, "grow_every": config.sweep_grow_every, "enabled": True}
        )
        name = f"sweep-lambda{share:g}-{tag}"
        train = bench.synthetic(name, seed, bench.fits["full"], curriculum=curriculum)
        success = bench.evaluate(name, str(bench.root.path / name / "policy"), seed)
        cur = train.get("curriculum", {})
        rows.append(
            {
                "sweep": "lambda (generated share)",
                "value": share,
                "success": success,
                "expmodel": "full",
                "generated_drawn": cur.get("generated"),
                "generator_rejects": cur.get("generator_rejects"),
                **_cost(train),
            }
        )
    return rows


def _cost(train: dict[str, Any]) -> dict[str, Any]:
    return {key: train[key] for key in ("synthetic_transitions", "optimizer_steps", "seconds")}


ORDER = ("initial", "GRPO in real env", EQUAL_BUDGET, "DreamGym (", "DreamGym-S2R", LEVERS, "ablation")
"""Row order of the table (by the start of a method's name)."""


def _order(method: str) -> int:
    return min((i for i, start in enumerate(ORDER) if method.startswith(start)), default=len(ORDER))


def summarise(results: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    rows = []
    for method, entries in sorted(results.items(), key=lambda item: _order(item[0])):
        mean, sd = _mean_sd([entry["success"] for entry in entries])
        row: dict[str, Any] = {
            "method": method,
            "mean": mean,
            "std": sd,
            "per_seed": [entry["success"] for entry in entries],
        }
        for key in ("real_transitions", "synthetic_transitions", "optimizer_steps", "seconds"):
            values = [entry[key] for entry in entries if key in entry]
            row[key] = statistics.fmean(values) if values else None
        answered = [entry["expmodel"] for entry in entries if entry.get("expmodel", {}).get("steps")]
        if answered:  # over all seeds' synthetic steps
            steps = sum(count["steps"] for count in answered)
            row["exact_match_share"] = sum(count["exact_matches"] or 0 for count in answered) / steps
            row["failure_state_share"] = sum(count["parse_failures"] for count in answered) / steps
        rows.append(row)
    return rows


def _cell(value: Any, pattern: str = ",.0f") -> str:
    return "-" if value is None else format(value, pattern)


def model_kind(source: str, lora: bool) -> str:
    """How a table names a model: tiny (built from a config) or pretrained (and whether LoRA trained it)."""
    if source == "tiny":
        return "tiny (built from a config, trained from scratch)"
    kind = "pretrained SmolLM2-135M-Instruct" if source == "smollm2" else f"pretrained `{source}`"
    return kind + (" (LoRA)" if lora else " (full fine-tuning)")


def _gap(summary: dict[str, Any] | None, policy: str) -> str:
    gap = (summary or {}).get("policy_gaps", {}).get(policy)
    return "-" if gap is None else f"{gap['gap']:+.2f}"


def _pr(precision: float | None, recall: float | None) -> str:
    return " / ".join("-" if value is None else f"{value:.2f}" for value in (precision, recall))


def fit_seed_spread(config: LearningConfig, rows: list[dict[str, Any]]) -> str:
    """A sentence on DreamGym's spread over experience-model fits (empty without ``--fit-seeds``)."""
    fits = [row for row in rows if row["method"] == "DreamGym (synthetic only)" or row["method"].startswith(FIT_SEED)]
    if len(fits) < 2:
        return ""
    pooled, pooled_sd = _mean_sd([value for row in fits for value in row["per_seed"]])
    means = [row["mean"] for row in fits]
    seeds = [str(config.seed)] + [row["method"].removeprefix(FIT_SEED) for row in fits[1:]]
    return (
        f"DreamGym over {len(fits)} experience-model fits (fit seeds {', '.join(seeds)}) x their training seeds: "
        f"{pooled:.3f} ± {pooled_sd:.3f} (n = {sum(len(row['per_seed']) for row in fits)}); the fits' means "
        f"{' / '.join(f'{mean:.3f}' for mean in means)} (sd between fits {_mean_sd(means)[1]:.3f})."
    )


def markdown(
    config: LearningConfig,
    name: str,
    rows: list[dict[str, Any]],
    audits: dict[str, Any],
    sweeps: list[dict[str, Any]],
    ablation_seeds: list[int] | None = None,
    offline: int = 0,
) -> str:
    fit_spread = fit_seed_spread(config, rows)
    env = config.env
    seeds = max(len(row["per_seed"]) for row in rows)
    fewer = [row for row in rows if len(row["per_seed"]) < seeds]
    ablations = f" (ablations: seeds {', '.join(map(str, ablation_seeds or []))})" if fewer else ""
    levers = ", ".join(f"{key}: {json.dumps(value)}" for key, value in config.levers.items())
    lines = [
        f"# Learning benchmark: {name}",
        "",
        f"{env.name} ({env.suite if env.name == 'textworld' else 'generated problems'}, {env.games} games/problems, "
        f"max {env.max_steps} steps); held-out test split; {seeds} training seeds{ablations}, each policy "
        f"evaluated on the test split with {config.eval_episodes_per_task} episodes per task. GRPO, "
        f"{config.algorithm.steps} rollout batches x {config.algorithm.updates_per_batch} updates, "
        f"{config.algorithm.tasks_per_step} tasks x {config.algorithm.group_size} episodes per batch.",
        "",
        f"Models: policy {model_kind(config.policy.model, config.policy.lora)}; experience model "
        f"{model_kind(config.expmodel.model, config.expmodel.model != 'tiny')}, fit seed {config.seed} "
        f"({'one fit per variant' if not fit_spread else 'the full model also with the fit seeds below'}). "
        f"2 shared CPU cores. Offline data (expert + random episodes of the train split): "
        f"{offline:,} real transitions; the equal-budget real run stops at "
        f"that many (checked before each batch). Levers: {levers}.",
        "",
        "| method | held-out success (mean ± sd over seeds) | per seed | real transitions | synthetic transitions | "
        "policy updates | training s (mean) | experience model | eps_R / eps_P | expert success gap, held-out / "
        "train tasks | synthetic steps copied / failure state |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        spread = "n/a" if row["std"] != row["std"] else f"{row['std']:.3f}"
        seeds = " / ".join(f"{value:.2f}" for value in row["per_seed"])
        variant = variant_of(row["method"])
        audit = audits.get(variant) if variant else None
        fidelity, gaps = "-", "-"
        if audit is not None:
            fidelity = f"{audit['eps_R']:.3f} / {audit['eps_P']:.3f}"
            gaps = f"{_gap(audit, 'expert')} / {_gap(audit.get('train_tasks'), 'expert')}"
        answered = "-"
        if "exact_match_share" in row:
            answered = f"{row['exact_match_share']:.0%} / {row['failure_state_share']:.1%}"
        lines.append(
            f"| {row['method']} | {row['mean']:.3f} ± {spread} | {seeds} | {_cell(row['real_transitions'])} | "
            f"{_cell(row['synthetic_transitions'])} | {_cell(row['optimizer_steps'])} | {_cell(row['seconds'])} | "
            f"{variant or '-'} | {fidelity} | {gaps} | {answered} |"
        )
    if fit_spread:
        lines += ["", fit_spread]
    lines += [
        "",
        "Experience models, audited on held-out real trajectories (validation tasks, noisy expert; teacher-forced) "
        "and, for the policy gaps, by playing each policy from the same tasks and initial states in the real and the "
        "synthetic env (gap = real - synthetic success; targets: |gap| <= 0.05, success P / R >= 0.9, done accuracy "
        ">= 0.98, determined F1 >= 0.95 / exact >= 0.8, parse failures < 1%, hallucinated entities < 10% of steps). "
        "The training-task rows audit fresh noisy-expert episodes of the tasks synthetic training plays.",
        "",
        "| variant | tasks | episodes | eps_R | eps_P | success P / R | done accuracy | determined F1 / exact "
        "(steps) | parse failures | hallucinated entities | success gap random / expert / noisy-expert |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for variant, audit in audits.items():
        for label, summary in (("held-out", audit), ("train", audit.get("train_tasks"))):
            if summary is None:
                continue
            gaps = " / ".join(_gap(summary, policy) for policy in POLICIES)
            lines.append(
                f"| {variant} | {label} | {summary['episodes']} | {summary['eps_R']:.3f} | {summary['eps_P']:.3f} | "
                f"{_pr(summary['success_precision'], summary['success_recall'])} | {summary['done_accuracy']:.3f} | "
                f"{summary['determined_f1']:.3f} / {summary['determined_exact']:.3f} ({summary['determined_steps']}) | "
                f"{summary['parse_failure_rate']:.1%} | {_cell(summary.get('hallucination_rate'), '.1%')} | {gaps} |"
            )
    if sweeps:
        lines += ["", "Sweeps (first seed, DreamGym synthetic-only training):", ""]
        lines += ["| sweep | value | held-out success | synthetic transitions | training s | note |"]
        lines += ["| --- | --- | --- | --- | --- | --- |"]
        for row in sweeps:
            note = ""
            if "generator_rejects" in row:
                drawn, rejects = row.get("generated_drawn"), row.get("generator_rejects")
                note = f"generated tasks drawn {drawn}; generator rejects {rejects}"
            lines.append(
                f"| {row['sweep']} | {row['value']} | {row['success']:.3f} | {row['synthetic_transitions']:,} | "
                f"{row['seconds']:.0f} | {note} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--config", default="textworld", help="textworld, alfworld, quick, or a YAML file of LearningConfig keys"
    )
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="key=value override")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--ablation-seeds",
        type=int,
        nargs="*",
        default=None,
        help="seeds that also run the ablations (default: every seed; none given: no ablations)",
    )
    parser.add_argument(
        "--methods",
        nargs="+",
        choices=METHODS,
        default=list(METHODS),
        help="methods to run (default all; initial and real always run: the others build on them)",
    )
    parser.add_argument("--sweeps", action="store_true", help="also the retrieval-k / history / lambda sweeps")
    parser.add_argument(
        "--fit-seeds",
        type=int,
        nargs="+",
        default=[],
        help="further fit seeds of the full experience model; DreamGym is trained with each on every training seed",
    )
    parser.add_argument("--output", type=Path, default=None, help="run directories (default runs/bench-learning-NAME)")
    parser.add_argument("--results", type=Path, default=RESULTS, help="where the table, JSON and plot go")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's; 1 when sharing the machine)"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", module="lightning")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")

    path = Path(args.config)
    name = path.stem if path.suffix in (".yaml", ".yml") else args.config
    if path.suffix not in (".yaml", ".yml"):
        path = HERE / f"{args.config}.yaml"
        if not path.exists():
            sys.exit(f"unknown --config {args.config!r}: give textworld, alfworld, quick or a YAML file")
    config = load_config(LearningConfig, path, args.overrides)
    levers_expmodel(config)  # a bad `levers` stops here, before any stage runs
    output = args.output or Path("runs") / f"bench-learning-{name}"
    # The folder of the stages; each stage is a dg run directory that refuses a changed config, so a stage
    # whose settings changed gets a new name (evaluations carry their episode count in theirs).
    output.mkdir(parents=True, exist_ok=True)
    root = RunDir(output, "bench learning", resumed=False)
    started = time.perf_counter()
    bench = Benchmark(config, root, progress=not args.no_progress)
    log(f"learning benchmark {name}: seeds {args.seeds}, run directories in {output}")
    bench.collect()
    methods = tuple(method for method in METHODS if method in args.methods or method in ("initial", "real"))
    if args.sweeps and "dreamgym" not in methods:
        sys.exit("--sweeps trains DreamGym variants: keep dreamgym in --methods")
    fit_seeds = tuple(dict.fromkeys(seed for seed in args.fit_seeds if seed != config.seed))
    if fit_seeds and "dreamgym" not in methods:
        sys.exit("--fit-seeds trains DreamGym with further fits: keep dreamgym in --methods")
    if "s2r" in methods and "dreamgym" not in methods:
        sys.exit("--methods s2r needs dreamgym (its real phase starts from DreamGym's policy)")
    ablation_seeds = args.seeds if args.ablation_seeds is None else args.ablation_seeds
    if "dreamgym" not in methods:
        ablation_seeds = []
    fits = {"full": bench.expmodel("full", config.expmodel)} if "dreamgym" in methods else {}
    for fit_seed in fit_seeds:
        fits[fit_variant(fit_seed)] = bench.expmodel(fit_variant(fit_seed), config.expmodel, seed=fit_seed)
    if "levers" in methods:
        fits["levers"] = bench.expmodel("levers", levers_expmodel(config))
    if ablation_seeds or args.sweeps:
        fits["no-replay"] = bench.expmodel("no-replay", config.expmodel.model_copy(update={"top_k": 0}))
        fits["no-reasoning"] = bench.expmodel("no-reasoning", config.expmodel.model_copy(update={"reasoning": False}))
    results: dict[str, list[dict[str, Any]]] = {}
    for seed in args.seeds:
        run_seed(bench, seed, fits, results, ablations=seed in ablation_seeds, methods=methods, fit_seeds=fit_seeds)
    sweeps = run_sweeps(bench, args.seeds[0]) if args.sweeps else []
    rows = summarise(results)
    table = markdown(config, name, rows, bench.audits, sweeps, ablation_seeds, bench.offline)
    seconds = time.perf_counter() - started
    compute = bench.compute_seconds()
    total = f"Stage compute {compute / 60:.0f} min (this invocation {seconds / 60:.0f} min; finished stages reused)."
    report = {
        "name": name,
        "config": config.model_dump(mode="json"),
        "seeds": args.seeds,
        "ablation_seeds": ablation_seeds,
        "fit_seeds": [config.seed, *fit_seeds],
        "rows": rows,
        "per_seed": results,
        "expmodels": bench.audits,
        "offline_transitions": bench.offline,
        "sweeps": sweeps,
        "seconds": seconds,
        "compute_seconds": compute,
        "machine": {"python": platform.python_version(), "machine": platform.machine()},
    }
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / f"learning_{name}.json").write_text(json.dumps(report, indent=2, default=str))
    (args.results / f"learning_{name}.md").write_text(table + f"\n\n{total}\n")
    success_bars(rows, args.results / f"learning_{name}.png", title=f"{name}: held-out success")
    (output / "results.json").write_text(json.dumps(report, indent=2, default=str))
    (output / "summary.md").write_text(table + "\n")
    log("\n" + table + f"\n\n{total} Results in {args.results}/learning_{name}.*")


if __name__ == "__main__":
    main()
