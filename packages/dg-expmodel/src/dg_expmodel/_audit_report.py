"""Run the audits under every ablation and write the report: JSON, a markdown table and plots."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dg_core import ExperienceModel, Trajectory
from dg_expmodel._audit import (
    ABLATIONS,
    FAILURE_TYPES,
    Ablation,
    OpenLoop,
    TeacherForced,
    model_for,
    open_loop,
    teacher_forced,
)
from dg_expmodel._audit_metrics import BinaryStats, TagStats
from dg_expmodel._fields import fields_markdown
from dg_expmodel._format import PromptOptions
from dg_expmodel._policy_fidelity import PolicyFidelity, PolicyFidelitySetup, distinct_tasks, policy_fidelity
from dg_expmodel._synthetic import BatchedSyntheticEnv, Retriever


@dataclass
class AuditRow:
    """The results of one ablation."""

    ablation: Ablation
    teacher_forced: TeacherForced
    open_loop: OpenLoop | None
    applied: bool = True
    """False when the ablation's reasoning switch does not apply to this kind of model."""


@dataclass
class AuditReport:
    """Every ablation's results, and where they were written."""

    rows: list[AuditRow] = field(default_factory=list)
    files: dict[str, Path] = field(default_factory=dict)
    policy_fidelity: PolicyFidelity | None = None
    """The same policies in the real and the synthetic env (full configuration), when asked for."""

    def row(self, name: str) -> AuditRow:
        """The row of ablation ``name``."""
        for row in self.rows:
            if row.ablation.name == name:
                return row
        raise KeyError(f"no ablation {name!r} in this report; have {[r.ablation.name for r in self.rows]}")

    def as_dict(self) -> dict[str, Any]:
        """The JSON report: one block per ablation, and ``policy_fidelity`` (``None`` when not measured)."""
        report: dict[str, Any] = {
            row.ablation.name: {
                "ablation": vars(row.ablation),
                "applied": row.applied,
                "teacher_forced": row.teacher_forced.as_dict(),
                "open_loop": row.open_loop.as_dict() if row.open_loop else None,
            }
            for row in self.rows
        }
        report["policy_fidelity"] = self.policy_fidelity.as_dict() if self.policy_fidelity else None
        return report

    def markdown(self) -> str:
        """The ablation table."""
        # Success (reward > 0 at the end of an episode) and done are rare positives: precision and recall say
        # more than accuracy, and the count of positives says how much to trust them. Irreversible-action tags
        # are scored over the transitions whose real next state lists some ("-" where none does).
        head = (
            "| ablation | eps_R | eps_P | success P / R (positives) | done P / R (positives) | exact next state | "
            "action F1 | hallucination | parse failures | MMD² (p) | open-loop faithful | "
            "irreversible tags P / R (transitions) |\n" + "| --- " * 12 + "|"
        )
        lines = [head]
        for row in self.rows:
            tf = row.teacher_forced
            mmd = f"{tf.mmd2:.4f} ({tf.mmd_p_value:.3f})" if tf.mmd2 is not None and tf.mmd_p_value is not None else "-"
            loop = f"{row.open_loop.faithful_episodes}/{row.open_loop.episodes}" if row.open_loop else "-"
            name = row.ablation.name + ("" if row.applied else " (n/a)")
            lines.append(
                f"| {name} | {tf.eps_r:.3f} | {tf.eps_p:.3f} | {_precision_recall(tf.success)} | "
                f"{_precision_recall(tf.done)} | "
                f"{tf.exact_match:.3f} | {tf.action_f1:.3f} | {tf.hallucination_rate:.3f} | "
                f"{tf.parse_failure_rate:.3f} | {mmd} | {loop} | {_tags(tf.irreversible)} |"
            )
        lines += ["", _simulator_line(self.rows[0])] if self.rows else []
        fields = fields_markdown([(row.ablation.name, row.teacher_forced.fields) for row in self.rows])
        lines += ["", fields] if fields else []
        lines += ["", self.policy_fidelity.markdown()] if self.policy_fidelity else []
        return "\n".join(lines)


def _simulator_line(row: AuditRow) -> str:
    scale = row.teacher_forced.simulator
    eps_r = "-" if scale.eps_r is None else f"{scale.eps_r:.3f}"
    eps_p = "-" if scale.eps_p is None else f"{scale.eps_p:.3f}"
    kinds = ", ".join(f"{kind} {count}" for kind, count in scale.transition_errors.items()) or "none"
    return (
        f"On the controlled-error simulator's scale (the tolerance map's axes; {row.ablation.name}): eps_R {eps_r} "
        f"({scale.reward_errors} of {scale.reward_eligible} steps the model ends), eps_P {eps_p} (steps with a "
        f"transition error; {kinds})."
    )


def _precision_recall(stats: BinaryStats) -> str:
    return f"{stats.precision:.3f} / {stats.recall:.3f} ({stats.positives})"


def _tags(stats: TagStats) -> str:
    if stats.precision is None or stats.recall is None:
        return "-"
    return f"{stats.precision:.3f} / {stats.recall:.3f} ({stats.transitions})"


def _progress(total: int, description: str, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=description, disable=not enabled, leave=False)


def audit_experience_model(
    model: ExperienceModel,
    held_out: Sequence[Trajectory],
    *,
    retriever: Retriever | None = None,
    encoder: Any = None,
    options: PromptOptions | None = None,
    ablations: Sequence[Ablation] = ABLATIONS,
    open_loop_episodes: int | None = None,
    output_dir: str | Path | None = None,
    permutations: int = 200,
    progress: bool = True,
    policy_fidelity: PolicyFidelitySetup | None = None,
) -> AuditReport:
    """Audit ``model`` on held-out real trajectories under each ablation.

    Args:
        model: The experience model (an :class:`~dg_expmodel.LLMExperienceModel` gets the reasoning ablation
            through its prompt options; other models run every other ablation and mark that one n/a).
        held_out: Real trajectories the model was not trained on.
        retriever: Grounding transitions (built from training data only); ``None`` audits without retrieval.
        encoder: Optional embedder (``encode(texts)``, e.g. dg-replay's MiniLM) for embedding similarity and MMD.
        options: Prompt options of the full configuration (history window H, retrieved k).
        ablations: Rows of the table.
        open_loop_episodes: How many held-out episodes to replay open loop (default: all; 0 skips).
        output_dir: Where to write ``audit.json``, ``audit.md`` and plots (``None``: write nothing).
        permutations: Permutations of the MMD test.
        progress: Show progress bars.
        policy_fidelity: Also play these policies in the real env and in the model's synthetic env (full
            configuration) and compare them (:func:`~dg_expmodel.policy_fidelity`); ``None`` skips it.
    """
    options = options or PromptOptions()
    episodes = list(held_out)[: open_loop_episodes if open_loop_episodes is not None else len(held_out)]
    total_steps = sum(t.num_steps for t in held_out)
    report = AuditReport()
    for ablation in ablations:
        variant, applied = model_for(model, ablation, options)
        history = options.history_window if ablation.history else 0
        active_retriever = retriever if ablation.retrieval else None
        bar = _progress(total_steps + len(episodes), f"audit {ablation.name}", progress)
        update = bar.update
        forced = teacher_forced(
            variant,
            held_out,
            history_window=history,
            retriever=active_retriever,
            top_k=options.max_retrieved,
            encoder=encoder,
            permutations=permutations,
            progress=update,
        )
        looped = (
            open_loop(
                variant,
                episodes,
                history_window=history,
                retriever=active_retriever,
                top_k=options.max_retrieved,
                progress=update,
            )
            if episodes
            else None
        )
        bar.close()
        report.rows.append(AuditRow(ablation=ablation, teacher_forced=forced, open_loop=looped, applied=applied))
    if policy_fidelity is not None:
        report.policy_fidelity = _policy_fidelity(model, held_out, retriever, options, policy_fidelity, progress)
    if output_dir is not None:
        write_report(report, Path(output_dir))
    return report


def _policy_fidelity(
    model: ExperienceModel,
    held_out: Sequence[Trajectory],
    retriever: Retriever | None,
    options: PromptOptions,
    setup: PolicyFidelitySetup,
    progress: bool,
) -> PolicyFidelity:
    """Policy-level fidelity in the synthetic env of ``model`` under the full configuration."""
    probe = setup.real_env()
    max_steps = probe.max_steps
    probe.close()
    synthetic = BatchedSyntheticEnv(
        model_for(model, ABLATIONS[0], options)[0],
        retriever=retriever,
        top_k=options.max_retrieved if retriever is not None else 0,
        history_window=options.history_window,
        max_steps=max_steps,
    )
    try:
        return policy_fidelity(
            setup.real_env,
            synthetic,
            list(setup.tasks) if setup.tasks is not None else distinct_tasks(held_out),
            setup.policies,
            episodes=setup.episodes,
            seed=setup.seed,
            batch_size=setup.batch_size,
            target=setup.target,
            progress=progress,
        )
    finally:
        synthetic.close()


def write_report(report: AuditReport, directory: Path) -> dict[str, Path]:
    """Write ``audit.json``, ``audit.md`` and (with matplotlib) ``audit_open_loop.png`` and ``audit_failures.png``."""
    directory.mkdir(parents=True, exist_ok=True)
    files = {"json": directory / "audit.json", "markdown": directory / "audit.md"}
    files["json"].write_text(json.dumps(report.as_dict(), indent=2))
    files["markdown"].write_text(report.markdown() + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        report.files = files
        return files
    rows = [row for row in report.rows if row.open_loop is not None]
    if rows:
        figure, axis = plt.subplots(figsize=(6, 4))
        for row in rows:
            assert row.open_loop is not None
            axis.plot(
                range(len(row.open_loop.token_f1_by_step)),
                row.open_loop.token_f1_by_step,
                marker="o",
                label=row.ablation.name,
            )
        axis.set_xlabel("step of the replayed episode")
        axis.set_ylabel("next-state token F1 vs real")
        axis.set_ylim(0, 1.05)
        axis.set_title("Open-loop fidelity by step")
        axis.legend()
        figure.tight_layout()
        files["open_loop_plot"] = directory / "audit_open_loop.png"
        figure.savefig(files["open_loop_plot"], dpi=120)
        plt.close(figure)

        figure, axis = plt.subplots(figsize=(7, 4))
        width = 0.8 / len(rows)
        for position, row in enumerate(rows):
            assert row.open_loop is not None
            counts = [row.open_loop.first_failure.get(name, 0) for name in FAILURE_TYPES]
            axis.bar(
                [i + position * width for i in range(len(FAILURE_TYPES))], counts, width=width, label=row.ablation.name
            )
        axis.set_xticks(
            [i + 0.4 - width / 2 for i in range(len(FAILURE_TYPES))], FAILURE_TYPES, rotation=35, ha="right"
        )
        axis.set_ylabel("episodes")
        axis.set_title("Where open-loop replay first goes wrong")
        axis.legend()
        figure.tight_layout()
        files["failure_plot"] = directory / "audit_failures.png"
        figure.savefig(files["failure_plot"], dpi=120)
        plt.close(figure)
    report.files = files
    return files
