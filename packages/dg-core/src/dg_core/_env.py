"""The environment contract: template-method ``Env`` and its batched form ``BatchedEnv``.

Public methods validate and record; adapters implement the private hooks ``_reset``, ``_step`` and
``_close`` (or ``_reset_batch`` / ``_step_batch`` for natively batched environments). The public
layer guarantees, for every adapter alike:

- ``step`` before ``reset``, after the episode ended, or after ``close`` raises a clear error;
- an action outside ``state.available_actions`` never crashes: by default the adapter is not even
  called and the answer is the unchanged state with reward 0 and ``info["invalid_action"] = True``
  (adapters whose engine answers invalid commands itself set ``passes_invalid_actions = True``);
- a step limit (``max_steps``) ends the episode with ``truncated = True``;
- every step is recorded with its timing, so ``trajectory()`` returns the episode.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from types import TracebackType
from typing import ClassVar

from dg_core._episode import EpisodeRecorder, StepResult
from dg_core._errors import ConfigError, EnvClosedError, ResetNeededError
from dg_core._types import Action, JSONValue, Source, State, Step, Task, Trajectory


def _check_max_steps(max_steps: int | None) -> int | None:
    if max_steps is not None and max_steps < 1:
        raise ConfigError(f"max_steps must be a positive integer or None, got {max_steps}")
    return max_steps


def _flag_unlisted(result: StepResult) -> StepResult:
    """Mark an answer to an action outside the listed ones as invalid, unless the adapter judged it itself.

    Adapters that pass such actions through may accept some (the listed actions can be suggestions from a
    larger grammar): their own ``info["invalid_action"]`` wins.
    """
    if "invalid_action" in result.info:
        return result
    return result.model_copy(update={"info": {**result.info, "invalid_action": True}})


class _Lifecycle:
    env_id: ClassVar[str] = ""
    source: ClassVar[Source] = Source.REAL
    passes_invalid_actions: ClassVar[bool] = False

    _closed: bool

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    def _check_open(self) -> None:
        if self._closed:
            raise EnvClosedError(f"{type(self).__name__} is closed")

    def _check_task(self, task: Task) -> None:
        """Refuse tasks of another environment; override where an env serves several ids."""
        if not isinstance(task, Task):
            raise TypeError(f"expected a Task, got {type(task).__name__}")
        if self.env_id and task.env_id != self.env_id:
            raise ConfigError(
                f"task {task.id!r} is for env {task.env_id!r}, but this is {type(self).__name__} ({self.env_id!r})"
            )


class Env(_Lifecycle, ABC):
    """One environment instance playing one episode at a time.

    Subclasses set ``env_id`` and implement :meth:`_reset` and :meth:`_step` (and :meth:`_close` if
    they hold resources).

    Args:
        max_steps: End (truncate) an episode after this many steps; ``None`` for no limit.
    """

    def __init__(self, *, max_steps: int | None = None) -> None:
        self.max_steps = _check_max_steps(max_steps)
        self._closed = False
        self._episode: EpisodeRecorder | None = None

    # -- public API -------------------------------------------------------------------------
    def reset(self, task: Task, seed: int | None = None) -> State:
        """Start an episode of ``task``; the same task and seed give the same episode."""
        self._check_open()
        self._check_task(task)
        state = self._reset(task, seed)
        if not isinstance(state, State):
            raise TypeError(f"{type(self).__name__}._reset returned {type(state).__name__}, expected State")
        self._episode = EpisodeRecorder(task, seed, state, source=self.source, max_steps=self.max_steps)
        return state

    def step(self, action: Action | str) -> StepResult:
        """Take one action in the current episode."""
        self._check_open()
        episode = self._require_episode()
        episode.check_can_step()
        action = Action.coerce(action)
        started = time.perf_counter()
        if episode.state.allows(action.text):
            result = self._step(action)
        elif self.passes_invalid_actions:
            result = self._step(action)
            result = _flag_unlisted(result)
        else:
            result = episode.invalid_result(action.text)
        if not isinstance(result, StepResult):
            raise TypeError(f"{type(self).__name__}._step returned {type(result).__name__}, expected StepResult")
        return episode.record(action, result, duration_s=time.perf_counter() - started)

    def close(self) -> None:
        """Release the environment's resources; calling it again does nothing."""
        if self._closed:
            return
        self._closed = True
        self._close()

    def trajectory(self, *, policy_id: str | None = None, metadata: dict[str, JSONValue] | None = None) -> Trajectory:
        """The current (or last) episode as a trajectory."""
        return self._require_episode().trajectory(policy_id=policy_id, metadata=metadata)

    @property
    def history(self) -> tuple[Step, ...]:
        """The steps of the current episode so far (cheap: no trajectory is built or validated)."""
        return tuple(self._require_episode().steps)

    @property
    def state(self) -> State:
        """The current abstract state."""
        return self._require_episode().state

    @property
    def task(self) -> Task:
        """The task of the current episode."""
        return self._require_episode().task

    @property
    def done(self) -> bool:
        """Whether the current episode is over."""
        return self._require_episode().done

    def _require_episode(self) -> EpisodeRecorder:
        if self._episode is None:
            raise ResetNeededError(f"{type(self).__name__}: call reset(task) before stepping")
        return self._episode

    # -- hooks for adapters -----------------------------------------------------------------
    @abstractmethod
    def _reset(self, task: Task, seed: int | None) -> State:
        """Start the episode in the underlying environment and return its abstract state."""

    @abstractmethod
    def _step(self, action: Action) -> StepResult:
        """Apply one action in the underlying environment."""

    def _close(self) -> None:
        """Release resources held by the underlying environment."""

    def __enter__(self) -> Env:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class BatchedEnv(_Lifecycle, ABC):
    """Many episodes stepped together (the synthetic environment answers a whole batch at once).

    ``reset(tasks)`` starts one episode per task; ``step(actions)`` takes one action per episode,
    ``None`` for episodes that are already over, and answers ``None`` for those.
    Subclasses implement :meth:`_reset_batch` and :meth:`_step_batch`; :class:`EnvPool` turns any
    single-episode :class:`Env` factory into one.

    Args:
        max_steps: Per-episode step limit; ``None`` for no limit.
    """

    def __init__(self, *, max_steps: int | None = None) -> None:
        self.max_steps = _check_max_steps(max_steps)
        self._closed = False
        self._episodes: list[EpisodeRecorder] = []

    def reset(self, tasks: Sequence[Task], seeds: Sequence[int | None] | None = None) -> list[State]:
        """Start one episode per task; returns their initial states in order."""
        self._check_open()
        tasks = list(tasks)
        if not tasks:
            raise ConfigError("reset needs at least one task")
        seed_list: list[int | None] = list(seeds) if seeds is not None else [None] * len(tasks)
        if len(seed_list) != len(tasks):
            raise ConfigError(f"got {len(tasks)} tasks but {len(seed_list)} seeds")
        for task in tasks:
            self._check_task(task)
        states = self._reset_batch(tasks, seed_list)
        if len(states) != len(tasks) or not all(isinstance(s, State) for s in states):
            raise TypeError(f"{type(self).__name__}._reset_batch must return one State per task")
        self._episodes = [
            EpisodeRecorder(task, seed, state, source=self.source, max_steps=self.max_steps)
            for task, seed, state in zip(tasks, seed_list, states, strict=True)
        ]
        return list(states)

    def step(self, actions: Sequence[Action | str | None]) -> list[StepResult | None]:
        """Take one action per running episode (``None`` for finished ones)."""
        self._check_open()
        if not self._episodes:
            raise ResetNeededError(f"{type(self).__name__}: call reset(tasks) before stepping")
        if len(actions) != len(self._episodes):
            raise ConfigError(f"got {len(actions)} actions for {len(self._episodes)} episodes")
        results: list[StepResult | None] = [None] * len(actions)
        forwarded: list[int] = []
        coerced: dict[int, Action] = {}
        for index, (episode, raw) in enumerate(zip(self._episodes, actions, strict=True)):
            if raw is None:
                if not episode.done:
                    raise ConfigError(f"episode {index} is still running and needs an action")
                continue
            episode.check_can_step()
            action = Action.coerce(raw)
            coerced[index] = action
            if episode.state.allows(action.text) or self.passes_invalid_actions:
                forwarded.append(index)
            else:
                results[index] = episode.invalid_result(action.text)
        started = time.perf_counter()
        if forwarded:
            answers = self._step_batch(forwarded, [coerced[i] for i in forwarded])
            if len(answers) != len(forwarded):
                raise TypeError(f"{type(self).__name__}._step_batch must return one StepResult per action")
            for index, answer in zip(forwarded, answers, strict=True):
                if not self._episodes[index].state.allows(coerced[index].text):
                    answer = _flag_unlisted(answer)
                results[index] = answer
        # A batch is answered as a whole: each forwarded step is charged an equal share of its time.
        per_step = (time.perf_counter() - started) / max(1, len(forwarded))
        timed = set(forwarded)
        out: list[StepResult | None] = [None] * len(actions)
        for index, result in enumerate(results):
            if result is not None:
                duration = per_step if index in timed else 0.0
                out[index] = self._episodes[index].record(coerced[index], result, duration_s=duration)
        return out

    def close(self) -> None:
        """Release resources; calling it again does nothing."""
        if self._closed:
            return
        self._closed = True
        self._close()

    @property
    def num_episodes(self) -> int:
        """Number of episodes started by the last reset."""
        return len(self._episodes)

    @property
    def states(self) -> list[State]:
        """Current state of every episode."""
        return [episode.state for episode in self._episodes]

    @property
    def dones(self) -> list[bool]:
        """Whether each episode is over."""
        return [episode.done for episode in self._episodes]

    def history(self, index: int) -> tuple[Step, ...]:
        """The steps episode ``index`` has taken so far."""
        return tuple(self._episodes[index].steps)

    def task_of(self, index: int) -> Task:
        """The task of episode ``index``."""
        return self._episodes[index].task

    @property
    def all_done(self) -> bool:
        """Whether every episode is over."""
        return bool(self._episodes) and all(episode.done for episode in self._episodes)

    def trajectories(self, *, policy_id: str | None = None) -> list[Trajectory]:
        """Every episode of the last reset as trajectories, in order."""
        return [episode.trajectory(policy_id=policy_id) for episode in self._episodes]

    @abstractmethod
    def _reset_batch(self, tasks: list[Task], seeds: list[int | None]) -> list[State]:
        """Start one episode per task."""

    @abstractmethod
    def _step_batch(self, indices: list[int], actions: list[Action]) -> list[StepResult]:
        """Apply ``actions[j]`` to episode ``indices[j]``; return one result per action."""

    def _close(self) -> None:
        """Release resources."""

    def __enter__(self) -> BatchedEnv:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class EnvPool(BatchedEnv):
    """A :class:`BatchedEnv` over single-episode environments made by ``factory``.

    Environments are created on demand and reused across resets; with ``workers > 1`` they are
    stepped in threads (worthwhile for environments that wait on I/O, such as browsers).
    Each inner environment validates actions and applies its own step limit.

    Args:
        factory: Makes one fresh :class:`Env`.
        workers: Threads stepping the environments; 1 steps them in order in this thread.
    """

    passes_invalid_actions = True  # the inner environments apply their own policy

    def __init__(self, factory: Callable[[], Env], *, workers: int = 1) -> None:
        super().__init__(max_steps=None)
        if workers < 1:
            raise ConfigError(f"workers must be >= 1, got {workers}")
        self._factory = factory
        self._envs: list[Env] = []
        self._executor = ThreadPoolExecutor(max_workers=workers) if workers > 1 else None
        probe = factory()
        self._envs.append(probe)
        self.env_id = probe.env_id  # type: ignore[misc]
        self.source = probe.source  # type: ignore[misc]

    @property
    def envs(self) -> list[Env]:
        """The inner environments (one per episode of the largest batch so far)."""
        return list(self._envs)

    def _map(self, function: Callable[[int], object], indices: list[int]) -> list[object]:
        if self._executor is None:
            return [function(i) for i in indices]
        return list(self._executor.map(function, indices))

    def _reset_batch(self, tasks: list[Task], seeds: list[int | None]) -> list[State]:
        while len(self._envs) < len(tasks):
            self._envs.append(self._factory())
        states = self._map(lambda i: self._envs[i].reset(tasks[i], seeds[i]), list(range(len(tasks))))
        return [state for state in states if isinstance(state, State)]

    def _step_batch(self, indices: list[int], actions: list[Action]) -> list[StepResult]:
        by_index = dict(zip(indices, actions, strict=True))
        results = self._map(lambda i: self._envs[i].step(by_index[i]), indices)
        return [result for result in results if isinstance(result, StepResult)]

    def _close(self) -> None:
        errors: list[BaseException] = []
        for env in self._envs:
            try:
                env.close()
            except Exception as error:  # close every env even if one fails
                errors.append(error)
        if self._executor is not None:
            self._executor.shutdown(wait=True)
        if errors:
            raise errors[0]
