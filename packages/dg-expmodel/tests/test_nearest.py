"""The non-parametric experience model on real (scripted-env) transitions, a real buffer and the synthetic env."""

from __future__ import annotations

from typing import Any

from dg_core import ExperienceQuery
from dg_core.testing import ScriptedEnv
from dg_expmodel import (
    BatchedSyntheticEnv,
    ExactFirstModel,
    LLMExperienceModel,
    NearestExperienceModel,
    PromptOptions,
    ReplayRetriever,
    Sampling,
    TransformersBackend,
    exact_match,
    with_initial_state,
)
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


def test_exact_first_copies_matches_and_asks_the_model_for_the_rest(tiny_model: Any, tokenizer: Any) -> None:
    """An untrained tiny LLM never parses; wrapped exact-match first, the steps the buffer holds are copied exactly
    and only the others reach it (one batch, counted in its own stats)."""
    real = collect(40)
    buffer = ReplayBuffer.create(encoder=HashingEncoder(dim=256))
    buffer.add_trajectories(real)
    options = PromptOptions(history_window=0, max_retrieved=2)
    llm = LLMExperienceModel(TransformersBackend(tiny_model, tokenizer), options=options, sampling=Sampling(8))
    model = ExactFirstModel(llm)
    seen = [(t.task, s) for t in real[:3] for s in t.steps]
    # The corridor's states recur across games; a state text never recorded makes a step the buffer does not hold.
    unseen = [
        (t.task, s.model_copy(update={"state": s.state.model_copy(update={"text": s.state.text + " A draught."})}))
        for t in real[3:6]
        for s in t.steps
    ]
    pairs = [
        pair for both in zip(seen, unseen, strict=False) for pair in both
    ]  # interleaved, the shorter sets the length
    queries = [ExperienceQuery(task=task, state=s.state, action=s.action) for task, s in pairs]
    found = ReplayRetriever(buffer)(queries, 2)
    queries = [q.model_copy(update={"retrieved": tuple(r)}) for q, r in zip(queries, found, strict=True)]
    predictions = model.predict(queries)
    assert len(predictions) == len(queries)
    matched = [exact_match(q, 2) is not None for q in queries]
    assert matched == [i % 2 == 0 for i in range(len(queries))]  # the seen steps, and only those
    for (_, step), prediction, hit in zip(pairs, predictions, matched, strict=True):
        if hit:
            assert prediction.parse_ok and prediction.next_state.text == step.next_state.text
            assert prediction.reward == step.reward and prediction.done == (step.done and not step.truncated)
        else:
            assert not prediction.parse_ok  # the untrained model's answer, passed through
    assert (model.matched, model.delegated) == (sum(matched), len(queries) - sum(matched))
    assert llm.stats.queries == model.delegated and model.stats is llm.stats
    assert model.kind == "exact-first+LLMExperienceModel"
    blind = model.with_options(PromptOptions(history_window=0, max_retrieved=0))
    assert isinstance(blind, ExactFirstModel) and blind.options.max_retrieved == 0
    assert [p.parse_ok for p in blind.predict(queries[:2])] == [False, False]  # reads no retrieved step: no match
