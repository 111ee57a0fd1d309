"""The non-parametric experience model on real (scripted-env) transitions, a real buffer and the synthetic env."""

from __future__ import annotations

from dg_core import ExperienceQuery
from dg_core.testing import ScriptedEnv
from dg_expmodel import BatchedSyntheticEnv, NearestExperienceModel, PromptOptions, ReplayRetriever, with_initial_state
from dg_replay import HashingEncoder, ReplayBuffer
from tests.conftest import collect


def test_known_transitions_are_copied_and_unknown_ones_fail_safe() -> None:
    real = collect(40)
    buffer = ReplayBuffer.create(encoder=HashingEncoder(dim=256))
    buffer.add_trajectories(real)
    retriever = ReplayRetriever(buffer)
    model = NearestExperienceModel(PromptOptions(max_retrieved=3))
    steps = [step for trajectory in real for step in trajectory.steps][:30]
    tasks = [trajectory.task for trajectory in real for _ in trajectory.steps][:30]
    queries = [ExperienceQuery(task=t, state=s.state, action=s.action) for t, s in zip(tasks, steps, strict=True)]
    found = retriever(queries, 3)
    queries = [q.model_copy(update={"retrieved": tuple(r)}) for q, r in zip(queries, found, strict=True)]
    predictions = model.predict(queries)
    for step, prediction in zip(steps, predictions, strict=True):
        assert prediction.parse_ok
        # Every one of these transitions is in the buffer (the scripted world shuffles its action lists, so a
        # repeated transition may list them in another order).
        assert prediction.next_state.text == step.next_state.text
        assert set(prediction.next_state.available_actions or ()) == set(step.next_state.available_actions or ())
        assert prediction.reward == step.reward and prediction.done == (step.done and not step.truncated)
    assert model.matched == 30 and model.fallbacks == 0 and model.stats.queries == 30

    unknown = queries[0].model_copy(update={"action": queries[0].action.model_copy(update={"text": "dance"})})
    (answer,) = model.predict([unknown])
    assert answer.next_state == unknown.state and answer.reward == 0.0 and not answer.done and answer.parse_ok
    assert model.fallbacks == 1
    blind = model.with_options(PromptOptions(max_retrieved=0))  # reads nothing: the failure state every time
    assert all(p.next_state == q.state for p, q in zip(blind.predict(queries[:5]), queries[:5], strict=True))


def test_expert_replays_succeed_in_the_synthetic_env() -> None:
    """Played through BatchedSyntheticEnv, the expert's own episodes are reproduced step by step, wins included."""
    real = [t for t in collect(40) if t.success][:6]
    buffer = ReplayBuffer.create(encoder=HashingEncoder(dim=256))
    buffer.add_trajectories(real)
    env = BatchedSyntheticEnv(
        NearestExperienceModel(PromptOptions(max_retrieved=2)), retriever=ReplayRetriever(buffer), top_k=2, max_steps=12
    )
    reset = ScriptedEnv()
    tasks = [with_initial_state(t.task, reset.reset(t.task, seed=t.task.seed)) for t in real]
    env.reset(tasks, [t.task.seed for t in real])
    step = 0
    while not env.all_done:
        env.step([None if done else t.steps[step].action for t, done in zip(real, env.dones, strict=True)])
        step += 1
    synthetic = env.trajectories()
    assert [s.success for s in synthetic] == [True] * len(real)
    assert [s.num_steps for s in synthetic] == [t.num_steps for t in real]
