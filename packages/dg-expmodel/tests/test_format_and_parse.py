from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dg_core import Action, ExperiencePrediction, ExperienceQuery, RandomPolicy, State, Step, play_episode
from dg_core.testing import ScriptedEnv, ScriptedPolicy, scripted_task
from dg_expmodel import (
    BINARY_REWARDS,
    FORMAT_VERSION,
    FREE_TEXT,
    OPTIONAL_TAGS,
    PARSE_ERRORS,
    RESPONSE_TAGS,
    Completion,
    LLMExperienceModel,
    PromptOptions,
    RuleBasedAnnotator,
    build_messages,
    examples_from_trajectories,
    failure_prediction,
    parse_response,
    render_prompt,
    render_response,
    target_of,
)

VALID = (
    "<reasoning>The door is open.</reasoning>\n<next_state>You are in the hall.</next_state>\n"
    "<available_actions>\ngo north\nlook\n</available_actions>\n<reward>0</reward>\n<done>false</done>"
)


def real_steps() -> list:  # type: ignore[type-arg]
    env = ScriptedEnv(max_steps=12)
    steps = []
    for seed in range(6):
        task = scripted_task(f"t{seed}", rooms=3 + seed % 3, seed=seed)
        steps += play_episode(env, ScriptedPolicy(lambda _r: env.expert_action()), task).steps
        steps += play_episode(env, RandomPolicy(seed=seed), task).steps
    return steps


def test_targets_of_real_transitions_round_trip() -> None:
    annotator = RuleBasedAnnotator()
    steps = real_steps()
    assert len(steps) > 30
    for step, reasoning in zip(steps, annotator.annotate(steps), strict=True):
        target = target_of(step, reasoning)
        parsed = parse_response(render_response(target))
        assert parsed.ok, parsed.detail
        assert parsed.prediction is not None
        assert parsed.prediction.next_state == target.next_state
        assert parsed.prediction.reward == step.reward and parsed.prediction.done == step.done
        assert parsed.prediction.reasoning == reasoning


def test_valid_text_parses_exactly() -> None:
    result = parse_response(VALID + "\nand then the model kept talking")
    assert result.ok and result.error is None
    prediction = result.prediction
    assert prediction is not None
    assert prediction.next_state == State(text="You are in the hall.", available_actions=("go north", "look"))
    assert (prediction.reward, prediction.done, prediction.reasoning) == (0.0, False, "The door is open.")
    assert prediction.parse_ok and prediction.raw is not None


def test_free_text_and_empty_action_sets() -> None:
    free = parse_response(VALID.replace("go north\nlook", FREE_TEXT))
    assert free.prediction is not None and free.prediction.next_state.available_actions is None
    empty = parse_response(VALID.replace("\ngo north\nlook\n", "\n"))
    assert empty.prediction is not None and empty.prediction.next_state.available_actions == ()


@pytest.mark.parametrize(
    ("text", "error"),
    [
        (VALID.replace("<reward>0</reward>", ""), "missing_tag"),
        (VALID.replace("</done>", ""), "missing_tag"),
        (VALID.replace("<next_state>", "<reasoning>again</reasoning>\n<next_state>"), "duplicate_tag"),
        (VALID.replace("</reasoning>", "</reasoning></reasoning>"), "duplicate_tag"),
        ("Sure! " + VALID, "stray_text"),
        (
            VALID.replace("<next_state>You are in the hall.</next_state>", "<next_state>  </next_state>"),
            "empty_next_state",
        ),
        (VALID.replace("go north\nlook", "look\nlook"), "duplicate_action"),
        (VALID.replace("<reward>0<", "<reward>one<"), "bad_reward"),
        (VALID.replace("<reward>0<", "<reward>nan<"), "bad_reward"),
        (VALID.replace("<reward>0<", "<reward>1e999<"), "bad_reward"),
        (VALID.replace("<reward>0<", "<reward>1e308<"), "reward_out_of_range"),
        (VALID.replace("<reward>0<", "<reward>-1<"), "reward_out_of_range"),
        (VALID.replace("<done>false<", "<done>maybe<"), "bad_done"),
        (VALID.replace("in the hall.", "in the hall.</reasoning>"), "stray_tag"),
        (
            VALID.replace("<reward>0</reward>\n<done>false</done>", "<done>false</done>\n<reward>0</reward>"),
            "out_of_order",
        ),
        ("", "missing_tag"),
    ],
)
def test_rejections_name_the_reason(text: str, error: str) -> None:
    result = parse_response(text)
    assert not result.ok
    assert result.error == error
    assert result.detail


# Issue 21, item 6: the parser accepted rewards outside {0, 1} and fields holding another field's tag, and
# refused tags in the text after </done>, which the format says is ignored.


@pytest.mark.parametrize("reward", ["-1e308", "-1", "2", "1e308", "1.7976931348623157e308", "-0.001", "1.5"])
def test_reward_outside_the_range_is_a_named_failure(reward: str) -> None:
    result = parse_response(VALID.replace("<reward>0<", f"<reward>{reward}<"))
    assert (result.ok, result.error) == (False, "reward_out_of_range")
    assert reward in result.detail and "[0, 1]" in result.detail


def test_reward_range_is_the_callers() -> None:
    half = VALID.replace("<reward>0<", "<reward>0.5<")
    assert parse_response(half).prediction is not None  # default: the interval [0, 1]
    binary = parse_response(half, reward_range=BINARY_REWARDS)
    assert binary.error == "reward_out_of_range" and "one of {0, 1}" in binary.detail
    assert parse_response(VALID, reward_range=BINARY_REWARDS).ok
    penalty = VALID.replace("<reward>0<", "<reward>-1<")
    parsed = parse_response(penalty, reward_range=(-1.0, 1.0)).prediction
    assert parsed is not None and parsed.reward == -1.0
    assert parse_response(VALID.replace("<reward>0<", "<reward>-0<")).prediction.reward == 0.0  # type: ignore[union-attr]
    for bad in [(1.0, 0.0), (0.0, math.inf), (math.nan, 1.0), frozenset(), frozenset({math.inf}), (0.0,)]:
        with pytest.raises(ValueError, match="reward_range"):
            parse_response(VALID, reward_range=bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("field", "inside"),
    [
        ("next_state", "You are</reward> in the hall."),
        ("next_state", "You are in the hall.</done>"),
        ("next_state", "You are in the <next_state>hall."),
        ("reasoning", "The door</next_state> is open."),
        ("reasoning", "The door is <reward>1</reward> open."),
        ("available_actions", "\ngo north</reasoning>\nlook\n"),
        ("available_actions", "\ngo north\n<done>true</done>\nlook\n"),
        ("reward", "0</done>"),
        ("done", "false<reward>"),
    ],
)
def test_a_field_holding_a_tag_is_a_named_failure(field: str, inside: str) -> None:
    start = VALID.index(f"<{field}>") + len(f"<{field}>")
    text = VALID[:start] + inside + VALID[VALID.index(f"</{field}>") :]
    result = parse_response(text)
    assert (result.ok, result.error) == (False, "stray_tag"), result.detail
    assert f"<{field}>" in result.detail


@pytest.mark.parametrize(
    "trailing",
    [
        "<done>true</done>",
        "\n<reward>1e308</reward>",
        "</reasoning></next_state>",
        "\n" + VALID.replace("<reward>0<", "<reward>1<").replace("false", "true"),
        "\nUser: and <next_state>then</next_state>?",
    ],
)
def test_text_after_done_is_ignored_even_with_tags(trailing: str) -> None:
    result = parse_response(VALID + trailing)
    assert result.ok, result.detail
    expected = parse_response(VALID).prediction
    assert result.prediction is not None and expected is not None
    assert (result.prediction.next_state, result.prediction.reward, result.prediction.done) == (
        expected.next_state,
        expected.reward,
        expected.done,
    )
    assert result.prediction.raw == VALID + trailing


class _CannedBackend:
    """A plain-prompt backend that answers every prompt of a call with the next canned text."""

    chat = False

    def __init__(self, answers: list[str]) -> None:
        self.answers = list(answers)

    def complete(self, prompts: list[object], sampling: object) -> list[Completion]:
        answer = self.answers.pop(0)
        return [Completion(text=answer) for _ in prompts]


def test_the_experience_model_counts_the_new_reasons_and_takes_the_range() -> None:
    query = ExperienceQuery(task=scripted_task("r"), state=State(text="s"), action=Action(text="look"))
    out_of_range = VALID.replace("<reward>0<", "<reward>1e308<")
    stray = VALID.replace("in the hall.", "in the hall.</done>")
    model = LLMExperienceModel(_CannedBackend([out_of_range, stray]), retries=1)
    (prediction,) = model.predict([query])
    assert not prediction.parse_ok and prediction.reward == 0.0
    assert prediction.info["failure"] == "unparseable model output (stray_tag)"
    assert model.stats.failure_reasons == {"reward_out_of_range": 1, "stray_tag": 1}
    assert model.stats.parse_failures == 1
    penalty = VALID.replace("<reward>0<", "<reward>-1<")
    ranged = LLMExperienceModel(_CannedBackend([penalty]), retries=0, reward_range=(-1.0, 1.0))
    assert ranged.with_options(PromptOptions()).reward_range == (-1.0, 1.0)
    (accepted,) = ranged.predict([query])
    assert accepted.parse_ok and accepted.reward == -1.0
    with pytest.raises(ValueError, match="reward_range"):
        LLMExperienceModel(_CannedBackend([]), reward_range=(2.0, 1.0))


@settings(max_examples=400, deadline=None)
@given(st.text())
def test_arbitrary_text_never_raises(text: str) -> None:
    result = parse_response(text)
    assert result.ok or result.error in PARSE_ERRORS


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_mutated_responses_never_raise(data: st.DataObject) -> None:
    text = VALID
    for _ in range(data.draw(st.integers(1, 4))):
        position = data.draw(st.integers(0, len(text)))
        if data.draw(st.booleans()):
            text = (
                text[:position]
                + data.draw(st.sampled_from(["<", ">", "</done>", "<reward>", "\n", "x", "1"]))
                + text[position:]
            )
        else:
            text = text[:position] + text[position + data.draw(st.integers(1, 8)) :]
    result = parse_response(text)
    assert result.ok or result.error in PARSE_ERRORS
    if result.prediction is not None:
        assert result.prediction.next_state.text.strip()
        assert 0.0 <= result.prediction.reward <= 1.0
        assert not any(f"<{tag}>" in result.prediction.next_state.text for tag in RESPONSE_TAGS)


_safe_text = st.text(
    alphabet=st.characters(blacklist_characters="<>", blacklist_categories=("Cs",)), min_size=1, max_size=60
).filter(lambda s: s.strip() == s and s.strip() != "")


@settings(max_examples=200, deadline=None)
@given(
    reasoning=_safe_text,
    next_text=_safe_text,
    actions=st.lists(_safe_text.filter(lambda s: "\n" not in s and s != FREE_TEXT), unique=True, max_size=5),
    reward=st.sampled_from([0.0, 1.0, 0.5, -1.0, 10.0]),
    done=st.booleans(),
)
def test_generated_predictions_round_trip(
    reasoning: str, next_text: str, actions: list[str], reward: float, done: bool
) -> None:
    prediction = ExperiencePrediction(
        reasoning=reasoning,
        next_state=State(text=next_text, available_actions=tuple(actions)),
        reward=reward,
        done=done,
    )
    parsed = parse_response(render_response(prediction), reward_range=(-1.0, 10.0))
    assert parsed.prediction is not None, parsed.detail
    assert parsed.prediction.next_state == prediction.next_state
    assert (parsed.prediction.reward, parsed.prediction.done) == (reward, done)


def test_prompt_respects_window_and_k() -> None:
    steps = real_steps()
    task = scripted_task("p")
    query = ExperienceQuery(
        task=task, history=tuple(steps[:3]), state=steps[3].state, action=steps[3].action, retrieved=tuple(steps[4:9])
    )
    prompt = render_prompt(query, PromptOptions(history_window=2, max_retrieved=3))
    assert prompt.startswith(f"[dg-expmodel v{FORMAT_VERSION}]\n# Task\nFind the gold coin and take it.")
    assert prompt.count("## Example") == 3 and "## Example 4" not in prompt
    assert prompt.count("## Step") == 2
    assert prompt.endswith(f"# Action\n{steps[3].action.text}\n# Prediction\n")
    bare = render_prompt(query, PromptOptions(history_window=0, max_retrieved=0, include_available_actions=False))
    assert "Available actions" not in bare and "# Recent history" not in bare and "# Similar" not in bare
    messages = build_messages(query)
    assert [m["role"] for m in messages] == ["system", "user"]
    assert "# Current state" in messages[1]["content"]


def test_failure_prediction_keeps_the_state() -> None:
    state = State(text="s", available_actions=("a",))
    query = ExperienceQuery(task=scripted_task("f"), state=state, action=Action(text="zz"))
    failure = failure_prediction(query, "unparseable output", raw="garbage")
    assert failure.next_state == state and failure.reward == 0.0 and not failure.done
    assert not failure.parse_ok and failure.raw == "garbage" and failure.info == {"failure": "unparseable output"}


def test_a_prefilled_answer_is_completed_and_a_restarted_one_is_not_doubled() -> None:
    """The model continues after the prefilled ``<reasoning>``; a server that ignored the prefill and answered a
    new turn wrote the opening itself (then it is taken as it is)."""
    query = ExperienceQuery(task=scripted_task("r"), state=State(text="s"), action=Action(text="look"))
    continuation = VALID.removeprefix("<reasoning>")
    model = LLMExperienceModel(_CannedBackend([continuation, VALID]), retries=0)
    assert str(model.prompt(query)).endswith("# Prediction\n<reasoning>")
    (continued,) = model.predict([query])
    (restarted,) = model.predict([query])
    assert continued.parse_ok and restarted.parse_ok and continued.next_state == restarted.next_state
    unprefilled = LLMExperienceModel(_CannedBackend([continuation]), retries=0, prefill=False)
    (broken,) = unprefilled.predict([query])
    assert not broken.parse_ok  # without the prefill the continuation alone is not an answer


# Issue 20, item 3: irreversible actions survive into the format (version 2) and the predicted states.

SHOP = State(
    text="Red Mug, $8.50. A review by Sam.",
    available_actions=("click[buy now]", "click[delete review]", "click[back]"),
    irreversible_actions=("click[buy now]", "click[delete review]"),
)
TAGGED = VALID.replace(
    "<reward>0</reward>",
    "<irreversible_actions>\ngo north\n</irreversible_actions>\n<reward>0</reward>",
)


def _shop_step() -> Step:
    start = State(text="All products: Red Mug.", available_actions=("click[red mug]", "click[home]"))
    return Step(
        state=start, action=Action(text="click[red mug]"), next_state=SHOP, reward=0.0, done=False, step_index=0
    )


def test_format_version_2_writes_irreversible_actions_only_where_there_are_some() -> None:
    assert FORMAT_VERSION == 2
    assert RESPONSE_TAGS.index("irreversible_actions") == RESPONSE_TAGS.index("available_actions") + 1
    assert frozenset({"irreversible_actions"}) == OPTIONAL_TAGS
    step = _shop_step()
    response = render_response(target_of(step, "The link opens the product page."))
    assert "<irreversible_actions>\nclick[buy now]\nclick[delete review]\n</irreversible_actions>\n<reward>" in response
    parsed = parse_response(response).prediction
    assert parsed is not None and parsed.next_state == State(
        text=SHOP.text, available_actions=SHOP.available_actions, irreversible_actions=SHOP.irreversible_actions
    )
    untagged = step.model_copy(update={"next_state": State(text="Home.", available_actions=("click[x]",))})
    assert "irreversible" not in render_response(target_of(untagged, "why"))


def test_a_version_1_response_reads_as_no_irreversible_actions() -> None:
    prediction = parse_response(VALID).prediction
    assert prediction is not None and prediction.next_state.irreversible_actions == ()
    tagged = parse_response(TAGGED).prediction
    assert tagged is not None and tagged.next_state.irreversible_actions == ("go north",)
    empty = parse_response(TAGGED.replace("\ngo north\n</irr", "\n</irr")).prediction
    assert empty is not None and empty.next_state.irreversible_actions == ()


def test_irreversible_actions_must_be_available() -> None:
    result = parse_response(TAGGED.replace("\ngo north\n</irr", "\nbuy now\n</irr"))
    assert (result.ok, result.error) == (False, "irreversible_not_available")
    assert "'buy now'" in result.detail
    twice = parse_response(TAGGED.replace("\ngo north\n</irr", "\ngo north\ngo north\n</irr"))
    assert twice.error == "duplicate_action" and "irreversible" in twice.detail
    free = parse_response(TAGGED.replace("go north\nlook\n</available", f"{FREE_TEXT}\n</available"))
    assert free.prediction is not None  # an open action space: any action may be irreversible
    assert free.prediction.next_state.available_actions is None
    assert free.prediction.next_state.irreversible_actions == ("go north",)


@pytest.mark.parametrize(
    ("text", "error"),
    [
        (
            TAGGED.replace("<available_actions>\ngo north\nlook\n</available_actions>\n", "").replace(
                "<reward>", "<available_actions>\ngo north\n</available_actions>\n<reward>"
            ),
            "out_of_order",
        ),
        (
            TAGGED.replace("<done>false</done>", "<irreversible_actions>\n</irreversible_actions>\n<done>false</done>"),
            "duplicate_tag",
        ),
        (
            VALID.replace("<done>false</done>", "<irreversible_actions>\n</irreversible_actions>\n<done>false</done>"),
            "out_of_order",
        ),
        (TAGGED.replace("\ngo north\n</irr", "\ngo north</reward>\n</irr"), "stray_tag"),
        (TAGGED.replace("</available_actions>\n", "</available_actions>\nnote\n"), "stray_text"),
        (TAGGED.replace("</irreversible_actions>", ""), "missing_tag"),
    ],
)
def test_a_misplaced_irreversible_field_is_a_named_failure(text: str, error: str) -> None:
    result = parse_response(text)
    assert (result.ok, result.error) == (False, error), result.detail


def test_prompts_show_irreversible_actions_of_shown_states() -> None:
    step = _shop_step()
    query = ExperienceQuery(
        task=scripted_task("shop"), state=SHOP, action=Action(text="click[back]"), retrieved=(step,)
    )
    prompt = render_prompt(query)
    assert prompt.startswith("[dg-expmodel v2]\n")
    shown = "Irreversible actions: click[buy now] | click[delete review]"
    assert prompt.count(shown) == 2  # the retrieved next state and the current state
    assert prompt.index(shown) > prompt.index("Next state: Red Mug")
    assert "Irreversible" not in render_prompt(query, PromptOptions(include_available_actions=False))
    untagged = ExperienceQuery(
        task=scripted_task("t"), state=State(text="s", available_actions=("a",)), action=Action(text="a")
    )
    assert "Irreversible" not in render_prompt(untagged)


def test_sft_targets_carry_irreversible_actions() -> None:
    from dg_core import Trajectory

    step = _shop_step()
    trajectory = Trajectory(id="e", task=scripted_task("shop"), steps=(step,), success=False, return_=0.0)
    (example,) = examples_from_trajectories([trajectory], RuleBasedAnnotator())
    assert "<irreversible_actions>\nclick[buy now]\nclick[delete review]\n</irreversible_actions>" in example.response
    parsed = parse_response(example.response).prediction
    assert parsed is not None and parsed.next_state.irreversible_actions == SHOP.irreversible_actions
