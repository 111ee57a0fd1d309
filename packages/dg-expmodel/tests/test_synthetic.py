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
from dg_expmodel import (
    NO_ACTIONS,
    BatchedSyntheticEnv,
    OutcomeHead,
    OutcomeHeadModel,
    ReplayRetriever,
    ReplayWriteBack,
    SyntheticEnv,
    with_initial_state,
)
from dg_replay import HashingEncoder, ReplayBuffer
from tests.conftest import collect


def real_buffer(trajectories: Sequence[Trajectory]) -> ReplayBuffer:
    """An in-memory replay buffer (real USearch index, hashing encoder) holding ``trajectories``."""
    buffer = ReplayBuffer.create(encoder=HashingEncoder(dim=256))
    buffer.add_trajectories(trajectories)
    return buffer


class CountingRetriever(ReplayRetriever):
    """A replay retriever that counts its calls."""

    calls = 0

    def __call__(self, queries: Sequence[ExperienceQuery], k: int) -> list[list[Step]]:
        self.calls += 1
        return super().__call__(queries, k)


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
BUFFER = real_buffer(REAL)


class TestSyntheticEnvConformance(EnvConformance):
    @pytest.fixture
    def make_env(self):  # type: ignore[no-untyped-def]
        return lambda: SyntheticEnv(
            ScriptedExperienceModel(), retriever=ReplayRetriever(BUFFER), env_ids=["scripted"], max_steps=12
        )

    @pytest.fixture
    def tasks(self) -> list[Task]:
        return grounded_tasks(2)


def test_grounded_synthetic_episode_replays_the_real_one() -> None:
    real = REAL[0]  # an expert episode; the buffer holds no other episode of its instruction
    buffer = real_buffer([real] + [t for t in REAL if t.task.instruction != real.task.instruction])
    write_back = ReplayWriteBack(buffer)
    env = SyntheticEnv(ScriptedExperienceModel(), retriever=ReplayRetriever(buffer), write_back=write_back)
    env.reset(with_initial_state(real.task, real.steps[0].state), seed=real.task.seed)
    for step in real.steps:
        result = env.step(step.action)
        assert result.state == step.next_state and result.reward == step.reward and result.done == step.done
    synthetic = env.trajectory()
    assert synthetic.success and synthetic.source.value == "synthetic"
    assert all(s.reasoning and "real transition" in s.reasoning for s in synthetic.steps)
    assert write_back.added == synthetic.num_steps
    stats = buffer.stats()
    real_steps = sum(t.num_steps for t in REAL if t.task.instruction != real.task.instruction) + real.num_steps
    assert stats.by_source == {"real": real_steps, "synthetic": synthetic.num_steps}
    # Synthetic transitions in the buffer never ground later predictions (the retriever asks for real ones).
    query = ExperienceQuery(task=real.task, state=real.steps[0].state, action=real.steps[0].action)
    assert all(s.source.value == "real" for s in ReplayRetriever(buffer)([query], 5)[0])


def test_retriever_can_exclude_the_transition_itself() -> None:
    real = REAL[0]
    retriever = ReplayRetriever(BUFFER, exclude_self=True)
    hits = retriever.for_step(real.task, real.steps[0], 3)
    assert len(hits) == 3 and real.steps[0] not in hits
    plain = ReplayRetriever(BUFFER).for_step(real.task, real.steps[0], 3)
    assert real.steps[0] in plain


def test_batched_env_makes_one_model_call_per_step() -> None:
    model = ScriptedExperienceModel()
    retriever = CountingRetriever(BUFFER)
    written: list[Step] = []
    env = BatchedSyntheticEnv(model, retriever=retriever, write_back=lambda _t, s: written.extend(s), max_steps=6)
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
    env = SyntheticEnv(model, retriever=ReplayRetriever(BUFFER))
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


def test_failure_placeholders_are_never_written_back() -> None:
    """An unparseable answer's placeholder is counted, not stored in the replay buffer as experience."""
    calls = {"n": 0}

    def every_other_broken(query: ExperienceQuery) -> ExperiencePrediction:
        calls["n"] += 1
        if calls["n"] % 2:
            return ExperiencePrediction(next_state=query.state, parse_ok=False, info={"failure": "unparseable"})
        return ExperiencePrediction(next_state=query.state, reward=0.0, done=False)

    buffer = real_buffer(REAL[:4])
    before = buffer.stats().by_source
    write_back = ReplayWriteBack(buffer)
    env = BatchedSyntheticEnv(ScriptedExperienceModel(every_other_broken), write_back=write_back, max_steps=3)
    env.reset(grounded_tasks(4))
    env.step([(s.available_actions or ("look",))[0] for s in env.states])
    env.step([(s.available_actions or ("look",))[0] for s in env.states])
    assert env.parse_failures == 4 and env.placeholders_withheld == 4 and env.steps == 8
    assert write_back.added == 4
    stored = buffer.stats().by_source
    assert stored["real"] == before["real"] and stored.get("synthetic", 0) <= 4
    synthetic = buffer.sample(100, {"source": "synthetic"}) if stored.get("synthetic") else []
    assert all(row.step.info.get("parse_ok") is not False for row in synthetic)


def test_missing_initial_state_and_bad_settings() -> None:
    env = SyntheticEnv(ScriptedExperienceModel())
    with pytest.raises(ConfigError, match="has no metadata\\['initial_state'\\]"):
        env.reset(scripted_task("bare"))
    with pytest.raises(ConfigError, match="top_k and history_window"):
        SyntheticEnv(ScriptedExperienceModel(), top_k=-1)
    wrong = SyntheticEnv(ScriptedExperienceModel(), env_ids=["alfworld"])
    with pytest.raises(ConfigError, match="serves \\['alfworld'\\]"):
        wrong.reset(grounded_tasks(1)[0])


def test_a_state_that_goes_on_without_actions_is_refused() -> None:
    """A model's terminal-looking state (no action left) is fine when it ends the episode; when the episode goes on
    (the model said so, or an outcome head overrode the model's done), no agent could act there: the failure
    state, counted as a parse failure and never written back."""
    dead_end = State(text="The world goes dark.", available_actions=())

    def answer(done: bool) -> ScriptedExperienceModel:
        return ScriptedExperienceModel(lambda q: ExperiencePrediction(next_state=dead_end, reward=0.0, done=done))

    tasks = grounded_tasks(2)
    ending = BatchedSyntheticEnv(answer(done=True), max_steps=3)
    ending.reset(tasks)
    ending.step([s.available_actions[0] for s in ending.states])  # type: ignore[index]
    assert ending.all_done and ending.parse_failures == 0 and ending.steps == 2

    for model in (
        answer(done=False),
        # The head votes "not done" for a first step of these games; the wrapped model says the episode ended.
        OutcomeHeadModel(answer(done=True), OutcomeHead.from_trajectories(REAL, HashingEncoder(dim=256))),
    ):
        buffer = real_buffer(REAL[:4])
        write_back = ReplayWriteBack(buffer)
        env = BatchedSyntheticEnv(model, write_back=write_back, max_steps=3)
        env.reset(tasks)
        before = list(env.states)
        env.step([s.available_actions[0] for s in before])  # type: ignore[index]
        assert not any(env.dones) and env.parse_failures == 2
        assert env.states == before  # the failure state: nothing changed, every action still there
        steps = [t.steps[0] for t in env.trajectories()]
        assert all(s.info["parse_ok"] is False for s in steps)
        assert all(str(s.info["failure"]).startswith(NO_ACTIONS) for s in steps)
        assert env.placeholders_withheld == 2
