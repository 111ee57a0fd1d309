"""Fidelity audits of an experience model on held-out real trajectories.

The DreamGym bound says real-environment improvement follows when the reward error eps_R and the
transition error eps_P are small; these audits measure both, with rule-based checks:

- **teacher-forced** (each real step, with its real history): success / done accuracy, precision, recall, F1
  and confusion (eps_R is 1 - reward accuracy), next-state exact match, token F1, available-action F1 and
  embedding similarity (eps_P is 1 - mean token F1), irreversible-action tag precision / recall (over the
  transitions whose real next state lists irreversible actions), hallucinated entities, parse failures, and
  the MMD between the embeddings of predicted and real next states with a permutation test, and per-field
  next-state fidelity (room, visible objects, inventory, actions) on determined and revealing transitions apart
  (:mod:`dg_expmodel._fields`);
- **open-loop** (real action sequences replayed in the :class:`SyntheticEnv`, which feeds on its own
  predictions): token F1 by step and where each episode first goes wrong, in a failure typology.

Every audit runs under ablations (no retrieval, no reasoning, no history) so the report is a table.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dg_core import ExperienceModel, ExperiencePrediction, ExperienceQuery, State, Step, Trajectory
from dg_expmodel._audit_metrics import (
    BinaryStats,
    TagStats,
    content_words,
    mean_of,
    mmd_permutation_test,
    set_f1,
    token_f1,
)
from dg_expmodel._fields import FieldFidelity
from dg_expmodel._format import PromptOptions
from dg_expmodel._synthetic import Retriever, SyntheticEnv, with_initial_state

FAILURE_TYPES = (
    "parse_failure",
    "premature_done",
    "missed_done",
    "wrong_reward",
    "wrong_place",
    "invented_object",
    "missing_object",
    "wrong_actions",
    "other",
)
"""Where an open-loop episode first diverges from the real one."""


@dataclass(frozen=True)
class Ablation:
    """One row of the audit table: which ingredients the experience model gets."""

    name: str
    retrieval: bool = True
    reasoning: bool = True
    history: bool = True


ABLATIONS = (
    Ablation("full"),
    Ablation("no_retrieval", retrieval=False),
    Ablation("no_reasoning", reasoning=False),
    Ablation("no_history", history=False),
)


def _context_words(query: ExperienceQuery) -> set[str]:
    texts = [query.task.instruction, query.state.text, query.action.text, *(query.state.available_actions or ())]
    for step in (*query.history, *query.retrieved):
        texts += [step.state.text, step.action.text, step.next_state.text, *(step.next_state.available_actions or ())]
    return set().union(*(content_words(t) for t in texts))


def hallucinated_entities(query: ExperienceQuery, prediction: ExperiencePrediction, real_next: str = "") -> set[str]:
    """Entities of the predicted next state found in neither the state, the history, the retrieved steps nor
    the task (nor, when given, the real next state: an object the real environment reveals is not invented)."""
    predicted = content_words(prediction.next_state.text)
    for action in prediction.next_state.available_actions or ():
        predicted |= content_words(action)
    return predicted - _context_words(query) - content_words(real_next)


def _success(reward: float, done: bool) -> bool:
    return done and reward > 0


def _group(task_metadata: dict[str, Any], env_id: str) -> str:
    task_type = task_metadata.get("task_type")
    return f"{env_id}/{task_type}" if task_type else env_id


@dataclass
class SimulatorScale:
    """The teacher-forced errors counted as :class:`~dg_expmodel.PerturbedEnv` injects them, so that a learned
    model can be placed on the tolerance map of the controlled-error simulators (``benchmarks/tolerance``).

    ``eps_p`` is the share of steps with a transition error of the typology (one kind per step, the first in the
    order of :func:`transition_error`; a parse failure counts: the synthetic env answers it with the failure state,
    the state unchanged).
    ``eps_r`` is the share of the steps the model ends (predicts done) whose success is not the real step's: the
    simulator's reward errors fall on the steps that end the episode as the agent sees it. Neither is the
    headline eps_R (all steps) / eps_P (1 - token F1) of the audit."""

    steps: int = 0
    transition_errors: dict[str, int] = field(default_factory=dict)
    reward_eligible: int = 0
    reward_errors: int = 0

    @property
    def eps_p(self) -> float | None:
        """Transition errors per step (None without steps)."""
        return sum(self.transition_errors.values()) / self.steps if self.steps else None

    @property
    def eps_r(self) -> float | None:
        """Reward errors per step the model ended (None when it ended none)."""
        return self.reward_errors / self.reward_eligible if self.reward_eligible else None

    @classmethod
    def of(
        cls,
        queries: Sequence[ExperienceQuery],
        predictions: Sequence[ExperiencePrediction],
        real: Sequence[Step],
        threshold: float = 0.9,
    ) -> SimulatorScale:
        """Count the errors of teacher-forced ``predictions`` of the ``real`` steps."""
        kinds: Counter[str] = Counter()
        eligible = errors = 0
        for query, prediction, step in zip(queries, predictions, real, strict=True):
            kind = transition_error(prediction.parse_ok, prediction.done, prediction.next_state, step, query, threshold)
            if kind is not None:
                kinds[kind] += 1
            if prediction.done:
                eligible += 1
                errors += _success(prediction.reward, prediction.done) != _success(step.reward, step.done)
        return cls(
            steps=len(real),
            transition_errors={name: kinds[name] for name in FAILURE_TYPES if kinds[name]},
            reward_eligible=eligible,
            reward_errors=errors,
        )

    def as_dict(self) -> dict[str, Any]:
        """For the JSON report."""
        return {
            "eps_R": self.eps_r,
            "eps_P": self.eps_p,
            "steps": self.steps,
            "transition_errors": self.transition_errors,
            "reward_eligible": self.reward_eligible,
            "reward_errors": self.reward_errors,
        }


@dataclass
class TeacherForced:
    """Per-step teacher-forced results of one ablation."""

    success: BinaryStats
    done: BinaryStats
    reward_accuracy: float
    exact_match: float
    token_f1: float
    action_f1: float
    embedding_similarity: float | None
    hallucination_rate: float
    hallucinated_per_step: float
    parse_failure_rate: float
    mmd2: float | None
    mmd_p_value: float | None
    per_group: dict[str, dict[str, float]] = field(default_factory=dict)
    steps: int = 0
    irreversible: TagStats = field(default_factory=lambda: TagStats.of([], []))
    """Irreversible-action tags of the predicted next states against the real ones."""
    simulator: SimulatorScale = field(default_factory=SimulatorScale)
    """The same errors on the controlled-error simulator's scale (for the tolerance map)."""
    fields: FieldFidelity = field(default_factory=lambda: FieldFidelity.of([], [], []))
    """Per-field next-state fidelity, determined and revealing transitions apart."""

    @property
    def eps_r(self) -> float:
        """Reward error: share of steps whose reward is mispredicted."""
        return 1 - self.reward_accuracy

    @property
    def eps_p(self) -> float:
        """Transition error: 1 - mean token F1 of the next state."""
        return 1 - self.token_f1

    def as_dict(self) -> dict[str, Any]:
        """For the JSON report."""
        return {
            "steps": self.steps,
            "eps_R": self.eps_r,
            "eps_P": self.eps_p,
            "reward_accuracy": self.reward_accuracy,
            "success": self.success.as_dict(),
            "done": self.done.as_dict(),
            "next_state_exact_match": self.exact_match,
            "next_state_token_f1": self.token_f1,
            "available_action_f1": self.action_f1,
            "embedding_similarity": self.embedding_similarity,
            "hallucination_rate": self.hallucination_rate,
            "hallucinated_entities_per_step": self.hallucinated_per_step,
            "parse_failure_rate": self.parse_failure_rate,
            "irreversible_tags": self.irreversible.as_dict(),
            "simulator_scale": self.simulator.as_dict(),
            "next_state_fields": self.fields.as_dict(),
            "mmd2": self.mmd2,
            "mmd_p_value": self.mmd_p_value,
            "per_group": self.per_group,
        }


@dataclass
class OpenLoop:
    """Open-loop replay results of one ablation."""

    episodes: int
    token_f1_by_step: list[float]
    first_failure: dict[str, int]
    faithful_episodes: int
    """Episodes replayed to the end without diverging."""

    def as_dict(self) -> dict[str, Any]:
        """For the JSON report."""
        return {
            "episodes": self.episodes,
            "faithful_episodes": self.faithful_episodes,
            "token_f1_by_step": self.token_f1_by_step,
            "first_failure": self.first_failure,
        }


def _queries(
    trajectories: Sequence[Trajectory], history_window: int, retriever: Retriever | None, top_k: int
) -> tuple[list[ExperienceQuery], list[Step]]:
    queries, real = [], []
    for trajectory in trajectories:
        for position, step in enumerate(trajectory.steps):
            history = trajectory.steps[:position][-history_window:] if history_window else ()
            queries.append(ExperienceQuery(task=trajectory.task, history=history, state=step.state, action=step.action))
            real.append(step)
    if retriever is not None and top_k > 0:
        retrieved = retriever(queries, top_k)
        queries = [q.model_copy(update={"retrieved": tuple(r)}) for q, r in zip(queries, retrieved, strict=True)]
    return queries, real


def teacher_forced(
    model: ExperienceModel,
    trajectories: Sequence[Trajectory],
    *,
    history_window: int,
    retriever: Retriever | None,
    top_k: int,
    encoder: Any = None,
    batch_size: int = 32,
    permutations: int = 200,
    progress: Callable[[int], None] | None = None,
) -> TeacherForced:
    """Predict every held-out real step from its real context and compare."""
    queries, real = _queries(trajectories, history_window, retriever, top_k)
    predictions: list[ExperiencePrediction] = []
    for start in range(0, len(queries), batch_size):
        predictions += model.predict(queries[start : start + batch_size])
        if progress:
            progress(min(batch_size, len(queries) - start))
    parsed = [p.parse_ok for p in predictions]
    hallucinated = [
        hallucinated_entities(q, p, r.next_state.text) if ok else set()
        for q, p, r, ok in zip(queries, predictions, real, parsed, strict=True)
    ]
    groups: dict[str, list[int]] = defaultdict(list)
    for index, query in enumerate(queries):
        groups[_group(query.task.metadata, query.task.env_id)].append(index)
    per_group = {}
    for name, indices in sorted(groups.items()):
        per_group[name] = {
            "steps": len(indices),
            "reward_accuracy": mean_of(predictions[i].reward == real[i].reward for i in indices),
            "success_f1": BinaryStats.of(
                [_success(predictions[i].reward, predictions[i].done) for i in indices],
                [_success(real[i].reward, real[i].done) for i in indices],
            ).f1,
            "next_state_token_f1": mean_of(
                token_f1(predictions[i].next_state.text, real[i].next_state.text) for i in indices
            ),
        }
    similarity = mmd2 = p_value = None
    if encoder is not None and predictions:
        predicted_vectors = np.asarray(encoder.encode([p.next_state.text for p in predictions]), dtype=np.float64)
        real_vectors = np.asarray(encoder.encode([r.next_state.text for r in real]), dtype=np.float64)
        norms = np.linalg.norm(predicted_vectors, axis=1) * np.linalg.norm(real_vectors, axis=1)
        similarity = float(np.mean(np.sum(predicted_vectors * real_vectors, axis=1) / np.maximum(norms, 1e-12)))
        mmd2, p_value = mmd_permutation_test(predicted_vectors, real_vectors, permutations=permutations)
    return TeacherForced(
        success=BinaryStats.of(
            [_success(p.reward, p.done) for p in predictions], [_success(r.reward, r.done) for r in real]
        ),
        done=BinaryStats.of([p.done for p in predictions], [r.done for r in real]),
        reward_accuracy=mean_of(p.reward == r.reward for p, r in zip(predictions, real, strict=True)),
        exact_match=mean_of(p.next_state.text == r.next_state.text for p, r in zip(predictions, real, strict=True)),
        token_f1=mean_of(
            token_f1(p.next_state.text, r.next_state.text) for p, r in zip(predictions, real, strict=True)
        ),
        action_f1=mean_of(
            set_f1(p.next_state.available_actions, r.next_state.available_actions)
            for p, r in zip(predictions, real, strict=True)
        ),
        embedding_similarity=similarity,
        hallucination_rate=mean_of(bool(h) for h in hallucinated),
        hallucinated_per_step=mean_of(len(h) for h in hallucinated),
        parse_failure_rate=1 - mean_of(parsed),
        mmd2=mmd2,
        mmd_p_value=p_value,
        per_group=per_group,
        steps=len(real),
        irreversible=TagStats.of(
            [p.next_state.irreversible_actions for p in predictions], [r.next_state.irreversible_actions for r in real]
        ),
        simulator=SimulatorScale.of(queries, predictions, real),
        fields=FieldFidelity.of(queries, predictions, real),
    )


STATE_ERROR_TYPES = ("wrong_place", "invented_object", "missing_object", "wrong_actions", "other")
"""Transition errors in the next state itself (after the done checks)."""


def _state_error(predicted: State, actual: State, context: ExperienceQuery, threshold: float) -> str | None:
    if token_f1(predicted.text, actual.text) >= threshold:
        same_actions = set_f1(predicted.available_actions, actual.available_actions) == 1.0
        same_tags = set(predicted.irreversible_actions) == set(actual.irreversible_actions)
        return None if same_actions and same_tags else "wrong_actions"
    first_predicted, first_real = (predicted.text.split("\n")[0], actual.text.split("\n")[0])
    if token_f1(first_predicted, first_real) < 0.5:
        return "wrong_place"
    invented = content_words(predicted.text) - content_words(actual.text) - _context_words(context)
    if invented:
        return "invented_object"
    if content_words(actual.text) - content_words(predicted.text):
        return "missing_object"
    return "other"


def transition_error(
    parse_ok: bool, done: bool, next_state: State, real: Step, context: ExperienceQuery, threshold: float = 0.9
) -> str | None:
    """The typology's kind of transition error in one predicted step against the real one (reward aside), or
    None: parse failure, then early / missed done, then the next state (text token F1 under ``threshold``: wrong
    place, invented or missing object, other; above it, a different action or tag set: wrong actions)."""
    if not parse_ok:
        return "parse_failure"
    if done and not real.done:
        return "premature_done"
    if real.done and not done:
        return "missed_done"
    return _state_error(next_state, real.next_state, context, threshold)


def _first_failure(synthetic: Step, real: Step, context: ExperienceQuery, threshold: float) -> str | None:
    parse_ok = synthetic.info.get("parse_ok") is not False
    kind = transition_error(parse_ok, synthetic.done, synthetic.next_state, real, context, threshold)
    if kind in ("parse_failure", "premature_done", "missed_done"):
        return kind
    if synthetic.reward != real.reward:
        return "wrong_reward"
    return kind


def open_loop(
    model: ExperienceModel,
    trajectories: Sequence[Trajectory],
    *,
    history_window: int,
    retriever: Retriever | None,
    top_k: int,
    threshold: float = 0.9,
    progress: Callable[[int], None] | None = None,
) -> OpenLoop:
    """Replay each real episode's actions in the synthetic environment and find where it first diverges."""
    by_step: dict[int, list[float]] = defaultdict(list)
    failures: Counter[str] = Counter()
    faithful = 0
    for trajectory in trajectories:
        if not trajectory.steps:
            continue
        env = SyntheticEnv(
            model,
            retriever=retriever,
            top_k=top_k if retriever is not None else 0,
            history_window=history_window,
            max_steps=len(trajectory.steps) + 1,
        )
        env.reset(with_initial_state(trajectory.task, trajectory.steps[0].state), seed=trajectory.task.seed)
        failure = None
        for real in trajectory.steps:
            result = env.step(real.action)
            synthetic = env.trajectory().steps[-1]
            by_step[real.step_index].append(token_f1(result.state.text, real.next_state.text))
            if failure is None:
                context = ExperienceQuery(task=trajectory.task, history=(), state=synthetic.state, action=real.action)
                failure = _first_failure(synthetic, real, context, threshold)
                if synthetic.info.get("invalid_action") and failure is None:
                    failure = "wrong_actions"
            if result.done:
                break
        env.close()
        if failure is None:
            faithful += 1
        else:
            failures[failure] += 1
        if progress:
            progress(1)
    steps = sorted(by_step)
    return OpenLoop(
        episodes=len(trajectories),
        token_f1_by_step=[mean_of(by_step[s]) for s in steps],
        first_failure={name: failures[name] for name in FAILURE_TYPES if failures[name]},
        faithful_episodes=faithful,
    )


def model_for(model: ExperienceModel, ablation: Ablation, options: PromptOptions) -> tuple[ExperienceModel, bool]:
    """The model under an ablation, and whether the reasoning switch could be applied to it."""
    with_options = getattr(model, "with_options", None)
    if with_options is None:
        return model, ablation.reasoning
    # An ablation only takes ingredients away: a model trained without reasoning is audited without it.
    variant = options.model_copy(update={"reasoning": options.reasoning and ablation.reasoning})
    return with_options(variant), True
