"""Strict parsing of experience-model output that never raises.

:func:`parse_response` either returns a prediction or names what is wrong with the text, with one of
the reason codes in :data:`PARSE_ERRORS`; callers retry or substitute :func:`failure_prediction`
(the unchanged state, reward 0), and count the failure.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from dg_core import ExperiencePrediction, ExperienceQuery, State
from dg_expmodel._format import FREE_TEXT, RESPONSE_TAGS

PARSE_ERRORS = (
    "missing_tag",
    "duplicate_tag",
    "out_of_order",
    "stray_text",
    "empty_next_state",
    "duplicate_action",
    "bad_reward",
    "bad_done",
)
"""Reason codes of a failed parse."""

_TRUE, _FALSE = "true", "false"


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


def _fields(text: str) -> dict[str, str] | ParseResult:
    fields: dict[str, str] = {}
    position = 0
    for tag in RESPONSE_TAGS:
        opening, closing = f"<{tag}>", f"</{tag}>"
        count = text.count(opening)
        if count == 0 or closing not in text[position:]:
            return _fail("missing_tag", f"no complete <{tag}> field")
        if count > 1:
            return _fail("duplicate_tag", f"<{tag}> appears {count} times")
        start = text.find(opening, position)
        between = text[position:start] if start >= 0 else ""
        if start < 0 or any(f"<{other}>" in between for other in RESPONSE_TAGS):
            return _fail("out_of_order", f"<{tag}> is not where the format puts it; order: {', '.join(RESPONSE_TAGS)}")
        if between.strip():
            return _fail("stray_text", f"unexpected text before <{tag}>: {between.strip()[:40]!r}")
        end = text.find(closing, start + len(opening))
        if end < 0:
            return _fail("missing_tag", f"<{tag}> is not closed")
        fields[tag] = text[start + len(opening) : end]
        position = end + len(closing)
    return fields


def _available_actions(raw: str) -> tuple[str, ...] | ParseResult | None:
    lines = [line.strip() for line in raw.split("\n")]
    actions = [line for line in lines if line]
    if actions == [FREE_TEXT]:
        return None
    if len(set(actions)) != len(actions):
        duplicate = next(a for a in actions if actions.count(a) > 1)
        return _fail("duplicate_action", f"available action {duplicate!r} is listed twice")
    return tuple(actions)


_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")


def parse_response(text: str) -> ParseResult:
    """Parse a model output in the tagged response format; text after ``</done>`` is ignored."""
    fields = _fields(text)
    if isinstance(fields, ParseResult):
        return fields
    next_text = fields["next_state"].strip()
    if not next_text:
        return _fail("empty_next_state", "the next state is empty")
    actions = _available_actions(fields["available_actions"])
    if isinstance(actions, ParseResult):
        return actions
    reward_text = fields["reward"].strip()
    if not _NUMBER.match(reward_text) or not math.isfinite(float(reward_text)):
        return _fail("bad_reward", f"reward {reward_text[:20]!r} is not a finite number")
    done_text = fields["done"].strip().lower()
    if done_text not in (_TRUE, _FALSE):
        return _fail("bad_done", f"done {done_text[:20]!r} is neither true nor false")
    prediction = ExperiencePrediction(
        reasoning=fields["reasoning"].strip(),
        next_state=State(text=next_text, available_actions=actions),
        reward=float(reward_text),
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
