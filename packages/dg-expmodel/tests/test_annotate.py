from __future__ import annotations

import json

import pytest

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


# -- the check of one trace ----------------------------------------------------------------------------------
def move_step() -> Step:
    kitchen = State(
        text="You are in a kitchen. There is an exit to the west. Room: Kitchen. Visible: nothing.",
        available_actions=("go west", "look", "inventory"),
    )
    office = State(
        text="You arrive in an office. There is an exit to the east. Room: Office. Visible: nothing.",
        available_actions=("go east", "look", "inventory"),
    )
    return Step(state=kitchen, action=Action(text="go west"), next_state=office, reward=0, done=False, step_index=0)


def win_step() -> Step:
    office = State(text="Room: Office. There is a coin on the floor.", available_actions=("take coin", "look"))
    won = State(text="You pick up the coin. You win!", available_actions=())
    return Step(state=office, action=Action(text="take coin"), next_state=won, reward=1, done=True, step_index=3)


GOOD_MOVE = (
    "Going west is possible because the kitchen has an exit to the west. The agent therefore enters the office; "
    "the coin is not there, so the reward is 0 and the episode continues."
)
GOOD_WIN = "Taking the coin is allowed since it lies on the floor here. Collecting the coin is the goal, so it wins."


def test_check_passes_explanations_with_and_without_connectives() -> None:
    from dg_expmodel import check_trace, copies_outcome

    assert check_trace(GOOD_MOVE, move_step()) is None
    assert check_trace(GOOD_WIN, win_step()) is None
    # No connective, but most of its words are its own: an explanation, not a copy.
    plain = (
        "The western doorway of the kitchen is unblocked, letting the agent walk through into a different room. "
        "Finding nothing worth collecting there, it earns nothing yet."
    )
    assert not copies_outcome(plain, move_step()) and check_trace(plain, move_step()) is None


def test_check_rejects_empty_and_degenerate_traces() -> None:
    from dg_expmodel import check_trace

    step = move_step()
    assert check_trace("", step) == "empty"
    assert check_trace(" ... !", step) == "empty"
    assert check_trace(GOOD_MOVE, step, finished=False) == "degenerate"  # cut at the token cap
    assert check_trace("Valid move.", step) == "degenerate"  # under 3 words
    assert check_trace("You're in a text adventure. " * 4, step) == "degenerate"  # a loop
    loop = (
        "The environment answered 'go west' because it is unblocked, a common behavior in text adventure. The "
        "behavior is a common behavior in text adventure, and a behavior that is common behavior in text adventure."
    )
    assert check_trace(loop, step) == "degenerate"  # the 4-gram 'behavior in text adventure' three times
    rephrased = (
        "The move is rewarded because the exit is open. In this case, the environment is rewarding the action of "
        "walking west. So the environment is rewarding the action of walking west."
    )
    assert check_trace(rephrased, step) == "degenerate"  # an 8-word phrase twice
    assert check_trace("the agent and the agent " * 5 + "go west now", step) == "degenerate"  # few distinct words


def test_check_rejects_claims_that_contradict_the_reward() -> None:
    from dg_expmodel import check_trace

    move, win = move_step(), win_step()
    assert check_trace("The exit is open, so the agent walks west and wins the game.", move) == "contradicts_outcome"
    assert check_trace("Walking west is allowed because of the open exit; the task is complete.", move) == (
        "contradicts_outcome"
    )
    assert check_trace("The exit is open, so the move works and the reward is 1.", move) == "contradicts_outcome"
    assert check_trace("The coin lies here, so taking it fails the task.", win) == "contradicts_outcome"
    assert check_trace("The coin is taken, but since the game ends the agent gets no reward.", win) == (
        "contradicts_outcome"
    )
    assert check_trace("The coin is taken because it is here; the task is not complete.", win) == (
        "contradicts_outcome"
    )
    # Conservative: hypotheticals, negations and a correct value among several are not claims.
    hypothetical = "The move is valid because the exit is open. Taking the coin would win the game, so reward is 0."
    assert check_trace(hypothetical, move) is None
    assert check_trace("The agent has not won yet because the coin is elsewhere, so the episode goes on.", move) is None
    assert (
        check_trace("If the agent took the coin the reward would be 1; here the reward is 0 since it moved.", move)
        is None
    )
    assert check_trace("The agent picks the coin up because it is on the floor, so it wins: reward 1.", win) is None


def test_copies_outcome_flags_restatements_both_ways() -> None:
    from dg_expmodel import RuleBasedAnnotator, check_trace, copies_outcome

    move, win = move_step(), win_step()
    copy = (
        "You arrive in an office. There is an exit to the east. Room: Office. Visible: nothing. Reward: 0 Done: false"
    )
    assert copies_outcome(copy, move) and check_trace(copy, move) == "copies_outcome"
    assert copies_outcome("You pick up the coin. You win! The episode ends with reward 1.", win)
    # The rule annotator's valid-move trace lists what changed; its invalid-action trace gives a reason ('so').
    assert copies_outcome(RuleBasedAnnotator().explain(move), move)
    invalid = move.model_copy(update={"action": Action(text="dance"), "next_state": move.state})
    assert not copies_outcome(RuleBasedAnnotator().explain(invalid), invalid)
    assert not copies_outcome(GOOD_MOVE, move) and not copies_outcome(GOOD_WIN, win)
    assert not copies_outcome("", move)
    # A connective copied from the transition's own text proves nothing.
    locked = State(text="The door is locked, so you stay in the hall.", available_actions=("open door",))
    stuck = move.model_copy(update={"action": Action(text="open door"), "next_state": locked, "state": locked})
    assert copies_outcome("The door is locked, so you stay in the hall.", stuck)
    assert not copies_outcome("The door stays shut because it is locked and the agent holds no key.", stuck)


# -- the checked LLM annotator, with a deterministic backend ---------------------------------------------------
class ScriptedBackend:
    """Answers from a table keyed by the action of the transition; ``None`` marks an answer cut at the cap."""

    def __init__(self, answers: dict[str, str | None], *, chat: bool = False) -> None:
        self.answers = answers
        self.prompts: list[object] = []
        self._chat = chat

    @property
    def chat(self) -> bool:
        return self._chat

    def complete(self, prompts, sampling):  # type: ignore[no-untyped-def]
        from dg_expmodel import Completion

        self.prompts.extend(prompts)
        out = []
        for prompt in prompts:
            text = prompt if isinstance(prompt, str) else prompt[-1]["content"]
            action = text.split("\nAction: ", 1)[1].split("\n", 1)[0]
            answer = self.answers[action]
            out.append(Completion(text=answer or GOOD_MOVE, completion_tokens=7, finished=answer is not None))
        return out


class RefusingBackend:
    chat = False

    def complete(self, prompts, sampling):  # type: ignore[no-untyped-def]
        raise AssertionError("a resumed annotator must not ask again")


def six_steps() -> list[Step]:
    move, win = move_step(), win_step()
    attic = State(text="Room: Attic. A key hangs on a hook.", available_actions=("take key", "look"))
    key_win = State(text="You take the key. You win!", available_actions=())
    return [
        move,  # a good explanation
        move.model_copy(update={"action": Action(text="look")}),  # copies the next state
        move.model_copy(update={"action": Action(text="inventory")}),  # empty
        move.model_copy(update={"action": Action(text="go north")}),  # cut at the token cap
        win,  # a good explanation
        Step(state=attic, action=Action(text="take key"), next_state=key_win, reward=1, done=True, step_index=1),
    ]


ANSWERS: dict[str, str | None] = {
    "go west": GOOD_MOVE,
    "look": "You arrive in an office. There is an exit to the east. Room: Office. Visible: nothing.",
    "inventory": "  ",
    "go north": None,
    "take coin": GOOD_WIN + " <b>",
    "take key": "Taking the key is allowed, but the agent fails to complete the task.",  # reward 1
}


def test_llm_annotator_falls_back_counts_rejects_and_resumes(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from dg_expmodel import LLMAnnotator, copies_outcome, step_key

    steps = six_steps()
    cache = tmp_path / "annotations.jsonl"
    backend = ScriptedBackend(ANSWERS, chat=True)
    annotator = LLMAnnotator(backend, cache, batch_size=4)
    traces = annotator.annotate(steps + steps[:2])  # repeated transitions are asked once
    rule = RuleBasedAnnotator()
    assert traces[0] == GOOD_MOVE and traces[4] == GOOD_WIN + " b"  # kept; tags stripped
    assert traces[1:4] == rule.annotate(steps[1:4]) and traces[5] == rule.explain(steps[5])
    assert traces[6:] == traces[:2]
    assert len(backend.prompts) == 6 == annotator.generated and annotator.cached == 0
    first = backend.prompts[0]
    assert isinstance(first, list) and first[0]["role"] == "system" and "causes" in first[0]["content"]
    assert first[1]["content"].endswith(
        "Why did the environment answer 'go west' this way? Explain the causes in 2 to 4 sentences."
    )
    assert dict(annotator.rejects) == {"copies_outcome": 1, "empty": 1, "degenerate": 1, "contradicts_outcome": 1}
    summary = annotator.summary()
    assert summary["transitions"] == 6 and summary["accepted"] == 2 and summary["fallbacks"] == 4
    assert summary["rejects"] == {"empty": 1, "degenerate": 1, "contradicts_outcome": 1, "copies_outcome": 1}
    assert summary["fallback_share"] == 4 / 6
    # Raw: only the 'look' answer copies. Final: the rule traces of the valid actions look, inventory and take
    # key list what changed (copies); the invalid 'go north' one gives a reason.
    assert summary["raw_copy_rate"] == 1 / 6
    assert [copies_outcome(t, s) for t, s in zip(traces, steps, strict=False)] == [
        False,
        True,
        True,
        False,
        False,
        True,
    ]
    assert summary["final_copy_rate"] == 3 / 6
    assert summary["completion_tokens_per_generated"] == 7 and summary["seconds_per_generated"] >= 0
    record = annotator.record_of(step_key(steps[5]))
    assert record.reason == "contradicts_outcome" and record.raw == ANSWERS["take key"]
    assert annotator.record_of(step_key(steps[3])).finished is False

    # A second call asks nothing; a new annotator on the cache takes the same decisions without a backend.
    assert annotator.annotate(steps) == traces[:6] and len(backend.prompts) == 6 and annotator.transitions == 6
    resumed = LLMAnnotator(RefusingBackend(), cache)
    assert resumed.annotate(steps) == traces[:6]
    assert resumed.generated == 0 and resumed.cached == 6 and resumed.rejects == annotator.rejects
    assert resumed.summary()["seconds_per_generated"] is None
    lines = [json.loads(line) for line in cache.read_text().splitlines()]
    assert [line["reason"] for line in lines] == [
        None,
        "copies_outcome",
        "empty",
        "degenerate",
        None,
        "contradicts_outcome",
    ]
    assert lines[0] == {
        "key": step_key(steps[0]),
        "raw": GOOD_MOVE,
        "finished": True,
        "reason": None,
        "reasoning": GOOD_MOVE,
    }


def test_records_written_before_the_check_are_checked_when_served(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from dg_core import ConfigError
    from dg_expmodel import LLMAnnotator, step_key

    move, win = move_step(), win_step()
    cache = tmp_path / "annotations.jsonl"
    old = [{"key": step_key(move), "reasoning": ANSWERS["look"]}, {"key": step_key(win), "reasoning": GOOD_WIN}]
    cache.write_text("".join(json.dumps(record) + "\n" for record in old))
    annotator = LLMAnnotator(RefusingBackend(), cache)
    assert annotator.annotate([move, win]) == [RuleBasedAnnotator().explain(move), GOOD_WIN]
    assert annotator.cached == 2 and dict(annotator.rejects) == {"copies_outcome": 1}
    upgraded = [json.loads(line) for line in cache.read_text().splitlines()[2:]]
    assert [(r["key"], r["reason"]) for r in upgraded] == [(step_key(move), "copies_outcome"), (step_key(win), None)]
    again = LLMAnnotator(RefusingBackend(), cache)
    assert again.annotate([move, win]) == annotator.annotate([move, win]) and again.rejects == annotator.rejects
    cache.write_text(json.dumps({"key": "k", "raw": "x", "reason": "bored", "reasoning": "x"}) + "\n")
    with pytest.raises(ConfigError, match=r"annotations\.jsonl:1: not an annotation record .*unknown reason 'bored'"):
        LLMAnnotator(RefusingBackend(), cache)


class CountingBackend:
    """Forwards to a real backend and counts the prompts it is asked."""

    def __init__(self, inner: object) -> None:
        self.inner = inner
        self.prompts = 0

    @property
    def chat(self) -> bool:
        return bool(self.inner.chat)  # type: ignore[attr-defined]

    def complete(self, prompts, sampling):  # type: ignore[no-untyped-def]
        self.prompts += len(prompts)
        return self.inner.complete(prompts, sampling)  # type: ignore[attr-defined]


@pytest.mark.pretrained
@pytest.mark.slow
def test_smollm2_annotates_real_transitions_checked(trajectories, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from dg_expmodel import LLMAnnotator, TransformersBackend, step_key
    from dg_models import load_model

    loaded = load_model("smollm2")
    backend = CountingBackend(TransformersBackend(loaded.model, loaded.tokenizer, batch_size=4))
    assert backend.chat  # the instruct model answers through its chat template
    # Four real transitions of the scripted world: an expert episode's moves and win, a random episode's start.
    steps = list({step_key(s): s for t in trajectories[:2] for s in t.steps}.values())[:4]
    # 64 new tokens keep the test short; SmolLM2's answers mostly run to any cap (see the benchmark at 96).
    annotator = LLMAnnotator(backend, tmp_path / "annotations.jsonl", batch_size=4, max_new_tokens=64)
    traces = annotator.annotate(steps)
    summary = annotator.summary()
    print("smollm2 annotator:", json.dumps(summary))  # the numbers the README quotes, in the CI log
    assert len(traces) == 4 and all(trace.strip() for trace in traces)
    assert annotator.generated + annotator.cached == 4 == backend.prompts == summary["transitions"]
    assert summary["accepted"] + sum(summary["rejects"].values()) == 4
    fallback = RuleBasedAnnotator()
    for step, trace in zip(steps, traces, strict=True):
        record = annotator.record_of(step_key(step))
        assert (trace == fallback.explain(step)) if record.reason else (trace == " ".join(record.raw.split()))
    assert annotator.annotate(steps) == traces and backend.prompts == 4  # a second call asks nothing
