from __future__ import annotations

from dg_core import Action, Env, State, Step
from dg_core.testing import ScriptedEnv, scripted_task
from dg_expmodel import Annotator, RuleBasedAnnotator


def step_of(env: Env, action: str) -> Step:
    env.step(action)
    return env.trajectory().steps[-1]


def test_explains_a_move_a_win_and_a_loss() -> None:
    annotator = RuleBasedAnnotator()
    assert isinstance(annotator, Annotator)
    env = ScriptedEnv()
    env.reset(scripted_task("a", rooms=3, seed=0))
    move = annotator.explain(step_of(env, "go east"))
    assert move.startswith("The action 'go east' is available in the current state.")
    assert "New in the observation: 'You walk east.', 'Room 2 of 3.'" in move
    assert "No longer observed: 'You wake up at the west end of a corridor.', 'Room 1 of 3.'" in move
    assert "Newly available: " in move and "'go west'" in move
    assert move.endswith("The task is not finished yet: reward 0 and the episode goes on.")
    while not env.done:
        last = step_of(env, env.expert_action())
    win = annotator.explain(last)
    assert "This accomplishes the task: reward 1 and the episode ends." in win

    env.reset(scripted_task("b", rooms=3, seed=0))
    wrong_item = next(a for a in env.state.available_actions or () if a.startswith("take"))
    loss = annotator.explain(step_of(env, wrong_item))
    assert loss.endswith("The episode ends without accomplishing the task: reward 0.")


def test_explains_an_invalid_action_and_truncation() -> None:
    annotator = RuleBasedAnnotator()
    env = ScriptedEnv(max_steps=1)
    env.reset(scripted_task("c", rooms=3, seed=0))
    text = annotator.explain(step_of(env, "dance"))
    assert text.startswith("The action 'dance' is not among the available actions, so it cannot take effect.")
    assert "The observation does not change." in text
    assert text.endswith("The step limit is reached without success: reward 0 and the episode ends.")


def test_free_text_irreversible_and_intermediate_reward() -> None:
    before = State(text="A shop. A red shirt.", available_actions=("buy", "back"), irreversible_actions=("buy",))
    after = State(text="A shop. You bought the red shirt.")
    step = Step(state=before, action=Action(text="buy"), next_state=after, reward=0.5, done=False, step_index=0)
    text = RuleBasedAnnotator(max_listed=1).explain(step)
    assert "It is irreversible." in text
    assert "New in the observation: 'You bought the red shirt.'." in text
    assert "Newly available" not in text  # the next state has a free-text action space
    assert text.endswith("this step earns reward 0.5.")
    free = Step(state=after, action=Action(text="hello"), next_state=after, reward=0, done=False, step_index=1)
    assert RuleBasedAnnotator().explain(free).startswith("The agent issues 'hello'.")
    many = State(text="a. b. c. d.")
    listed = Step(state=State(text="z."), action=Action(text="x"), next_state=many, reward=0, done=False, step_index=0)
    assert "'a.', 'b.' and 2 more" in RuleBasedAnnotator(max_listed=2).explain(listed)
