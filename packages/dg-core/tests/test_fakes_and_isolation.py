from __future__ import annotations

import subprocess
import sys

from dg_core import (
    Action,
    ExperienceModel,
    ExperiencePrediction,
    ExperienceQuery,
    Policy,
    State,
    TaskGenerationRequest,
    play_episode,
)
from dg_core.testing import (
    FAILURE_TEXT,
    ScriptedEnv,
    ScriptedExperienceModel,
    ScriptedPolicy,
    ScriptedTaskGenerator,
    scripted_task,
)


def test_dg_core_imports_without_torch() -> None:
    code = "import sys, dg_core, dg_core.testing; print('torch' in sys.modules, 'numpy' in sys.modules)"
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert output.split() == ["False", "False"]


def test_scripted_experience_model_copies_grounded_transitions() -> None:
    env = ScriptedEnv()
    task = scripted_task("x", rooms=3, seed=4)
    real = play_episode(env, ScriptedPolicy(lambda _r: env.expert_action(), policy_id="expert"), task)
    model = ScriptedExperienceModel()
    assert isinstance(model, ExperienceModel)
    first = real.steps[0]
    grounded = ExperienceQuery(task=task, state=first.state, action=first.action, retrieved=real.steps)
    ungrounded = ExperienceQuery(task=task, state=first.state, action=Action(text="look"), retrieved=real.steps[1:])
    copied, failed = model.predict([grounded, ungrounded])
    assert copied.next_state == first.next_state and copied.reward == first.reward and copied.done == first.done
    assert failed.next_state.text.startswith(FAILURE_TEXT)
    assert failed.next_state.available_actions == first.state.available_actions
    assert failed.reward == 0.0 and not failed.done
    assert model.queries == [grounded, ungrounded]


def test_function_experience_model() -> None:
    def respond(query: ExperienceQuery) -> ExperiencePrediction:
        return ExperiencePrediction(next_state=State(text=query.action.text.upper()), reward=0.5)

    model = ScriptedExperienceModel(respond)
    query = ExperienceQuery(task=scripted_task("q"), state=State(text="s"), action=Action(text="shout"))
    (prediction,) = model.predict([query])
    assert prediction.next_state.text == "SHOUT" and prediction.reward == 0.5


def test_scripted_policy_cycles_and_is_a_policy() -> None:
    policy = ScriptedPolicy(["look", "go east"])
    assert isinstance(policy, Policy)
    env = ScriptedEnv(max_steps=5)
    trajectory = play_episode(env, policy, scripted_task("c", rooms=6, seed=1))
    assert [s.action.text for s in trajectory.steps][:4] == ["look", "go east", "look", "go east"]


def test_task_generator_sets_lineage() -> None:
    parent = scripted_task("root", rooms=3, seed=9)
    generator = ScriptedTaskGenerator(seed=1)
    (children,) = generator.generate([TaskGenerationRequest(seed_task=parent, num_variations=4)])
    assert len(children) == 4
    assert all(c.parent_id == "root" and c.generation == 1 and c.seed == 9 for c in children)
    assert len({c.id for c in children}) == 4
    assert all(2 <= c.config["rooms"] <= 20 for c in children)
    (grandchildren,) = generator.generate([TaskGenerationRequest(seed_task=children[0], num_variations=1)])
    assert grandchildren[0].generation == 2 and grandchildren[0].parent_id == children[0].id
    env = ScriptedEnv()
    assert env.reset(grandchildren[0]).text  # generated tasks are playable
