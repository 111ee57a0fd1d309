from __future__ import annotations

from collections.abc import Sequence

import pytest

from dg_core import (
    ConfigError,
    ExperiencePrediction,
    ExperienceQuery,
    State,
    Step,
    Task,
    Trajectory,
)
from dg_core.testing import EnvConformance, ScriptedEnv, ScriptedExperienceModel, scripted_task
from dg_expmodel import BatchedSyntheticEnv, SyntheticEnv, with_initial_state
from tests.conftest import collect


class ExactRetriever:
    """Looks real transitions up by (state text, action) — the grounding the copy model needs."""

    def __init__(self, trajectories: Sequence[Trajectory]) -> None:
        self.table: dict[tuple[str, str], list[Step]] = {}
        for trajectory in trajectories:
            for step in trajectory.steps:
                self.table.setdefault((step.state.text, step.action.text), []).append(step)
        self.calls = 0

    def __call__(self, queries: Sequence[ExperienceQuery], k: int) -> list[list[Step]]:
        self.calls += 1
        return [self.table.get((q.state.text, q.action.text), [])[:k] for q in queries]


def grounded_tasks(count: int) -> list[Task]:
    env = ScriptedEnv()
    tasks = []
    for i in range(count):
        task = scripted_task(
            f"t{i}", rooms=2 + i % 3, goal_item=["gold coin", "red key", "blue gem", "old map"][i % 4], seed=i
        )
        tasks.append(with_initial_state(task, env.reset(task)))
    return tasks


REAL = collect(120)


class TestSyntheticEnvConformance(EnvConformance):
    @pytest.fixture
    def make_env(self):  # type: ignore[no-untyped-def]
        return lambda: SyntheticEnv(
            ScriptedExperienceModel(), retriever=ExactRetriever(REAL), env_ids=["scripted"], max_steps=12
        )

    @pytest.fixture
    def tasks(self) -> list[Task]:
        return grounded_tasks(2)


def test_grounded_synthetic_episode_replays_the_real_one() -> None:
    written: list[Step] = []
    env = SyntheticEnv(ScriptedExperienceModel(), retriever=ExactRetriever(REAL), write_back=written.extend)
    real = REAL[0]  # an expert episode
    env.reset(with_initial_state(real.task, real.steps[0].state), seed=real.task.seed)
    for step in real.steps:
        result = env.step(step.action)
        assert result.state == step.next_state and result.reward == step.reward and result.done == step.done
    synthetic = env.trajectory()
    assert synthetic.success and synthetic.source.value == "synthetic"
    assert all(s.reasoning and "real transition" in s.reasoning for s in synthetic.steps)
    assert written == list(synthetic.steps)


def test_batched_env_makes_one_model_call_per_step() -> None:
    model = ScriptedExperienceModel()
    retriever = ExactRetriever(REAL)
    written: list[Step] = []
    env = BatchedSyntheticEnv(model, retriever=retriever, write_back=written.extend, max_steps=6)
    tasks = grounded_tasks(8)
    states = env.reset(tasks)
    assert states == [State.model_validate(t.metadata["initial_state"]) for t in tasks]
    rounds = 0
    while not env.all_done:
        actions = [
            None if done else (s.available_actions or ("look",))[0]
            for s, done in zip(env.states, env.dones, strict=True)
        ]
        calls_before = len(model.queries)
        env.step(actions)
        rounds += 1
        assert retriever.calls == rounds
        assert len(model.queries) - calls_before == sum(a is not None for a in actions)
    trajectories = env.trajectories()
    assert len(written) == sum(t.num_steps for t in trajectories)
    assert all(step.source.value == "synthetic" for step in written)


def test_invalid_action_never_reaches_the_model() -> None:
    model = ScriptedExperienceModel()
    env = SyntheticEnv(model, retriever=ExactRetriever(REAL))
    env.reset(grounded_tasks(1)[0])
    result = env.step("fly to the moon")
    assert model.queries == []
    assert result.reward == 0.0 and not result.done and result.info["invalid_action"] is True


def test_unparseable_predictions_are_counted() -> None:
    def broken(query: ExperienceQuery) -> ExperiencePrediction:
        return ExperiencePrediction(
            next_state=query.state, parse_ok=False, info={"failure": "unparseable model output (x)"}
        )

    env = BatchedSyntheticEnv(ScriptedExperienceModel(broken), max_steps=3)
    tasks = grounded_tasks(2)
    env.reset(tasks)
    env.step([(s.available_actions or ("look",))[0] for s in env.states])
    assert env.parse_failures == 2
    assert env.trajectories()[0].steps[0].info == {"parse_ok": False, "failure": "unparseable model output (x)"}


def test_missing_initial_state_and_bad_settings() -> None:
    env = SyntheticEnv(ScriptedExperienceModel())
    with pytest.raises(ConfigError, match="has no metadata\\['initial_state'\\]"):
        env.reset(scripted_task("bare"))
    with pytest.raises(ConfigError, match="top_k and history_window"):
        SyntheticEnv(ScriptedExperienceModel(), top_k=-1)
    wrong = SyntheticEnv(ScriptedExperienceModel(), env_ids=["alfworld"])
    with pytest.raises(ConfigError, match="serves \\['alfworld'\\]"):
        wrong.reset(grounded_tasks(1)[0])
