from __future__ import annotations

import json

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


class CountingTextBackend:
    """A real tiny-model backend wrapped to count calls (the annotations themselves are model output)."""

    def __init__(self, inner: object) -> None:
        self.inner = inner
        self.prompts = 0

    @property
    def chat(self) -> bool:
        return False

    def complete(self, prompts, sampling):  # type: ignore[no-untyped-def]
        self.prompts += len(prompts)
        return self.inner.complete(prompts, sampling)  # type: ignore[attr-defined]


def test_llm_annotator_caches_and_resumes(tiny_model, tokenizer, trajectories, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from dg_expmodel import LLMAnnotator, TransformersBackend, step_key

    backend = CountingTextBackend(TransformersBackend(tiny_model, tokenizer))
    steps = [step for trajectory in trajectories[:3] for step in trajectory.steps]
    cache = tmp_path / "annotations.jsonl"
    annotator = LLMAnnotator(backend, cache, batch_size=4, max_new_tokens=6)
    first = annotator.annotate(steps)
    unique = len({step_key(step) for step in steps})
    assert len(first) == len(steps) and all(first)
    assert backend.prompts == unique == annotator.generated
    assert "<" not in "".join(first)  # tags are stripped so traces cannot break the response format
    # A new annotator on the same cache asks for nothing: the run resumes from disk.
    again = LLMAnnotator(backend, cache, batch_size=4, max_new_tokens=6)
    assert again.annotate(steps) == first and backend.prompts == unique
    # A torn last record (killed mid-write) is asked again; a garbage record is an error naming the line.
    lines = cache.read_text().splitlines(keepends=True)
    cache.write_text("".join(lines[:-1]) + lines[-1][:10])
    resumed = LLMAnnotator(backend, cache, batch_size=4, max_new_tokens=6)
    torn_key = json.loads(lines[-1])["key"]
    redone = resumed.annotate(steps)
    assert resumed.generated == 1
    kept = [i for i, step in enumerate(steps) if step_key(step) != torn_key]
    assert [redone[i] for i in kept] == [first[i] for i in kept]
    assert LLMAnnotator(backend, cache).annotate(steps) == resumed.annotate(steps)  # the cache is whole again
    cache.write_text('{"key": "x"}\n')
    import pytest

    from dg_core import ConfigError

    with pytest.raises(ConfigError, match=r"annotations\.jsonl:1: not an annotation record"):
        LLMAnnotator(backend, cache)
