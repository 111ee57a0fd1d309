"""The synthetic environment: transitions predicted by an experience model, grounded by retrieval.

:class:`BatchedSyntheticEnv` answers a whole batch of episodes with one ``predict`` call; :class:`SyntheticEnv`
is the single-episode form. Both follow the dg-core contract (and pass its conformance suite): an action
outside the available set gets the failure state with reward 0 without calling the model, a step limit
truncates, every step is recorded with the model's reasoning. New synthetic transitions are handed to
``write_back`` (for instance a replay buffer's ``add``). The real environment is never needed at run time:
initial states come with the tasks.

Irreversible actions (those the current state tags in ``State.irreversible_actions``: purchase, delete,
submit) can be made costly in the synthetic env, so that a policy trained in it learns to avoid the ones that
do not accomplish the task (``irreversible=``, :data:`IRREVERSIBLE_MODES`):

- ``allow`` (default): the experience model's answer as it is;
- ``penalize``: an irreversible step that does not succeed (the prediction is not a success) loses
  ``irreversible_penalty`` from its reward (the reward may go below 0); a successful one (the purchase the task
  asks for) keeps its reward;
- ``end``: an irreversible step ends the episode (not a success unless the model predicted one), since what a
  simulator says after an action that cannot be undone is least to be trusted.

Every irreversible step records ``info["irreversible"]`` (the mode applied) and is counted in
:attr:`~BatchedSyntheticEnv.irreversible_stats`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Literal

from dg_core import (
    Action,
    BatchedEnv,
    ConfigError,
    Env,
    ExperienceModel,
    ExperiencePrediction,
    ExperienceQuery,
    Source,
    State,
    Step,
    StepResult,
    Task,
)
from dg_expmodel._parse import failure_prediction

Retriever = Callable[[Sequence[ExperienceQuery], int], list[list[Step]]]
"""Given queries (with ``retrieved`` empty) and k, the k most similar real transitions for each."""

WriteBack = Callable[[Task, Sequence[Step]], object]
"""Receives a task and the synthetic transitions of it just produced."""

InitialState = Callable[[Task, int | None], State]
"""Gives the initial abstract state of a task."""

IrreversibleMode = Literal["allow", "penalize", "end"]
"""What the synthetic env does when the agent takes an irreversible action (see the module docstring)."""

IRREVERSIBLE_MODES: tuple[IrreversibleMode, ...] = ("allow", "penalize", "end")
"""The values of ``irreversible=``."""

INITIAL_STATE_KEY = "initial_state"
"""Key of ``Task.metadata`` holding the initial state (a serialised :class:`~dg_core.State`)."""


def initial_state_from_metadata(task: Task, seed: int | None) -> State:
    """Read the initial state stored in ``task.metadata["initial_state"]`` (put there at collection)."""
    raw = task.metadata.get(INITIAL_STATE_KEY)
    if raw is None:
        raise ConfigError(
            f"task {task.id!r} has no metadata[{INITIAL_STATE_KEY!r}]; store the real initial state with the task "
            "(with_initial_state) or pass initial_state= to the synthetic environment"
        )
    return State.model_validate(raw)


def with_initial_state(task: Task, state: State) -> Task:
    """A copy of ``task`` carrying ``state`` as its initial state."""
    metadata = {**task.metadata, INITIAL_STATE_KEY: state.model_dump(mode="json")}
    return Task.model_validate({**task.model_dump(), "metadata": metadata})


@dataclass
class IrreversibleStats:
    """Irreversible actions taken in a synthetic env, and what its ``irreversible`` mode did with them."""

    steps: int = 0
    """Steps whose action was one of the state's irreversible actions."""
    succeeded: int = 0
    """Of those, steps the experience model scored a success (never penalised)."""
    penalized: int = 0
    """Steps whose reward lost the penalty (``penalize``)."""
    ended: int = 0
    """Episodes ended by an irreversible step the model did not end (``end``)."""

    def as_dict(self) -> dict[str, int]:
        """For metrics files."""
        return asdict(self)


def check_irreversible(mode: str, penalty: float) -> tuple[IrreversibleMode, float]:
    """``(mode, penalty)`` if valid; raises :class:`~dg_core.ConfigError` naming the accepted values if not."""
    if mode not in IRREVERSIBLE_MODES:
        raise ConfigError(f"irreversible must be one of {list(IRREVERSIBLE_MODES)}, got {mode!r}")
    if not (isinstance(penalty, int | float) and math.isfinite(penalty) and penalty >= 0):
        raise ConfigError(f"irreversible_penalty must be a finite number >= 0, got {penalty!r}")
    return mode, float(penalty)


class _SyntheticCore:
    """What the single and batched forms share: building queries and turning predictions into results."""

    def __init__(
        self,
        model: ExperienceModel,
        *,
        retriever: Retriever | None,
        top_k: int,
        history_window: int,
        write_back: WriteBack | None,
        initial_state: InitialState | None,
        irreversible: IrreversibleMode = "allow",
        irreversible_penalty: float = 1.0,
    ) -> None:
        if top_k < 0 or history_window < 0:
            raise ConfigError("top_k and history_window must be >= 0")
        self.irreversible, self.irreversible_penalty = check_irreversible(irreversible, irreversible_penalty)
        self.irreversible_stats = IrreversibleStats()
        self.model = model
        self.retriever = retriever
        self.top_k = top_k
        self.history_window = history_window
        self.write_back = write_back
        self.initial_state = initial_state or initial_state_from_metadata
        self.steps = 0
        self.parse_failures = 0
        self.placeholders_withheld = 0

    def queries(self, items: Sequence[tuple[Task, tuple[Step, ...], State, Action]]) -> list[ExperienceQuery]:
        queries = [
            ExperienceQuery(
                task=task,
                history=history[-self.history_window :] if self.history_window else (),
                state=state,
                action=action,
            )
            for task, history, state, action in items
        ]
        if self.retriever is not None and self.top_k > 0:
            retrieved = self.retriever(queries, self.top_k)
            if len(retrieved) != len(queries):
                raise ConfigError(f"the retriever returned {len(retrieved)} lists for {len(queries)} queries")
            queries = [q.model_copy(update={"retrieved": tuple(r)}) for q, r in zip(queries, retrieved, strict=True)]
        return queries

    def results(self, queries: Sequence[ExperienceQuery]) -> list[StepResult]:
        predictions = self.model.predict(queries)
        self.steps += len(queries)
        if len(predictions) != len(queries):
            raise ConfigError(
                f"the experience model returned {len(predictions)} predictions for {len(queries)} queries"
            )
        return [
            self._result(_playable(p, q), q.action.text in q.state.irreversible_actions)
            for p, q in zip(predictions, queries, strict=True)
        ]

    def _result(self, prediction: ExperiencePrediction, irreversible: bool) -> StepResult:
        """The step of ``prediction``; an unparsed one (or one :func:`_playable` refused) is counted."""
        if not prediction.parse_ok:
            self.parse_failures += 1
        info: dict[str, object] = {"parse_ok": prediction.parse_ok}
        if "failure" in prediction.info:
            info["failure"] = prediction.info["failure"]
        reward, done, success = prediction.reward, prediction.done, prediction.success
        if irreversible:
            reward, done, success = self._irreversible_step(prediction)
            info["irreversible"] = self.irreversible
        return StepResult(
            state=prediction.next_state,
            reward=reward,
            done=done,
            success=success,
            reasoning=prediction.reasoning or None,
            info=info,
        )

    def _irreversible_step(self, prediction: ExperiencePrediction) -> tuple[float, bool, bool | None]:
        """Reward, done and success of an irreversible step under the env's mode."""
        stats = self.irreversible_stats
        stats.steps += 1
        succeeded = prediction.success if prediction.success is not None else prediction.done and prediction.reward > 0
        if succeeded:
            stats.succeeded += 1
            return prediction.reward, prediction.done, prediction.success
        if self.irreversible == "penalize":
            stats.penalized += 1
            # success stays explicit: a penalised reward must not be read as an outcome
            return prediction.reward - self.irreversible_penalty, prediction.done, False if prediction.done else None
        if self.irreversible == "end" and not prediction.done:
            stats.ended += 1
            return prediction.reward, True, False
        return prediction.reward, prediction.done, prediction.success

    def flush(self, produced: Sequence[tuple[Task, Step]]) -> None:
        if self.write_back is None:
            return
        by_task: dict[str, tuple[Task, list[Step]]] = {}
        for task, step in produced:
            if step.info.get("parse_ok") is False:
                # The failure placeholder stands in for an answer the model did not give: it is counted, never
                # stored as experience (it would later be retrieved as if the environment had said it).
                self.placeholders_withheld += 1
                continue
            by_task.setdefault(task.id, (task, []))[1].append(step)
        for task, steps in by_task.values():
            self.write_back(task, steps)


class _CoreCounters:
    """The counters both synthetic envs read from their shared core."""

    core: _SyntheticCore

    @property
    def steps(self) -> int:
        """Steps answered so far (every prediction, whichever model or copy gave it)."""
        return self.core.steps

    @property
    def parse_failures(self) -> int:
        """Steps answered with the failure state: the model output did not parse, or the env refused the
        prediction (a state that goes on without actions)."""
        return self.core.parse_failures

    @property
    def placeholders_withheld(self) -> int:
        """Failure placeholders (unparseable answers) not handed to ``write_back``."""
        return self.core.placeholders_withheld

    @property
    def irreversible_stats(self) -> IrreversibleStats:
        """Irreversible actions taken so far, and what the ``irreversible`` mode did with them."""
        return self.core.irreversible_stats


class BatchedSyntheticEnv(_CoreCounters, BatchedEnv):
    """Many synthetic episodes, one experience-model call per step of the batch.

    Args:
        model: Any :class:`~dg_core.ExperienceModel`.
        retriever: Finds the top-k real transitions for each query (e.g. a replay buffer); ``None`` disables retrieval.
        top_k: Transitions retrieved per query.
        history_window: Past steps of the episode shown to the model (H).
        write_back: Receives ``(task, new synthetic steps)`` after every step (e.g. :class:`ReplayWriteBack`).
            Steps answered with the failure placeholder of an unparseable model output are withheld (counted in
            ``placeholders_withheld``).
        initial_state: Gives a task's initial state (default: ``task.metadata["initial_state"]``).
        env_ids: Real environments whose tasks this env accepts (default: any).
        max_steps: Per-episode step limit.
        irreversible: What an irreversible action of the current state does: ``allow``, ``penalize`` or ``end``
            (see the module docstring).
        irreversible_penalty: What ``penalize`` takes from the reward of an irreversible step that does not succeed.
    """

    source = Source.SYNTHETIC

    def __init__(
        self,
        model: ExperienceModel,
        *,
        retriever: Retriever | None = None,
        top_k: int = 3,
        history_window: int = 4,
        write_back: WriteBack | None = None,
        initial_state: InitialState | None = None,
        env_ids: Sequence[str] | None = None,
        max_steps: int | None = 30,
        irreversible: IrreversibleMode = "allow",
        irreversible_penalty: float = 1.0,
    ) -> None:
        super().__init__(max_steps=max_steps)
        self.core = _SyntheticCore(
            model,
            retriever=retriever,
            top_k=top_k,
            history_window=history_window,
            write_back=write_back,
            initial_state=initial_state,
            irreversible=irreversible,
            irreversible_penalty=irreversible_penalty,
        )
        self.env_ids = tuple(env_ids) if env_ids is not None else None

    def _check_task(self, task: Task) -> None:
        _check_env_id(task, self.env_ids)

    def _reset_batch(self, tasks: list[Task], seeds: list[int | None]) -> list[State]:
        return [self.core.initial_state(task, seed) for task, seed in zip(tasks, seeds, strict=True)]

    def _step_batch(self, indices: list[int], actions: list[Action]) -> list[StepResult]:
        items = [
            (self.task_of(i), self.history(i), self.states[i], action)
            for i, action in zip(indices, actions, strict=True)
        ]
        return self.core.results(self.core.queries(items))

    def step(self, actions: Sequence[Action | str | None]) -> list[StepResult | None]:
        """Step the batch, then hand the new synthetic steps to ``write_back``."""
        results = super().step(actions)
        self.core.flush(
            [(self.task_of(i), self.history(i)[-1]) for i, result in enumerate(results) if result is not None]
        )
        return results


class SyntheticEnv(_CoreCounters, Env):
    """A single synthetic episode at a time (same arguments as :class:`BatchedSyntheticEnv`)."""

    source = Source.SYNTHETIC

    def __init__(
        self,
        model: ExperienceModel,
        *,
        retriever: Retriever | None = None,
        top_k: int = 3,
        history_window: int = 4,
        write_back: WriteBack | None = None,
        initial_state: InitialState | None = None,
        env_ids: Sequence[str] | None = None,
        max_steps: int | None = 30,
        irreversible: IrreversibleMode = "allow",
        irreversible_penalty: float = 1.0,
    ) -> None:
        super().__init__(max_steps=max_steps)
        self.core = _SyntheticCore(
            model,
            retriever=retriever,
            top_k=top_k,
            history_window=history_window,
            write_back=write_back,
            initial_state=initial_state,
            irreversible=irreversible,
            irreversible_penalty=irreversible_penalty,
        )
        self.env_ids = tuple(env_ids) if env_ids is not None else None

    def _check_task(self, task: Task) -> None:
        _check_env_id(task, self.env_ids)

    def _reset(self, task: Task, seed: int | None) -> State:
        return self.core.initial_state(task, seed)

    def _step(self, action: Action) -> StepResult:
        items = [(self.task, self.trajectory().steps, self.state, action)]
        (result,) = self.core.results(self.core.queries(items))
        return result

    def step(self, action: Action | str) -> StepResult:
        """Step, then hand the new synthetic step to ``write_back``."""
        result = super().step(action)
        self.core.flush([(self.task, self.trajectory().steps[-1])])
        return result


def _check_env_id(task: Task, env_ids: tuple[str, ...] | None) -> None:
    if not isinstance(task, Task):
        raise TypeError(f"expected a Task, got {type(task).__name__}")
    if env_ids is not None and task.env_id not in env_ids:
        raise ConfigError(f"task {task.id!r} is for env {task.env_id!r}; this synthetic env serves {list(env_ids)}")


NO_ACTIONS = "no_available_actions"
"""``info["failure"]`` of a prediction refused because its state goes on but offers no action."""


def _playable(prediction: ExperiencePrediction, query: ExperienceQuery) -> ExperiencePrediction:
    """``prediction``, unless it continues the episode in a state that offers no action where the env lists them
    (the query's state has a list): no agent could act there (a choose-mode policy has nothing to choose), so it
    is refused as an unparseable answer is: the failure state (the state unchanged, reward 0, not done), counted
    as a parse failure, never written back. A model that writes an empty list, or an outcome head that overrides
    a model's done, can produce one."""
    listed = query.state.available_actions
    if prediction.done or not prediction.parse_ok or not listed or prediction.next_state.available_actions:
        return prediction
    return failure_prediction(query, f"{NO_ACTIONS}: the predicted state goes on but lists no action", prediction.raw)
