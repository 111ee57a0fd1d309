"""The controlled-error simulator: zero error equals the real env; injected rates match the requested ones."""

from __future__ import annotations

import math
import random
from typing import Any

import pytest

from dg_core import BatchedEnv, ConfigError, EnvPool, Source, State, StepResult, Task, Trajectory
from dg_core.testing import ITEMS, ScriptedEnv, scripted_task
from dg_expmodel import (
    FAILURE_TYPES,
    REWARD_ERRORS,
    TRANSITION_ERRORS,
    PerturbedEnv,
    action_objects,
    drop_object,
    state_objects,
)

LIMIT = 8


def real_env() -> ScriptedEnv:
    return ScriptedEnv(max_steps=LIMIT)


def tasks(count: int, offset: int = 0) -> list[Task]:
    return [
        scripted_task(f"t{i}", rooms=2 + i % 4, goal_item=ITEMS[i % len(ITEMS)], seed=i)
        for i in range(offset, offset + count)
    ]


def random_action(state: State, rng: random.Random) -> str:
    """Mostly a listed action; sometimes one no state lists, or the empty command the rollout engine sends."""
    roll = rng.random()
    if roll < 0.05:
        return "dance wildly"
    if roll < 0.07:
        return ""
    return rng.choice(state.available_actions or ("look",))


def play(env: BatchedEnv, batch: list[Task], seeds: list[int | None], rng: random.Random) -> list[list[StepResult]]:
    """Random play of one batch to its end; every episode's answers in order."""
    env.reset(batch, seeds)
    answers: list[list[StepResult]] = [[] for _ in batch]
    while not env.all_done:
        pairs = zip(env.states, env.dones, strict=True)
        actions = [None if done else random_action(state, rng) for state, done in pairs]
        for index, result in enumerate(env.step(actions)):
            if result is not None:
                answers[index].append(result)
    return answers


def injected(trajectories: list[Trajectory]) -> dict[str, int]:
    counts = dict.fromkeys((*TRANSITION_ERRORS, *REWARD_ERRORS), 0)
    for trajectory in trajectories:
        for step in trajectory.steps:
            for kind in step.info.get("injected", []):
                counts[kind] += 1
    return counts


def test_kinds_are_the_audit_typology() -> None:
    assert set(TRANSITION_ERRORS) <= set(FAILURE_TYPES)
    assert set(FAILURE_TYPES) - set(TRANSITION_ERRORS) == {"parse_failure", "wrong_reward", "other"}


def test_zero_error_equals_the_real_env_step_for_step() -> None:
    """Same tasks, seeds and actions: the same states, rewards, dones, truncations, successes and infos."""
    simulator = PerturbedEnv(real_env, eps_r=0.0, eps_p=0.0, seed=3, max_steps=LIMIT)
    real = EnvPool(real_env)
    assert simulator.source is Source.SYNTHETIC and real.source is Source.REAL
    compared = 0
    for batch_index in range(10):
        batch = tasks(12, offset=batch_index * 5)
        batch = [task for task in batch for _ in range(2)]  # groups of two, as GRPO plays them
        seeds: list[int | None] = [None if i % 3 == 0 else 100 + i for i in range(len(batch))]
        seed = 17 + batch_index
        mine = play(simulator, batch, seeds, random.Random(seed))
        theirs = play(real, batch, seeds, random.Random(seed))
        assert mine == theirs
        for ours, reference in zip(simulator.trajectories(), real.trajectories(), strict=True):
            assert ours.source is Source.SYNTHETIC
            assert ours.success == reference.success and ours.return_ == reference.return_
            fields = {"state", "action", "next_state", "reward", "done", "truncated", "step_index", "info"}
            assert [s.model_dump(include=fields) for s in ours.steps] == [
                s.model_dump(include=fields) for s in reference.steps
            ]
            compared += ours.num_steps
    stats = simulator.stats
    assert compared == stats.steps > 700
    assert stats.limbo_steps == 0 and stats.abandoned == 0
    assert sum(stats.transition_errors.values()) == 0 and sum(stats.reward_errors.values()) == 0
    assert stats.transition_eligible > 0 and stats.reward_eligible == 10 * 24
    assert stats.transition_rate == 0.0 and stats.reward_rate == 0.0
    simulator.close()
    real.close()


def within_binomial(observed: int, trials: int, rate: float, sigmas: float = 4.0) -> bool:
    spread = math.sqrt(rate * (1 - rate) / trials)
    return abs(observed / trials - rate) <= sigmas * spread + 1e-12


@pytest.mark.parametrize(("eps_r", "eps_p"), [(0.1, 0.25), (0.5, 0.5), (0.25, 0.1), (1.0, 1.0)])
def test_measured_rates_match_the_requested_ones(eps_r: float, eps_p: float) -> None:
    simulator = PerturbedEnv(real_env, eps_r=eps_r, eps_p=eps_p, seed=11, max_steps=LIMIT)
    rng = random.Random(5)
    trajectories: list[Trajectory] = []
    for batch_index in range(60):
        play(simulator, tasks(40, offset=batch_index), [None] * 40, rng)
        trajectories += simulator.trajectories()
    stats = simulator.stats
    # Every episode ends once on a real-backed step, except those a missed done sent to limbo.
    assert len(trajectories) == 2400
    assert stats.reward_eligible == len(trajectories) - stats.transition_errors["missed_done"]
    assert stats.transition_eligible > 5000
    transitions = sum(stats.transition_errors.values())
    rewards = sum(stats.reward_errors.values())
    assert within_binomial(transitions, stats.transition_eligible, eps_p), stats.as_dict()
    assert within_binomial(rewards, stats.reward_eligible, eps_r), stats.as_dict()
    # What the steps record is what was counted, and every kind happens.
    assert injected(trajectories) == {**stats.transition_errors, **stats.reward_errors}
    assert all(count > 0 for count in stats.transition_errors.values()), stats.transition_errors
    assert all(count > 0 for count in stats.reward_errors.values()), stats.reward_errors
    assert stats.abandoned == stats.transition_errors["premature_done"]
    simulator.close()


def test_each_kind_does_what_it_says() -> None:
    """Every injected error, read back from the steps, changed what its kind says it changes."""
    simulator = PerturbedEnv(real_env, eps_r=0.3, eps_p=0.6, seed=2, max_steps=LIMIT)
    rng = random.Random(9)
    seen: set[str] = set()
    for batch_index in range(20):
        play(simulator, tasks(20, offset=batch_index), [None] * 20, rng)
        for trajectory in simulator.trajectories():
            steps = trajectory.steps
            for position, step in enumerate(steps):
                kinds = step.info.get("injected", [])
                detail = step.info.get("injected_detail", {})
                seen.update(kinds)
                shown = step.next_state
                if "missing_object" in kinds:
                    name = detail["missing_object"]
                    assert name not in state_objects(shown)
                    assert not any(name in action for action in shown.available_actions or ())
                if "invented_object" in kinds:
                    assert f" {detail['invented_object']} here." in shown.text
                if "wrong_actions" in kinds:
                    how, _, action = detail["wrong_actions"].partition(": ")
                    assert (action in (shown.available_actions or ())) == (how == "invented")
                if "premature_done" in kinds:
                    assert step.done and not step.info["real_done"] and position == len(steps) - 1
                if "missed_done" in kinds:
                    assert not step.done and step.info["real_done"]
                    after = steps[position + 1 :]
                    assert after and all(s.info.get("limbo") for s in after)
                    assert all(s.next_state == shown and s.reward == 0 for s in after)
                    assert after[-1].truncated and len(steps) == LIMIT and not trajectory.success
                if "success_scored_0" in kinds:
                    assert step.reward == 0 and step.info["real_reward"] > 0 and step.done
                    assert not trajectory.success
                if "failure_scored_1" in kinds:
                    assert step.reward == 1.0 and trajectory.success
                if not kinds and not step.info.get("limbo"):
                    assert "real_reward" not in step.info
    assert seen == set(TRANSITION_ERRORS) | set(REWARD_ERRORS)
    simulator.close()


@pytest.mark.parametrize("kind", TRANSITION_ERRORS)
def test_a_kind_alone_hits_every_step_it_applies_to(kind: str) -> None:
    simulator = PerturbedEnv(real_env, eps_p=1.0, kinds=[kind], seed=4, max_steps=LIMIT)
    rng = random.Random(4)
    for batch_index in range(10):
        play(simulator, tasks(20, offset=batch_index), [None] * 20, rng)
    stats = simulator.stats
    assert stats.transition_eligible > 0
    expected = {name: stats.transition_eligible if name == kind else 0 for name in TRANSITION_ERRORS}
    assert stats.transition_errors == expected
    if kind == "missed_done":
        assert stats.limbo_steps > 0
    simulator.close()


def test_the_real_env_answers_every_action() -> None:
    """An action the simulator hid is still carried out; an action it invented gets the real env's refusal."""
    task = scripted_task("t", rooms=2, goal_item="gold coin", seed=1)
    probe = ScriptedEnv()
    probe.reset(task)
    while "take gold coin" not in (probe.state.available_actions or ()):
        probe.step(probe.expert_action())
    plan = [a.action.text for a in probe.history]  # the way to the coin

    for seed in range(20):  # a seed whose error at the coin hides the coin (not the room's other item)
        hiding = PerturbedEnv(real_env, eps_p=1.0, kinds=["missing_object"], seed=seed, max_steps=LIMIT)
        hiding.reset([task])
        for action in plan:
            (result,) = hiding.step([action])
        assert result is not None
        if result.info["injected_detail"]["missing_object"] == "gold coin":
            break
    assert "take gold coin" not in (result.state.available_actions or ())
    assert "gold coin" not in result.state.text
    (result,) = hiding.step(["take gold coin"])  # hidden, but the agent names it anyway
    assert result is not None and result.done and result.reward == 1.0 and result.success
    assert result.info["unlisted_action"] is True and result.info["invalid_action"] is False

    inventing = PerturbedEnv(real_env, eps_p=1.0, kinds=["invented_object"], seed=0, max_steps=LIMIT)
    inventing.reset([task])
    (result,) = inventing.step(["look"])
    assert result is not None
    name = result.info["injected_detail"]["invented_object"]
    invented = [a for a in result.state.available_actions or () if name in a]
    assert invented and invented[0] not in (inventing.real_envs[0].state.available_actions or ())
    (result,) = inventing.step([invented[0]])
    assert result is not None and result.info["invalid_action"] is True and result.reward == 0 and not result.done


def test_checkpointed_state_continues_identically() -> None:
    def make() -> PerturbedEnv:
        return PerturbedEnv(real_env, eps_r=0.3, eps_p=0.4, seed=8, max_steps=LIMIT)

    first = make()
    rng = random.Random(1)
    for batch_index in range(3):
        play(first, tasks(10, offset=batch_index), [None] * 10, rng)
    saved = first.state_dict()
    second = make()
    second.load_state_dict(saved)
    assert second.stats == first.stats
    state = rng.getstate()
    ours = play(first, tasks(10, offset=7), [None] * 10, rng)
    rng.setstate(state)
    theirs = play(second, tasks(10, offset=7), [None] * 10, rng)
    assert ours == theirs and second.stats == first.stats
    assert any("injected" in r.info for answers in ours for r in answers)


def test_nothing_but_the_real_env_is_needed_for_the_batch() -> None:
    simulator = PerturbedEnv(real_env, seed=0)
    simulator.reset(tasks(5))
    assert len(simulator.real_envs) == 5  # one per episode, reused later
    simulator.reset(tasks(3))
    assert len(simulator.real_envs) == 5
    with pytest.raises(ConfigError, match="scripted"):
        simulator.reset([Task(id="x", env_id="textworld", instruction="?")])
    simulator.close()
    assert all(env.closed for env in simulator.real_envs)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"eps_r": 1.5}, "eps_r"),
        ({"eps_p": -0.1}, "eps_p"),
        ({"eps_p": float("nan")}, "eps_p"),
        ({"kinds": ["wrong_room"]}, "unknown transition-error kinds"),
        ({"eps_p": 0.1, "max_steps": None}, "missed_done needs a step limit"),
        ({"pool_size": 0}, "pool_size"),
    ],
)
def test_bad_settings_are_refused(arguments: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        PerturbedEnv(real_env, **arguments)


def test_no_limit_is_fine_without_missed_done() -> None:
    PerturbedEnv(real_env, eps_p=0.5, kinds=["wrong_place"], max_steps=None).close()


def test_objects_of_a_state() -> None:
    assert action_objects(["take red key", "go east", "put key in box", "examine the old map", "look"]) == [
        "red key",
        "key",
        "old map",
    ]
    state = State(
        text="You walk east. Room 2 of 3. You see: a gold coin, a red key.",
        available_actions=("take gold coin", "take red key", "go west", "look"),
        irreversible_actions=("take gold coin",),
    )
    assert state_objects(state) == ["gold coin", "red key"]
    dropped = drop_object(state, "gold coin")
    assert dropped.text == "You walk east. Room 2 of 3. You see: a red key."
    assert dropped.available_actions == ("take red key", "go west", "look") and dropped.irreversible_actions == ()
    assert drop_object(dropped, "red key").text == "You walk east. Room 2 of 3. You see: nothing."
    textworld = State(text="Room: Kitchen\nVisible: chest, coin\nInventory: nothing", available_actions=("take coin",))
    assert drop_object(textworld, "coin").text == "Room: Kitchen\nVisible: chest\nInventory: nothing"
    listed = State(text="You see a box, a coin and a key.", available_actions=("take coin",))
    assert drop_object(listed, "coin").text == "You see a box and a key."
