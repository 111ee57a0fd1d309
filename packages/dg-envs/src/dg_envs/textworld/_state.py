"""From TextWorld's raw game state to dg's compact abstract state.

The raw first observation opens with a large ASCII-art banner and repeats the objective; every
observation ends with a prompt line carrying the status bar. The abstract state keeps what is needed to
act and nothing else: the cleaned feedback, the room, the visible objects, the inventory and the
admissible commands.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from dg_core import State

__all__ = ["clean_feedback", "parse_inventory", "room_name", "textworld_state", "visible_objects"]

_ROOM_HEADER = re.compile(r"-=\s*(.+?)\s*=-")
_BANNER_CHARS = set(" $|\\/_<>()")
_END_MARKER = "*** The End ***"
_BLANK_RUNS = re.compile(r"\n\s*\n+")
_SPACES = re.compile(r"[ \t]+")


def _is_banner_line(line: str) -> bool:
    stripped = line.strip()
    return bool(stripped) and set(stripped) <= _BANNER_CHARS


def clean_feedback(raw: str, *, objective: str = "") -> str:
    """The feedback without banner, prompt line, status bar, repeated objective or end-of-game menu.

    Args:
        raw: TextWorld's ``feedback`` for one step.
        objective: The game's objective; removed where the first observation repeats it verbatim.
    """
    text = raw
    prompt = text.find("\n>")
    if prompt >= 0:
        text = text[:prompt]
    if text.lstrip().startswith(">"):
        text = ""
    end = text.find(_END_MARKER)
    if end >= 0:
        text = text[:end].rstrip() + "\nThe End."
    lines = [line for line in text.splitlines() if not _is_banner_line(line)]
    text = "\n".join(lines)
    if objective and objective in text:
        text = text.replace(objective, "")
    text = _ROOM_HEADER.sub("", text)
    text = _SPACES.sub(" ", text)
    text = _BLANK_RUNS.sub("\n", text)
    return "\n".join(line.strip() for line in text.strip().splitlines() if line.strip())


def room_name(description: str) -> str | None:
    """The room named by the ``-= Room =-`` header of a description, if any."""
    match = _ROOM_HEADER.search(description or "")
    return match.group(1) if match else None


def parse_inventory(inventory: str) -> str:
    """``"You are carrying: a key and a coin."`` -> ``"a key and a coin"``; ``"nothing"`` when empty."""
    text = " ".join((inventory or "").split())
    for prefix in ("You are carrying:", "You are carrying"):
        if text.startswith(prefix):
            text = text[len(prefix) :]
            break
    text = text.strip().rstrip(".").strip()
    return text or "nothing"


def _carried_items(inventory: str) -> list[str]:
    pieces = re.split(r",\s*|\s+and\s+", inventory)
    return [piece.strip() for piece in pieces if piece.strip() and piece.strip() != "nothing"]


def visible_objects(admissible_commands: Sequence[str], inventory: str) -> list[str]:
    """Things in scope (from the ``examine X`` commands) that are not being carried."""
    carried = _carried_items(inventory)
    objects = set()
    for command in admissible_commands:
        if command.startswith("examine "):
            name = command[len("examine ") :]
            if not any(item == name or item.endswith(" " + name) for item in carried):
                objects.add(name)
    return sorted(objects)


def textworld_state(game_state: Mapping[str, Any], *, objective: str, room: str | None) -> State:
    """The abstract state of one TextWorld game state.

    Args:
        game_state: TextWorld's ``GameState`` (a mapping).
        objective: The game's objective (stripped from the feedback; the task carries it).
        room: The current room, carried over from the last description when this step has none.
    """
    commands = [str(command) for command in game_state.get("admissible_commands") or ()]
    inventory = parse_inventory(str(game_state.get("inventory") or ""))
    feedback = clean_feedback(str(game_state.get("feedback") or ""), objective=objective)
    objects = visible_objects(commands, inventory)
    lines = [feedback] if feedback else []
    if room:
        lines.append(f"Room: {room}")
    lines.append(f"Visible: {', '.join(objects) if objects else 'nothing'}")
    lines.append(f"Inventory: {inventory}")
    done = bool(game_state.get("won")) or bool(game_state.get("lost"))
    available: tuple[str, ...] = () if done else (tuple(dict.fromkeys(commands)) or ("look",))
    return State(
        text="\n".join(lines),
        available_actions=available,
        info={"room": room, "won": bool(game_state.get("won")), "lost": bool(game_state.get("lost"))},
    )
