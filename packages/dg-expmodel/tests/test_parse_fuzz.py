"""Fuzzing the response parser with 10,000 generated responses (issue 21, item 6; irreversible actions: issue 20).

Every response is built from known parts, so the test knows what the parser must do: a clean response is
accepted with exactly its values, and one with a fault (a format tag inside a field, a reward outside [0, 1]
or not a finite number, a bad ``done``, a missing / swapped field, text between fields, a duplicated action,
an irreversible action that is not available) is rejected with a reason code. The optional
``irreversible_actions`` field is present in about a third of the responses; leaving it out is no fault (it
then reads as none). Text after ``</done>`` never matters, tags included. Whatever happens, no accepted
prediction carries a reward outside the range, a tag inside a field, or an irreversible action its state does
not offer.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from dg_expmodel import FREE_TEXT, OPTIONAL_TAGS, PARSE_ERRORS, RESPONSE_TAGS, parse_response

TAGS = tuple(f"<{tag}>" for tag in RESPONSE_TAGS) + tuple(f"</{tag}>" for tag in RESPONSE_TAGS)
LOW, HIGH = 0.0, 1.0

# Words that look like parts of tags but are not tags; joined with spaces they never form one.
_WORDS = ("the", "door", "is", "open", "a < b", "x > y", "</", "<", ">", "/>", "reward", "done", "1", "é", "✓")
_WORDS += ("<next_state", "next_state>", "</done", "<reward >", "<Reward>", "<done/>", "&lt;done&gt;")
_ACTIONS = ("go north", "go south", "look", "take coin", "open door", "inventory", "say <hello>")
_NOT_OFFERED = ("buy now", "delete review", "submit")  # never among the available actions drawn

# (text, parsed value or None when the reward must be rejected)
_REWARDS: tuple[tuple[str, float | None], ...] = (
    ("0", 0.0),
    ("1", 1.0),
    ("0.5", 0.5),
    ("1.0", 1.0),
    ("-0", 0.0),
    ("+1", 1.0),
    (".25", 0.25),
    ("1e-3", 0.001),
    (" 1 ", 1.0),
    ("-1", None),
    ("2", None),
    ("10", None),
    ("1e308", None),
    ("-1e308", None),
    ("1.7976931348623157e308", None),
    ("1e999", None),
    ("-1e999", None),
    ("nan", None),
    ("inf", None),
    ("-inf", None),
    ("one", None),
    ("1.0000001", None),
    ("-0.0001", None),
    ("0x1", None),
    ("1_0", None),
    ("", None),
)
_DONES: tuple[tuple[str, bool | None], ...] = (
    ("true", True),
    ("false", False),
    ("True", True),
    (" FALSE ", False),
    ("yes", None),
    ("", None),
)
_TRAILING = (
    "",
    "\nand then the model kept talking",
    "<done>true</done>",
    "\n<reward>1e308</reward>\n<next_state>elsewhere</next_state>",
    "</reasoning></done><reasoning>",
    "<reasoning>again</reasoning>\n<next_state>x</next_state>\n<available_actions>\n</available_actions>"
    "\n<reward>-1</reward>\n<done>true</done>",
)


@dataclass(frozen=True)
class Expected:
    reasoning: str
    next_state: str
    actions: tuple[str, ...] | None
    reward: float
    done: bool
    irreversible: tuple[str, ...]


def _float_reward(value: float) -> tuple[str, float | None]:
    text = repr(value)
    return text, (value + 0.0 if math.isfinite(value) and LOW <= value <= HIGH else None)


def _text(rng: random.Random, min_words: int) -> str:
    return " ".join(rng.choices(_WORDS, k=rng.randint(min_words, 6)))


def _with_tag(rng: random.Random, content: str, tags: tuple[str, ...] = TAGS) -> tuple[str, bool]:
    """``content``, with one of ``tags`` inserted about one time in sixteen; and whether it was."""
    if rng.random() >= 1 / 16:
        return content, False
    at = rng.randint(0, len(content))
    return content[:at] + rng.choice(tags) + content[at:], True


def _irreversible(rng: random.Random, actions: tuple[str, ...] | None) -> tuple[list[str], bool]:
    """Lines of an irreversible-actions field for a state offering ``actions``, and whether they are a fault."""
    offered = list(actions) if actions is not None else list(_ACTIONS)  # free text: any action may be irreversible
    lines = rng.sample(offered, rng.randint(0, min(2, len(offered))))
    fault = False
    if rng.random() < 0.08:
        lines.insert(rng.randint(0, len(lines)), rng.choice(_NOT_OFFERED))
        fault = actions is not None
    if lines and rng.random() < 0.04:
        lines.append(lines[0])  # listed twice
        fault = True
    return lines, fault


def random_response(rng: random.Random) -> tuple[str, Expected | None]:
    """A response text, and what the parser must read from it (``None``: it must be rejected)."""
    reasoning = _text(rng, 0)
    next_state = rng.choice(["", " \n "]) if rng.random() < 0.04 else _text(rng, 1)
    faults: dict[str, bool] = dict.fromkeys(RESPONSE_TAGS, False)  # a fault of each field's own content
    actions: tuple[str, ...] | None
    if rng.random() < 0.05:
        actions, action_lines = None, [FREE_TEXT]
    else:
        actions = tuple(rng.sample(_ACTIONS, rng.randint(0, 4)))
        action_lines = list(actions)
        if actions and rng.random() < 0.04:
            action_lines.append(actions[0])  # listed twice
            faults["available_actions"] = True
    has_irreversible = rng.random() < 0.35
    irreversible_lines, faults["irreversible_actions"] = _irreversible(rng, actions)
    if rng.random() < 0.75:
        reward_text, reward = rng.choice(_REWARDS[:9] * 2 + _REWARDS)
    else:
        reward_text, reward = _float_reward(rng.choice([rng.random(), rng.uniform(-2, 2), rng.uniform(-1e308, 1e308)]))
    done_text, done = rng.choice(_DONES[:4] * 6 + _DONES)
    contents = {
        "reasoning": _with_tag(rng, reasoning),
        "next_state": _with_tag(rng, next_state),
        "available_actions": _with_tag(rng, "\n" + "\n".join(action_lines) + "\n"),
        "irreversible_actions": _with_tag(rng, "\n" + "\n".join(irreversible_lines) + "\n"),
        "reward": _with_tag(rng, reward_text),
        # A </done> put inside the done field would only close it early: leave it out.
        "done": _with_tag(rng, done_text, tuple(t for t in TAGS if t != "</done>")),
    }
    faults["next_state"] = not next_state.strip()
    faults["reward"] = reward is None
    faults["done"] = done is None
    tags = [tag for tag in RESPONSE_TAGS if tag not in OPTIONAL_TAGS or has_irreversible]
    fault = False
    if rng.random() < 0.06:
        index = rng.randint(0, len(tags) - 2)
        if rng.random() < 0.5:
            fault = tags[index] not in OPTIONAL_TAGS  # an optional field may be left out
            del tags[index]
        else:
            tags[index], tags[index + 1] = tags[index + 1], tags[index]
            fault = True
    fault |= any(contents[tag][1] or faults[tag] for tag in tags)
    parts = [f"<{tag}>{contents[tag][0]}</{tag}>" for tag in tags]
    separators = ["", *(rng.choice(["\n"] * 30 + ["", " ", "\n\n", " stray "]) for _ in parts[1:])]
    prefix = rng.choice(["", "", "", "\n", "  "] * 10 + ["Sure! "])
    fault |= any(part.strip() for part in [prefix, *separators])
    text = prefix + "".join(sep + part for sep, part in zip(separators, parts, strict=True)) + rng.choice(_TRAILING)
    if fault:
        return text, None
    assert reward is not None and done is not None
    irreversible = tuple(irreversible_lines) if "irreversible_actions" in tags else ()
    return text, Expected(reasoning.strip(), next_state.strip(), actions, reward, done, irreversible)


def check(text: str, expected: Expected | None) -> str:
    """Assert what the parser must do with ``text``; ``"accepted"`` or the reason code it rejected it with."""
    result = parse_response(text)
    prediction = result.prediction
    if prediction is None:
        assert result.error in PARSE_ERRORS and result.detail
        assert expected is None, f"rejected a clean response ({result.error}: {result.detail}): {text!r}"
        return result.error
    state = prediction.next_state
    fields = [prediction.reasoning, state.text, *(state.available_actions or ()), *state.irreversible_actions]
    assert not [tag for tag in TAGS for field in fields if tag in field], f"a tag inside a field: {text!r}"
    assert math.isfinite(prediction.reward) and LOW <= prediction.reward <= HIGH, f"reward out of range: {text!r}"
    offered = state.available_actions
    assert offered is None or set(state.irreversible_actions) <= set(offered), f"irreversible not offered: {text!r}"
    assert expected is not None, f"accepted a faulty response: {text!r}"
    assert prediction.reasoning == expected.reasoning, text
    assert prediction.next_state.text == expected.next_state, text
    assert prediction.next_state.available_actions == expected.actions, text
    assert prediction.next_state.irreversible_actions == expected.irreversible, text
    assert (prediction.reward, prediction.done) == (expected.reward, expected.done), text
    return "accepted"


BATCH = 50


@settings(max_examples=10_000 // BATCH, deadline=None)
@given(st.randoms(use_true_random=True))
def test_fuzzed_responses_accept_nothing_out_of_range_or_tagged(rng: random.Random) -> None:
    """10,000 responses in all: 200 hypothesis examples of 50 responses each (one example costs more than a parse)."""
    for _ in range(BATCH):
        check(*random_response(rng))


def test_fuzz_of_a_fixed_seed_accepts_clean_responses_only() -> None:
    """The same generator, 10,000 responses from one seed: a fair share is accepted and every reason occurs."""
    rng = random.Random(21)
    cases = [random_response(rng) for _ in range(10_000)]
    outcomes = Counter(check(text, expected) for text, expected in cases)
    print(dict(outcomes.most_common()))  # shown with pytest -s
    assert outcomes["accepted"] == sum(expected is not None for _, expected in cases)
    assert 1_000 < outcomes["accepted"] < 9_000
    assert set(outcomes) == {"accepted", *PARSE_ERRORS}
