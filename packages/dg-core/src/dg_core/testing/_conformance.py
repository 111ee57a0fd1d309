"""The conformance suite every :class:`~dg_core.Env` adapter passes.

Use it by subclassing and supplying two fixtures::

    class TestMyEnv(EnvConformance):
        @pytest.fixture
        def make_env(self):
            return lambda: MyEnv(max_steps=30)

        @pytest.fixture
        def tasks(self):
            return [Task(id="t0", env_id="mine", instruction="...")]

Class attributes tune it: ``invalid_action`` (a command no state offers), ``deterministic``
(False for environments whose observations carry wall-clock noise), and ``episode_step_budget``
(random play must end an episode within it; give ``make_env`` a ``max_steps`` to guarantee it).
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable

import pytest

from dg_core._env import EnvPool
from dg_core._episode import StepResult
from dg_core._errors import ConfigError, EnvClosedError, ResetNeededError
from dg_core._types import Action, Source, State, Task, Trajectory

EnvMaker = Callable[[], object]


def _random_actions(state: State, rng: random.Random, fallback: str) -> str:
    return rng.choice(state.available_actions) if state.available_actions else fallback


class EnvConformance:
    """Contract tests for a single-episode environment (see the module docstring)."""

    invalid_action: str = "xyzzy frobnicate the quux"
    deterministic: bool = True
    episode_step_budget: int = 200
    fallback_action: str = "look"
    seed: int = 7

    @pytest.fixture
    def make_env(self) -> EnvMaker:  # pragma: no cover - always overridden
        raise NotImplementedError("subclasses of EnvConformance provide a make_env fixture")

    @pytest.fixture
    def tasks(self) -> list[Task]:  # pragma: no cover - always overridden
        raise NotImplementedError("subclasses of EnvConformance provide a tasks fixture")

    @pytest.fixture
    def env(self, make_env: EnvMaker):  # type: ignore[no-untyped-def]
        env = make_env()
        yield env
        env.close()  # type: ignore[attr-defined]

    # -- reset ---------------------------------------------------------------------------------
    def test_reset_returns_a_state(self, env, tasks: list[Task]) -> None:  # type: ignore[no-untyped-def]
        for task in tasks:
            state = env.reset(task, seed=self.seed)
            assert isinstance(state, State)
            assert state.text.strip(), "the initial state must describe something"
            if state.available_actions is not None:
                assert len(state.available_actions) > 0, "an initial state offers at least one action"
            json.dumps(state.model_dump(mode="json"))  # info must be JSON-serialisable
            assert env.task == task
            assert env.done is False

    def test_step_before_reset_raises(self, env) -> None:  # type: ignore[no-untyped-def]
        with pytest.raises(ResetNeededError):
            env.step(self.fallback_action)

    def test_task_of_another_env_is_refused(self, env, tasks: list[Task]) -> None:  # type: ignore[no-untyped-def]
        foreign = tasks[0].model_copy(update={"env_id": tasks[0].env_id + "-other"})
        with pytest.raises(ConfigError, match="is for env"):
            env.reset(foreign, seed=self.seed)

    # -- step ----------------------------------------------------------------------------------
    def test_step_returns_a_step_result(self, env, tasks: list[Task]) -> None:  # type: ignore[no-untyped-def]
        state = env.reset(tasks[0], seed=self.seed)
        action = _random_actions(state, random.Random(0), self.fallback_action)
        result = env.step(action)
        assert isinstance(result, StepResult)
        assert isinstance(result.state, State)
        assert math.isfinite(result.reward)
        assert isinstance(result.done, bool)
        assert env.state == result.state
        json.dumps(result.model_dump(mode="json"))

    def test_string_and_action_are_equivalent(self, make_env: EnvMaker, tasks: list[Task]) -> None:
        if not self.deterministic:
            pytest.skip("environment declared non-deterministic")
        first, second = make_env(), make_env()
        try:
            state = first.reset(tasks[0], seed=self.seed)  # type: ignore[attr-defined]
            second.reset(tasks[0], seed=self.seed)  # type: ignore[attr-defined]
            command = _random_actions(state, random.Random(1), self.fallback_action)
            assert first.step(command).state == second.step(Action(text=command)).state  # type: ignore[attr-defined]
        finally:
            first.close()  # type: ignore[attr-defined]
            second.close()  # type: ignore[attr-defined]

    def test_invalid_action_is_answered_not_raised(self, env, tasks: list[Task]) -> None:  # type: ignore[no-untyped-def]
        state = env.reset(tasks[0], seed=self.seed)
        if state.available_actions is not None:
            assert self.invalid_action not in state.available_actions
        result = env.step(self.invalid_action)
        assert result.reward == 0.0
        assert result.info.get("invalid_action") is True
        assert result.success in (None, False)
        if not result.done:  # the episode goes on with a valid action
            follow = env.step(_random_actions(env.state, random.Random(2), self.fallback_action))
            assert isinstance(follow, StepResult)

    def test_episode_ends_and_then_needs_reset(self, env, tasks: list[Task]) -> None:  # type: ignore[no-untyped-def]
        rng = random.Random(3)
        state = env.reset(tasks[0], seed=self.seed)
        for _ in range(self.episode_step_budget):
            result = env.step(_random_actions(state, rng, self.fallback_action))
            state = result.state
            if result.done:
                break
        else:
            pytest.fail(f"random play did not end an episode within {self.episode_step_budget} steps")
        assert env.done
        if result.truncated:
            assert result.done
        with pytest.raises(ResetNeededError):
            env.step(self.fallback_action)
        again = env.reset(tasks[0], seed=self.seed)
        assert isinstance(again, State)
        assert env.done is False

    def test_same_seed_same_episode(self, make_env: EnvMaker, tasks: list[Task]) -> None:
        if not self.deterministic:
            pytest.skip("environment declared non-deterministic")
        runs = []
        for _ in range(2):
            env = make_env()
            try:
                rng = random.Random(4)
                state = env.reset(tasks[0], seed=self.seed)  # type: ignore[attr-defined]
                trace: list[tuple[str, str, float, bool]] = [("", state.text, 0.0, False)]
                for _ in range(8):
                    action = _random_actions(state, rng, self.fallback_action)
                    result = env.step(action)  # type: ignore[attr-defined]
                    state = result.state
                    trace.append((action, state.text, result.reward, result.done))
                    if result.done:
                        break
                runs.append(trace)
            finally:
                env.close()  # type: ignore[attr-defined]
        assert runs[0] == runs[1]

    # -- recording -----------------------------------------------------------------------------
    def test_trajectory_records_the_episode(self, env, tasks: list[Task]) -> None:  # type: ignore[no-untyped-def]
        rng = random.Random(5)
        state = env.reset(tasks[0], seed=self.seed)
        rewards = []
        for _ in range(5):
            result = env.step(_random_actions(state, rng, self.fallback_action))
            rewards.append(result.reward)
            state = result.state
            if result.done:
                break
        trajectory = env.trajectory(policy_id="conformance")
        assert trajectory.num_steps == len(rewards)
        assert [step.step_index for step in trajectory.steps] == list(range(len(rewards)))
        assert [step.reward for step in trajectory.steps] == rewards
        assert trajectory.return_ == pytest.approx(sum(rewards))
        assert trajectory.steps[-1].next_state == env.state
        assert all(step.source == Source(env.source) for step in trajectory.steps)
        assert all(step.duration_s >= 0 for step in trajectory.steps)
        for before, after in zip(trajectory.steps, trajectory.steps[1:], strict=False):
            assert before.next_state == after.state
        assert Trajectory.model_validate_json(trajectory.model_dump_json(by_alias=True)) == trajectory

    # -- close ---------------------------------------------------------------------------------
    def test_close_twice_and_use_after_close(self, make_env: EnvMaker, tasks: list[Task]) -> None:
        env = make_env()
        env.reset(tasks[0], seed=self.seed)  # type: ignore[attr-defined]
        env.close()  # type: ignore[attr-defined]
        env.close()  # type: ignore[attr-defined]
        assert env.closed  # type: ignore[attr-defined]
        with pytest.raises(EnvClosedError):
            env.step(self.fallback_action)  # type: ignore[attr-defined]
        with pytest.raises(EnvClosedError):
            env.reset(tasks[0], seed=self.seed)  # type: ignore[attr-defined]

    # -- batched -------------------------------------------------------------------------------
    def test_env_pool_runs_episodes_together(self, make_env: EnvMaker, tasks: list[Task]) -> None:
        batch = [tasks[i % len(tasks)] for i in range(3)]
        pool = EnvPool(make_env)  # type: ignore[arg-type]
        try:
            states = pool.reset(batch, seeds=[self.seed] * len(batch))
            assert len(states) == len(batch)
            rng = random.Random(6)
            for _ in range(self.episode_step_budget):
                actions = [
                    None if done else _random_actions(state, rng, self.fallback_action)
                    for state, done in zip(pool.states, pool.dones, strict=True)
                ]
                results = pool.step(actions)
                assert [r is None for r in results] == [a is None for a in actions]
                if pool.all_done:
                    break
            assert pool.all_done, f"pooled episodes did not end within {self.episode_step_budget} steps"
            trajectories = pool.trajectories()
            assert [t.task for t in trajectories] == batch
            assert all(t.finished for t in trajectories)
        finally:
            pool.close()
            pool.close()
        assert all(env.closed for env in pool.envs)
