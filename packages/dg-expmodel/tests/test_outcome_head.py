"""The separate reward / done head (issue 17's lever): votes of the nearest real transitions, and its wrapper."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dg_core import Action, ConfigError, ExperienceQuery, Source, State, Step, Task
from dg_expmodel import (
    NearestExperienceModel,
    OutcomeHead,
    OutcomeHeadModel,
    PromptOptions,
    ReplayRetriever,
    load_experience_run,
)
from dg_replay import HashingEncoder, ReplayBuffer
from tests.conftest import collect


def _step(state: str, action: str, reward: float = 0.0, done: bool = False) -> Step:
    return Step(
        step_index=0,
        state=State(text=state, available_actions=[action]),
        action=Action(text=action),
        next_state=State(text=state + " (after)"),
        reward=reward,
        done=done,
    )


def _query(state: str, action: str, instruction: str = "pick up the coin") -> ExperienceQuery:
    task = Task(id="q", env_id="scripted", instruction=instruction)
    return ExperienceQuery(task=task, state=State(text=state), action=Action(text=action))


def test_the_vote_of_the_nearest_transitions_decides_reward_and_done() -> None:
    steps = [
        _step("Room: kitchen. You see a coin and a table.", "take coin", 1.0, True),
        _step("Room: cellar. You see a coin and a barrel.", "take coin", 1.0, True),
        _step("Room: kitchen. You see a coin and a table.", "go east"),
        _step("Room: hall. You see a door.", "go east"),
        _step("Room: hall. You see a door.", "open door"),
    ]
    head = OutcomeHead(steps, HashingEncoder(256), k=3)
    votes = head.vote(
        [
            _query("Room: attic. You see a coin and a chair.", "take coin"),  # unseen room: the action decides
            _query("Room: attic. You see a coin and a chair.", "go east"),
            _query("Room: hall. You see a door.", "open door"),  # a transition seen before
        ]
    )
    assert [(reward, done) for reward, done, _ in votes] == [(1.0, True), (0.0, False), (0.0, False)]
    assert all(0.5 < support <= 1.0 for _, _, support in votes)
    # One neighbour: a seen transition gets its own outcome back, with all the support.
    (exact,) = OutcomeHead(steps, HashingEncoder(256), k=1).vote([_query("Room: cellar. You see a coin and a barrel.",
                                                                         "take coin")])  # fmt: skip
    assert exact == (1.0, True, 1.0)
    assert head.vote([]) == []


def test_on_held_out_scripted_games_it_finds_every_win() -> None:
    """Trained on 40 real episodes of the scripted corridor, asked about 20 episodes of other games: the winning
    step is taking the item the instruction names, which the instruction-and-state key sees."""
    train, held_out = collect(40), collect(20, offset=100)
    steps = [step for trajectory in held_out for step in trajectory.steps]
    queries = [ExperienceQuery(task=t.task, state=s.state, action=s.action) for t in held_out for s in t.steps]
    votes = OutcomeHead.from_trajectories(train, HashingEncoder(384), k=1, action_weight=0.5).vote(queries)
    wins = [s.reward > 0 and s.done for s in steps]
    predicted = [reward > 0 and done for reward, done, _ in votes]
    assert (len(steps), sum(wins), sum(predicted)) == (46, 12, 12)
    assert predicted == wins  # precision and recall 1.0
    assert [done for _, done, _ in votes] == [s.done and not s.truncated for s in steps]


def test_the_wrapper_keeps_the_models_next_states_and_takes_the_heads_outcomes() -> None:
    real = collect(40)
    buffer = ReplayBuffer.create(encoder=HashingEncoder(dim=256))
    buffer.add_trajectories(real)
    base = NearestExperienceModel(PromptOptions(max_retrieved=2))
    model = OutcomeHeadModel(base, OutcomeHead.from_trajectories(real, HashingEncoder(384), k=1, action_weight=0.5))
    held_out = collect(6, offset=100)
    steps = [step for trajectory in held_out for step in trajectory.steps]
    queries = [ExperienceQuery(task=t.task, state=s.state, action=s.action) for t in held_out for s in t.steps]
    found = ReplayRetriever(buffer)(queries, 2)
    queries = [q.model_copy(update={"retrieved": tuple(r)}) for q, r in zip(queries, found, strict=True)]
    alone = NearestExperienceModel(PromptOptions(max_retrieved=2)).predict(queries)
    wrapped = model.predict(queries)
    assert [p.next_state for p in wrapped] == [p.next_state for p in alone]  # the base model's states
    assert all(p.parse_ok and "outcome_head" in p.info and p.success is None for p in wrapped)
    assert [(p.reward > 0, p.done) for p in wrapped] == [(s.reward > 0, s.done) for s in steps]
    assert sum(p.reward > 0 for p in alone) < sum(s.reward > 0 for s in steps)  # what the head adds here
    assert model.stats is base.stats and model.stats.queries == len(queries)
    assert model.kind == "nearest+outcome-head"
    blind = model.with_options(PromptOptions(max_retrieved=0))
    assert isinstance(blind, OutcomeHeadModel) and blind.head is model.head and blind.options.max_retrieved == 0


def test_bad_settings_are_refused() -> None:
    step = _step("Room: hall.", "go east")
    with pytest.raises(ConfigError, match="no real transitions"):
        OutcomeHead([], HashingEncoder(64))
    with pytest.raises(ConfigError, match="k must be >= 1"):
        OutcomeHead([step], HashingEncoder(64), k=0)
    with pytest.raises(ConfigError, match="action_weight must be >= 0"):
        OutcomeHead([step], HashingEncoder(64), action_weight=-1)
    with pytest.raises(ConfigError, match="2 instructions for 1 transitions"):
        OutcomeHead([step], HashingEncoder(64), instructions=["a", "b"])


def test_a_head_over_a_replay_buffer_reads_its_real_transitions_only() -> None:
    real = collect(40)
    encoder = HashingEncoder(dim=384)
    buffer = ReplayBuffer.create(encoder=encoder)
    buffer.add_trajectories(real)
    # Synthetic transitions that contradict the real ones: every step of these episodes claims a win.
    lies = [
        t.model_copy(
            update={
                "steps": [
                    s.model_copy(update={"reward": 1.0, "done": True, "source": Source.SYNTHETIC}) for s in t.steps
                ],
                "source": Source.SYNTHETIC,
            }
        )
        for t in collect(20, offset=100)
    ]
    buffer.add_trajectories(lies)
    held_out = collect(20, offset=100)
    queries = [ExperienceQuery(task=t.task, state=s.state, action=s.action) for t in held_out for s in t.steps]
    from_buffer = OutcomeHead.from_buffer(buffer, k=1, action_weight=0.5)
    from_episodes = OutcomeHead.from_trajectories(real, encoder, k=1, action_weight=0.5)
    assert len(from_buffer.outcomes) == sum(t.num_steps for t in real)
    assert from_buffer.vote(queries) == from_episodes.vote(queries)
    with pytest.raises(ConfigError, match="holds no real transitions"):
        OutcomeHead.from_buffer(ReplayBuffer.create(encoder=encoder))


def test_a_run_directory_that_names_a_head_loads_with_it(tmp_path: Path) -> None:
    """``outcome_head`` in a run's expmodel.json (what ``dg expmodel fit`` writes for expmodel.outcome_head) wraps
    the loaded model; the head answers from the run's real transitions."""
    run = tmp_path / "run"
    buffer = ReplayBuffer.create(run / "replay", encoder=HashingEncoder(dim=384))
    buffer.add_trajectories(collect(40))
    buffer.save()
    buffer.close()
    settings = {"kind": "nearest", "options": PromptOptions(max_retrieved=2).model_dump(mode="json")}
    (run / "expmodel.json").write_text(json.dumps(settings))
    plain = load_experience_run(run, read_only=True)
    assert isinstance(plain.model, NearestExperienceModel)
    plain.buffer.close()

    (run / "expmodel.json").write_text(json.dumps({**settings, "outcome_head": {"k": 1, "action_weight": 0.5}}))
    loaded = load_experience_run(run, read_only=True)
    assert isinstance(loaded.model, OutcomeHeadModel) and loaded.model.head.k == 1
    held_out = collect(20, offset=100)
    queries = [ExperienceQuery(task=t.task, state=s.state, action=s.action) for t in held_out for s in t.steps]
    predicted = [p.reward > 0 and p.done for p in loaded.model.predict(queries)]
    assert predicted == [s.reward > 0 and s.done for t in held_out for s in t.steps]  # every win, none invented
    assert sum(predicted) == 12
    loaded.buffer.close()

    (run / "expmodel.json").write_text(json.dumps({**settings, "outcome_head": {"neighbours": 3}}))
    with pytest.raises(ConfigError, match="outcome_head must be null or a mapping with k and action_weight"):
        load_experience_run(run, read_only=True)
