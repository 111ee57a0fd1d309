"""Strict parsing of experience-model output that never raises.

:func:`parse_response` either returns a prediction or names what is wrong with the text, with one of
the reason codes in :data:`PARSE_ERRORS`; callers retry or substitute :func:`failure_prediction`
(the unchanged state, reward 0), and count the failure.

Only the first complete response counts: the fields are read in order (the optional
``irreversible_actions`` field where it stands, or none), and whatever follows the first ``</done>`` that
closes the ``done`` field is ignored, tags included (models keep talking). A field that holds any of the
format's tags (its own or another field's, opening or closing) is rejected as ``stray_tag`` rather than read
with the tag inside it, a reward outside the environment's range is rejected as ``reward_out_of_range``, and
an irreversible action that is not among the next state's available actions as
``irreversible_not_available``, so an accepted prediction always has a finite reward in range and irreversible
actions the state offers.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from dg_core import ExperiencePrediction, ExperienceQuery, State
from dg_expmodel._format import FREE_TEXT, OPTIONAL_TAGS, RESPONSE_TAGS

PARSE_ERRORS = (
    "missing_tag",
    "duplicate_tag",
    "out_of_order",
    "stray_text",
    "stray_tag",
    "empty_next_state",
    "duplicate_action",
    "irreversible_not_available",
    "bad_reward",
    "reward_out_of_range",
    "bad_done",
)
"""Reason codes of a failed parse."""

RewardRange = tuple[float, float] | frozenset[float]
"""The rewards a prediction may carry: a closed interval ``(low, high)``, or the set of the only allowed values."""

DEFAULT_REWARD_RANGE: RewardRange = (0.0, 1.0)
"""Rewards in [0, 1]: dg's environments give an outcome reward of 1 on success and 0 otherwise."""

BINARY_REWARDS: RewardRange = frozenset({0.0, 1.0})
"""Only 0 or 1, for environments whose reward is the bare outcome."""

_TRUE, _FALSE = "true", "false"
_OPENINGS = {f"<{tag}>": tag for tag in RESPONSE_TAGS}
_CLOSINGS = {f"</{tag}>": tag for tag in RESPONSE_TAGS}
_ANY_TAG = re.compile("|".join(re.escape(mark) for mark in (*_OPENINGS, *_CLOSINGS)))
_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?", re.ASCII)


@dataclass(frozen=True)
class ParseResult:
    """Outcome of parsing one model output."""

    prediction: ExperiencePrediction | None
    """The parsed prediction, or ``None`` when the text was rejected."""
    error: str | None = None
    """Reason code from :data:`PARSE_ERRORS` when rejected."""
    detail: str = ""
    """Human-readable explanation of the rejection."""

    @property
    def ok(self) -> bool:
        """Whether the text parsed."""
        return self.prediction is not None


def _fail(error: str, detail: str) -> ParseResult:
    return ParseResult(prediction=None, error=error, detail=detail)


def check_reward_range(reward_range: RewardRange) -> RewardRange:
    """``reward_range`` if it is a valid :data:`RewardRange`; raises ``ValueError`` (a caller's mistake) if not."""
    if isinstance(reward_range, frozenset):
        if not reward_range or not all(isinstance(v, int | float) and math.isfinite(v) for v in reward_range):
            raise ValueError(f"reward_range: a set of allowed rewards must be non-empty and finite, got {reward_range}")
        return reward_range
    if isinstance(reward_range, tuple) and len(reward_range) == 2:
        low, high = reward_range
        if all(isinstance(v, int | float) and math.isfinite(v) for v in (low, high)) and low <= high:
            return reward_range
    raise ValueError(
        "reward_range must be a finite interval (low, high) with low <= high or a frozenset of rewards, "
        f"got {reward_range!r}"
    )


def _describe(reward_range: RewardRange) -> str:
    if isinstance(reward_range, frozenset):
        return "one of {" + ", ".join(f"{v:g}" for v in sorted(reward_range)) + "}"
    return f"in [{reward_range[0]:g}, {reward_range[1]:g}]"


def _in_range(reward: float, reward_range: RewardRange) -> bool:
    if isinstance(reward_range, frozenset):
        return reward in reward_range
    return reward_range[0] <= reward <= reward_range[1]


def _unexpected_tag(found: re.Match[str], tag: str, text: str, position: int, read: dict[str, str]) -> ParseResult:
    """Why ``found`` stands where ``<tag>`` was expected."""
    mark = found.group()
    other = _OPENINGS.get(mark) or _CLOSINGS[mark]
    if other in read:
        return _fail("duplicate_tag", f"{mark} appears again after the <{other}> field was read")
    if f"<{tag}>" not in text[position:]:
        return _fail("missing_tag", f"no <{tag}> field (found {mark} where it should open)")
    if mark in _OPENINGS:
        order = ", ".join(f"{name} (optional)" if name in OPTIONAL_TAGS else name for name in RESPONSE_TAGS)
        return _fail("out_of_order", f"<{other}> comes before <{tag}>; order: {order}")
    return _fail("stray_tag", f"{mark} stands where <{tag}> should open")


def _fields(text: str) -> dict[str, str] | ParseResult:
    """The fields of the first complete response in ``text`` (an optional field left out is absent from the
    result); what follows its ``</done>`` is ignored."""
    fields: dict[str, str] = {}
    position = 0
    for tag in RESPONSE_TAGS:
        opening, closing = f"<{tag}>", f"</{tag}>"
        found = _ANY_TAG.search(text, position)
        if tag in OPTIONAL_TAGS and (found is None or found.group() != opening):
            continue  # left out: whatever stands here is judged as the start of the next field
        if found is None:
            return _fail("missing_tag", f"no <{tag}> field")
        if found.group() != opening:
            return _unexpected_tag(found, tag, text, position, fields)
        between = text[position : found.start()].strip()
        if between:
            return _fail("stray_text", f"unexpected text before <{tag}>: {between[:40]!r}")
        start = found.end()
        end = text.find(closing, start)
        if end < 0:
            return _fail("missing_tag", f"<{tag}> is not closed")
        inner = _ANY_TAG.search(text, start, end)
        if inner is not None:
            return _fail("stray_tag", f"the <{tag}> field holds the tag {inner.group()}")
        fields[tag] = text[start:end]
        position = end + len(closing)
    return fields


def _action_list(raw: str, what: str) -> list[str] | ParseResult:
    actions = [line.strip() for line in raw.split("\n") if line.strip()]
    if len(set(actions)) != len(actions):
        duplicate = next(a for a in actions if actions.count(a) > 1)
        return _fail("duplicate_action", f"{what} action {duplicate!r} is listed twice")
    return actions


def _available_actions(raw: str) -> tuple[str, ...] | ParseResult | None:
    actions = _action_list(raw, "available")
    if isinstance(actions, ParseResult):
        return actions
    if actions == [FREE_TEXT]:
        return None
    return tuple(actions)


def _irreversible_actions(raw: str, available: tuple[str, ...] | None) -> tuple[str, ...] | ParseResult:
    """The irreversible actions, each one of ``available`` (any action, when the action space is free text)."""
    actions = _action_list(raw, "irreversible")
    if isinstance(actions, ParseResult):
        return actions
    if available is not None:
        offered = set(available)
        unknown = [action for action in actions if action not in offered]
        if unknown:
            return _fail(
                "irreversible_not_available", f"irreversible action {unknown[0][:60]!r} is not an available action"
            )
    return tuple(actions)


def parse_response(text: str, *, reward_range: RewardRange = DEFAULT_REWARD_RANGE) -> ParseResult:
    """Parse a model output in the tagged response format; text after the first complete ``</done>`` is ignored.

    Args:
        text: The model output (with any pre-filled part of the response in front).
        reward_range: The rewards the environment can give (:data:`RewardRange`); a reward outside it is
            rejected as ``reward_out_of_range``. Defaults to [0, 1].

    Returns:
        The prediction, or the reason code and a readable detail; never raises on model output (an invalid
        ``reward_range`` raises ``ValueError``).
    """
    reward_range = check_reward_range(reward_range)
    fields = _fields(text)
    if isinstance(fields, ParseResult):
        return fields
    next_text = fields["next_state"].strip()
    if not next_text:
        return _fail("empty_next_state", "the next state is empty")
    actions = _available_actions(fields["available_actions"])
    if isinstance(actions, ParseResult):
        return actions
    irreversible = _irreversible_actions(fields.get("irreversible_actions", ""), actions)
    if isinstance(irreversible, ParseResult):
        return irreversible
    reward_text = fields["reward"].strip()
    if not _NUMBER.fullmatch(reward_text) or not math.isfinite(float(reward_text)):
        return _fail("bad_reward", f"reward {reward_text[:20]!r} is not a finite number")
    reward = float(reward_text) + 0.0  # -0 reads as 0
    if not _in_range(reward, reward_range):
        shown = reward_text if len(reward_text) <= 32 else f"{reward:g}"
        return _fail("reward_out_of_range", f"reward {shown} is not {_describe(reward_range)}")
    done_text = fields["done"].strip().lower()
    if done_text not in (_TRUE, _FALSE):
        return _fail("bad_done", f"done {done_text[:20]!r} is neither true nor false")
    prediction = ExperiencePrediction(
        reasoning=fields["reasoning"].strip(),
        next_state=State(text=next_text, available_actions=actions, irreversible_actions=irreversible),
        reward=reward,
        done=done_text == _TRUE,
        raw=text,
    )
    return ParseResult(prediction=prediction)


def failure_prediction(query: ExperienceQuery, reason: str, raw: str | None = None) -> ExperiencePrediction:
    """The failure answer: the state does not change, reward 0, the episode goes on.

    Used for unparseable output (``parse_ok=False``) and, with a reason, wherever the model cannot be used.
    """
    return ExperiencePrediction(
        reasoning=f"Failure state: {reason}.",
        next_state=query.state,
        reward=0.0,
        done=False,
        parse_ok=False,
        raw=raw,
        info={"failure": reason},
    )
