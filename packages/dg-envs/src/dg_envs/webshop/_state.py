"""From WebShop's text-mode observation to dg's abstract state.

WebShop (princeton-nlp/WebShop, ``WebAgentTextEnv`` with ``observation_mode="text"``) renders a page as
its visible strings joined by ``[SEP]``, with the instruction near the top; ``get_available_actions()``
answers ``{"has_search_bar": bool, "clickables": [...]}``. Actions are ``search[query]`` and
``click[label]``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dg_core import State

__all__ = ["IRREVERSIBLE_CLICKS", "split_observation", "webshop_state"]

IRREVERSIBLE_CLICKS = ("buy now",)
"""Clickables whose effect cannot be undone (buying ends the episode)."""

_SEP = "[SEP]"
_CHROME = {"webshop", "instruction:"}


def split_observation(observation: str) -> list[str]:
    """The non-empty ``[SEP]``-separated segments of a text-mode observation."""
    return [segment.strip() for segment in observation.split(_SEP) if segment.strip()]


def webshop_state(observation: str, available: Mapping[str, Any], *, instruction: str = "") -> State:
    """The abstract state of one WebShop page.

    The page's segments become lines (site chrome and the repeated instruction dropped). Where the page
    has a search bar the action space is free text (``search[...]`` takes any query), so
    ``available_actions`` is ``None`` and the clickables are listed in the text; otherwise it is exactly
    the ``click[...]`` actions, with ``click[buy now]`` marked irreversible.

    Args:
        observation: WebShop's text-mode observation.
        available: WebShop's ``get_available_actions()``.
        instruction: The goal text, removed where the page repeats it.
    """
    clickables = [str(c) for c in available.get("clickables") or ()]
    has_search_bar = bool(available.get("has_search_bar"))
    lines = [
        segment
        for segment in split_observation(observation)
        if segment.lower() not in _CHROME and (not instruction or segment != instruction.strip())
    ]
    click_actions = tuple(dict.fromkeys(f"click[{c}]" for c in clickables))
    irreversible = tuple(a for a in click_actions if a[len("click[") : -1].lower() in IRREVERSIBLE_CLICKS)
    page = "search" if has_search_bar else ("item" if irreversible else "results")
    if has_search_bar:
        lines.append("Actions: search[<query>]" + "".join(f", {a}" for a in click_actions))
        return State(text="\n".join(lines), available_actions=None, info={"page": page})
    return State(
        text="\n".join(lines),
        available_actions=click_actions or ("click[back to search]",),
        irreversible_actions=irreversible,
        info={"page": page},
    )
