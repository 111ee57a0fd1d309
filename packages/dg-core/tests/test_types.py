from __future__ import annotations

import pytest
from pydantic import ValidationError

from dg_core import SCHEMA_VERSION, Action, State, Step, Task, Trajectory
from tests.conftest import make_trajectory


def test_task_lineage_must_be_consistent() -> None:
    with pytest.raises(ValidationError, match="needs a parent_id"):
        Task(id="t", env_id="scripted", instruction="x", generation=1)
    with pytest.raises(ValidationError, match="generation >= 1"):
        Task(id="t", env_id="scripted", instruction="x", parent_id="p")
    child = Task(id="t", env_id="scripted", instruction="x", parent_id="p", generation=2)
    assert child.generation == 2


def test_task_rejects_unknown_fields_and_empty_ids() -> None:
    with pytest.raises(ValidationError, match="extra"):
        Task(id="t", env_id="e", instruction="x", colour="red")  # type: ignore[call-arg]
    with pytest.raises(ValidationError, match="at least 1 character"):
        Task(id="", env_id="e", instruction="x")
    with pytest.raises(ValidationError, match="split"):
        Task(id="t", env_id="e", instruction="x", split="dev")  # type: ignore[arg-type]


def test_state_validates_actions() -> None:
    with pytest.raises(ValidationError, match="duplicate available action 'look'"):
        State(text="s", available_actions=("look", "look"))
    with pytest.raises(ValidationError, match="non-empty"):
        State(text="s", available_actions=("look", "  "))
    with pytest.raises(ValidationError, match="not among available actions"):
        State(text="s", available_actions=("look",), irreversible_actions=("buy",))
    free = State(text="s")
    assert free.allows("anything at all")
    fixed = State(text="s", available_actions=("look", "buy"), irreversible_actions=("buy",))
    assert fixed.allows("look") and not fixed.allows("jump")


def test_action_coerce() -> None:
    assert Action.coerce("look") == Action(text="look")
    action = Action(text="look", reasoning="why not")
    assert Action.coerce(action) is action
    with pytest.raises(TypeError, match="got int"):
        Action.coerce(3)  # type: ignore[arg-type]


def test_step_rejects_non_finite_reward_and_truncation_without_done() -> None:
    state = State(text="s")
    with pytest.raises(ValidationError, match="reward must be finite"):
        Step(state=state, action=Action(text="a"), next_state=state, reward=float("nan"), done=True, step_index=0)
    with pytest.raises(ValidationError, match="truncated step must also be done"):
        Step(state=state, action=Action(text="a"), next_state=state, reward=0, done=False, truncated=True, step_index=0)
    with pytest.raises(ValidationError, match="greater than or equal to 0"):
        Step(state=state, action=Action(text="a"), next_state=state, reward=0, done=False, step_index=-1)


def test_trajectory_checks_step_order_and_done() -> None:
    good = make_trajectory(0, 3)
    steps = list(good.steps)
    with pytest.raises(ValidationError, match=r"steps\[1\] has step_index 2"):
        Trajectory.model_validate({**good.model_dump(by_alias=True), "steps": [steps[0], steps[2]]})
    early_done = steps[0].model_copy(update={"done": True})
    with pytest.raises(ValidationError, match="step 0 is done but is not the last step"):
        Trajectory.model_validate({**good.model_dump(by_alias=True), "steps": [early_done, *steps[1:]]})


def test_trajectory_serialises_return_and_version() -> None:
    trajectory = make_trajectory(4, 2)
    data = trajectory.model_dump(mode="json", by_alias=True)
    assert data["return"] == 1.0
    assert data["schema_version"] == SCHEMA_VERSION
    assert "return_" not in data
    assert trajectory.num_steps == 2 and trajectory.finished
    assert Trajectory.model_validate(data) == trajectory


def test_models_are_frozen() -> None:
    state = State(text="s")
    with pytest.raises(ValidationError, match="frozen"):
        state.text = "t"  # type: ignore[misc]
