"""Irreversible actions end to end in the experience model (issue 20, item 3): tags in synthetic states, the
synthetic env's ``irreversible`` switch (allow / penalize / end), and the nearest model copying real tags."""

from __future__ import annotations

import math
from collections.abc import Sequence

import pytest

from dg_core import (
    Action,
    ConfigError,
    ExperiencePrediction,
    ExperienceQuery,
    State,
    Step,
    Task,
    Trajectory,
)
from dg_core.testing import ScriptedExperienceModel
from dg_expmodel import (
    IRREVERSIBLE_MODES,
    BatchedSyntheticEnv,
    Completion,
    LLMExperienceModel,
    NearestExperienceModel,
    PromptOptions,
    ReplayRetriever,
    SyntheticEnv,
    render_response,
    with_initial_state,
)
from dg_replay import HashingEncoder, ReplayBuffer

BUY, DELETE, BACK = "click[buy now]", "click[delete review]", "click[back to products]"
PRODUCT = State(
    text="Red Mug, $8.50. Review: 'Works well.' - Sam",
    available_actions=(BUY, DELETE, BACK),
    irreversible_actions=(BUY, DELETE),
)
NO_REVIEW = State(text="Red Mug, $8.50. No reviews.", available_actions=(BUY, BACK), irreversible_actions=(BUY,))
ORDERED = State(text="Order confirmed: Red Mug x 1.", available_actions=(BACK,))
LIST = State(text="All products: Red Mug, Blue Kettle.", available_actions=("click[red mug]",))


def shop_task(task_id: str, goal: str) -> Task:
    """``goal``: ``"buy"`` (the purchase is the task) or ``"back"`` (every irreversible action is a trap)."""
    instruction = "Buy one Red Mug." if goal == "buy" else "Go back to the list of products."
    task = Task(id=task_id, env_id="shop", instruction=instruction, config={"goal": goal})
    return with_initial_state(task, PRODUCT)


def shop_outcome(query: ExperienceQuery) -> ExperiencePrediction:
    """A perfect simulator of the little shop above."""
    goal = query.task.config["goal"]
    action = query.action.text
    if action == BUY:
        won = goal == "buy"
        return ExperiencePrediction(reasoning="The order is placed.", next_state=ORDERED, reward=float(won), done=won)
    if action == DELETE:
        return ExperiencePrediction(reasoning="The review is deleted.", next_state=NO_REVIEW)
    won = goal == "back"
    return ExperiencePrediction(reasoning="The list opens.", next_state=LIST, reward=float(won), done=won)


def play(env: BatchedSyntheticEnv, tasks: list[Task], actions: list[list[str]]) -> list[Trajectory]:
    env.reset(tasks, [None] * len(tasks))
    for turn in range(max(len(a) for a in actions)):
        env.step([None if done or turn >= len(a) else a[turn] for a, done in zip(actions, env.dones, strict=True)])
    return env.trajectories()


TRAP = [DELETE, BACK]
"""Delete the review (a trap: the task does not need it), then do what the task asks."""


def test_allow_keeps_the_models_answer_and_counts_irreversible_steps() -> None:
    env = BatchedSyntheticEnv(ScriptedExperienceModel(shop_outcome), max_steps=4)
    trap, purchase = play(env, [shop_task("back", "back"), shop_task("buy", "buy")], [TRAP, [BUY]])
    assert [s.reward for s in trap.steps] == [0.0, 1.0] and trap.success
    assert trap.steps[0].next_state == NO_REVIEW  # the tags travel with the predicted state
    assert trap.steps[0].info["irreversible"] == "allow" and "irreversible" not in trap.steps[1].info
    assert purchase.success and purchase.return_ == 1.0
    assert env.irreversible_stats.as_dict() == {"steps": 2, "succeeded": 1, "penalized": 0, "ended": 0}


def test_penalize_charges_irreversible_steps_that_do_not_succeed() -> None:
    env = BatchedSyntheticEnv(
        ScriptedExperienceModel(shop_outcome), max_steps=4, irreversible="penalize", irreversible_penalty=0.5
    )
    tasks = [shop_task("back", "back"), shop_task("buy", "buy"), shop_task("wrong-buy", "back")]
    trap, purchase, wrong = play(env, tasks, [TRAP, [BUY], [BUY, BACK]])
    assert [s.reward for s in trap.steps] == [-0.5, 1.0] and trap.success and trap.return_ == 0.5
    assert trap.steps[0].info["irreversible"] == "penalize" and not trap.steps[0].done
    assert [s.reward for s in purchase.steps] == [1.0] and purchase.success  # the purchase the task asks for
    assert [s.reward for s in wrong.steps] == [-0.5, 1.0]  # a wrong order: charged, and the episode goes on
    assert env.irreversible_stats.as_dict() == {"steps": 3, "succeeded": 1, "penalized": 2, "ended": 0}


def test_end_stops_the_episode_at_an_irreversible_step() -> None:
    env = BatchedSyntheticEnv(ScriptedExperienceModel(shop_outcome), max_steps=4, irreversible="end")
    trap, purchase = play(env, [shop_task("back", "back"), shop_task("buy", "buy")], [TRAP, [BUY]])
    assert trap.num_steps == 1 and trap.steps[0].done and not trap.success and trap.return_ == 0.0
    assert not trap.steps[0].truncated and trap.steps[0].info["irreversible"] == "end"
    assert purchase.success and purchase.return_ == 1.0
    assert env.irreversible_stats.as_dict() == {"steps": 2, "succeeded": 1, "penalized": 0, "ended": 1}


def test_a_penalised_final_step_is_still_a_failure() -> None:
    def final_failure(query: ExperienceQuery) -> ExperiencePrediction:
        return ExperiencePrediction(next_state=ORDERED, reward=1.0, done=True, success=False)

    env = SyntheticEnv(ScriptedExperienceModel(final_failure), irreversible="penalize", irreversible_penalty=2.0)
    env.reset(shop_task("t", "back"))
    result = env.step(BUY)
    assert (result.reward, result.done, result.success) == (-1.0, True, False)
    assert not env.trajectory().success and env.irreversible_stats.penalized == 1


def test_write_back_receives_the_applied_switch() -> None:
    written: list[Step] = []
    env = SyntheticEnv(
        ScriptedExperienceModel(shop_outcome),
        write_back=lambda _task, steps: written.extend(steps),
        irreversible="penalize",
    )
    env.reset(shop_task("t", "back"))
    env.step(DELETE)
    (stored,) = written
    assert stored.reward == -1.0 and stored.info["irreversible"] == "penalize"  # default penalty 1
    assert stored.next_state.irreversible_actions == (BUY,)


@pytest.mark.parametrize(("mode", "penalty"), [("forbid", 1.0), ("penalize", -1.0), ("end", math.nan)])
def test_bad_settings_are_config_errors(mode: str, penalty: float) -> None:
    with pytest.raises(ConfigError, match="irreversible"):
        BatchedSyntheticEnv(ScriptedExperienceModel(), irreversible=mode, irreversible_penalty=penalty)  # type: ignore[arg-type]
    assert IRREVERSIBLE_MODES == ("allow", "penalize", "end")


class _CannedBackend:
    """A plain-prompt backend answering every prompt with ``answer``."""

    chat = False

    def __init__(self, answer: str) -> None:
        self.answer = answer
        self.prompts: list[object] = []

    def complete(self, prompts: Sequence[object], sampling: object) -> list[Completion]:
        self.prompts.extend(prompts)
        return [Completion(text=self.answer) for _ in prompts]


def test_an_llm_models_tags_reach_the_synthetic_state() -> None:
    """Before format version 2 the response had no place for them: every synthetic state came untagged."""
    answer = render_response(ExperiencePrediction(reasoning="The review is deleted.", next_state=NO_REVIEW))
    backend = _CannedBackend(answer)
    env = BatchedSyntheticEnv(LLMExperienceModel(backend, retries=0), max_steps=3, irreversible="end")
    (trajectory,) = play(env, [shop_task("t", "back")], [[BACK, BUY]])
    first, second = trajectory.steps
    assert first.next_state.irreversible_actions == (BUY,) and first.info["parse_ok"] is True
    assert "irreversible" not in first.info and not first.done
    # The synthetic state's tag is what makes the switch fire on the next step.
    assert second.action.text == BUY and second.done and second.info["irreversible"] == "end"
    assert "Irreversible actions: click[buy now]" in str(backend.prompts[-1])


def test_the_nearest_model_copies_real_tags_through_the_replay_buffer() -> None:
    real_step = Step(
        state=PRODUCT, action=Action(text=DELETE), next_state=NO_REVIEW, reward=0.0, done=False, step_index=0
    )
    task = shop_task("real", "back")
    real = Trajectory(id="r", task=task, steps=(real_step,), success=False, return_=0.0)
    buffer = ReplayBuffer.create(encoder=HashingEncoder(dim=64))
    buffer.add_trajectories([real])
    env = BatchedSyntheticEnv(
        NearestExperienceModel(PromptOptions(max_retrieved=1)), retriever=ReplayRetriever(buffer), top_k=1, max_steps=3
    )
    (trajectory,) = play(env, [task], [[DELETE, BUY]])
    assert trajectory.steps[0].next_state.irreversible_actions == (BUY,)
    assert trajectory.steps[0].next_state == NO_REVIEW
    assert trajectory.steps[1].state.irreversible_actions == (BUY,)
