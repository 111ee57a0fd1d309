"""Compact a Chromium accessibility tree (AXTree) into a token-efficient abstract state.

The raw tree (``Accessibility.getFullAXTree`` as BrowserGym returns it) repeats every text in
``StaticText`` and ``InlineTextBox`` nodes, wraps content in unnamed ``generic`` / ``paragraph`` /
``LabelText`` nodes and lists properties no agent acts on. We keep what is needed to act and to
judge progress: element ids (BrowserGym ``bid``), roles, names, values and states (checked, selected,
disabled...), and the visible text, merged into runs. Ignored, unrendered, ``aria-hidden`` and
decorative nodes (unnamed images, separators) are dropped. Controls whose name says they cannot be
undone (buy, delete, submit...) are reported so the abstract state can tag them.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["IRREVERSIBLE_PATTERN", "CompactTree", "compact_axtree", "estimate_tokens"]

IRREVERSIBLE_PATTERN = re.compile(
    r"\b(buy|purchase|checkout|check out|place order|pay|submit|delete|remove|send|post|publish|confirm|"
    r"transfer|unsubscribe|cancel order|empty cart|merge|close issue|archive)\b",
    re.IGNORECASE,
)
"""Names of controls whose effect cannot be undone."""

_ACTIONABLE_ROLES = frozenset(
    [
        "button",
        "link",
        "textbox",
        "searchbox",
        "combobox",
        "listbox",
        "option",
        "checkbox",
        "radio",
        "switch",
        "slider",
        "spinbutton",
        "menuitem",
        "menuitemcheckbox",
        "menuitemradio",
        "tab",
        "treeitem",
        "gridcell",
        "columnheader",
        "rowheader",
    ]
)
_COMMITTING_ROLES = frozenset({"button", "link", "menuitem"})
_VALUE_ROLES = frozenset({"textbox", "searchbox", "combobox", "spinbutton", "slider"})
_WRAPPER_ROLES = frozenset(
    [
        "generic",
        "none",
        "presentation",
        "paragraph",
        "LabelText",
        "strong",
        "emphasis",
        "Section",
        "div",
        "group",
        "list",
        "listitem",
        "form",
        "banner",
        "contentinfo",
        "main",
        "article",
        "Abbr",
        "mark",
        "time",
        "code",
        "superscript",
        "subscript",
        "DescriptionList",
        "term",
        "definition",
        "blockquote",
        "figure",
        "sectionheader",
        "sectionfooter",
    ]
)
_INLINE_ROLES = frozenset(
    [
        "generic",
        "none",
        "presentation",
        "strong",
        "emphasis",
        "Abbr",
        "mark",
        "time",
        "code",
        "superscript",
        "subscript",
    ]
)
_DROPPED_ROLES = frozenset({"InlineTextBox", "LineBreak", "separator", "ListMarker"})
_IN_LABEL = "\x00label"
_KEPT_STATES = ("checked", "selected", "expanded", "pressed", "disabled", "required", "invalid")


def estimate_tokens(text: str) -> int:
    """A tokenizer-free token estimate (about four characters per token for English and markup)."""
    return math.ceil(len(text) / 4)


@dataclass
class CompactTree:
    """The compacted tree of one page."""

    text: str
    """One line per kept node; child lines indented by one space per level."""
    element_ids: tuple[str, ...]
    """Ids of every element shown (the ids actions may target), in page order."""
    irreversible_ids: tuple[str, ...]
    """Ids of shown controls whose activation cannot be undone."""
    tokens: int
    """Estimated tokens of ``text``."""
    dropped_lines: int = 0
    """Lines cut to meet the token budget."""
    lines: list[tuple[int, str, bool]] = field(default_factory=list, repr=False)
    actionable_ids: tuple[str, ...] = ()
    """Ids of the shown controls (buttons, links, fields...), in page order: what a click can act on."""


def _value(node: Mapping[str, Any], key: str) -> Any:
    entry = node.get(key)
    return entry.get("value") if isinstance(entry, Mapping) else None


def _quote(text: str) -> str:
    return "'" + " ".join(text.split()).replace("'", "\\'") + "'"


class _Compactor:
    def __init__(self, nodes: list[Mapping[str, Any]], properties: Mapping[str, Mapping[str, Any]]) -> None:
        self.by_id = {str(node["nodeId"]): node for node in nodes}
        self.properties = properties
        self.lines: list[tuple[int, str, bool]] = []  # (depth, text, actionable)
        self.ids: list[tuple[str, int]] = []  # (bid, line index)
        self.irreversible: list[str] = []
        self.text_run: list[str] = []
        self.run_depth = 0

    def flush(self) -> None:
        if self.text_run:
            merged = " ".join(" ".join(self.text_run).split())
            if merged:
                self.lines.append((self.run_depth, merged, False))
            self.text_run = []

    def rendered(self, bid: str | None) -> bool:
        if bid is None or bid not in self.properties:
            return True
        return self.properties[bid].get("bbox") is not None

    def visit(self, node_id: str, depth: int, shown_name: str) -> None:
        node = self.by_id.get(node_id)
        if node is None:
            return
        role = str(_value(node, "role") or "")
        name = str(_value(node, "name") or "").strip()
        states = {str(p.get("name")): _value(p, "value") for p in node.get("properties", []) if isinstance(p, Mapping)}
        bid = node.get("browsergym_id")
        bid = str(bid) if bid is not None else None
        children = [str(child) for child in node.get("childIds", [])]
        if role in _DROPPED_ROLES or states.get("hidden") is True:
            return
        skip_self = (
            node.get("ignored", False)
            or not self.rendered(bid)
            or (role in _WRAPPER_ROLES and not name)
            or (role == "image" and not name)
            or role == "RootWebArea"
        )
        if role == "StaticText":
            # Text already carried by the enclosing control's name or value, or by a label (which names
            # its control), would be said twice.
            if name and name not in shown_name and shown_name != _IN_LABEL:
                if not self.text_run:
                    self.run_depth = depth
                self.text_run.append(name)
            return
        if role == "LabelText":
            shown_name = _IN_LABEL
        if skip_self:
            block = role not in _INLINE_ROLES
            if block:  # text on either side of a paragraph, list item or landmark is not one run
                self.flush()
            for child in children:
                self.visit(child, depth, shown_name)
            if block:
                self.flush()
            return
        self.flush()
        line = self.describe(role, name, bid, states, node)
        actionable = role in _ACTIONABLE_ROLES
        self.lines.append((depth, line, actionable))
        if bid is not None:
            self.ids.append((bid, len(self.lines) - 1))
            if actionable and role in _COMMITTING_ROLES and IRREVERSIBLE_PATTERN.search(name):
                self.irreversible.append(bid)
        value = _value(node, "value")
        context = f"{name} {value}" if value not in (None, "") else name
        for child in children:
            self.visit(child, depth + 1, context)
        self.flush()

    @staticmethod
    def describe(role: str, name: str, bid: str | None, states: dict[str, Any], node: Mapping[str, Any]) -> str:
        parts = [f"[{bid}] {role}" if bid is not None else role]
        if name:
            parts.append(_quote(name))
        value = _value(node, "value")
        if role in _VALUE_ROLES and value not in (None, ""):
            parts.append(f"value={_quote(str(value))}")
        for state in _KEPT_STATES:
            flag = states.get(state)
            if flag not in (None, False, "false"):
                parts.append(state if flag in (True, "true") else f"{state}={flag}")
        return " ".join(parts)


def compact_axtree(
    axtree: Mapping[str, Any],
    element_properties: Mapping[str, Mapping[str, Any]] | None = None,
    *,
    token_budget: int | None = None,
) -> CompactTree:
    """Compact BrowserGym's ``axtree_object`` into :class:`CompactTree`.

    Args:
        axtree: ``{"nodes": [...]}`` as in BrowserGym's ``obs["axtree_object"]``.
        element_properties: BrowserGym's ``obs["extra_element_properties"]`` (``bbox`` None = not rendered).
        token_budget: Keep the text under this many estimated tokens: page text goes first (from the
            bottom), then controls from the bottom; a final line says how many were cut.
    """
    nodes = list(axtree.get("nodes", []))
    if not nodes:
        return CompactTree(text="(empty page)", element_ids=(), irreversible_ids=(), tokens=3)
    compactor = _Compactor(nodes, element_properties or {})
    child_ids = {str(child) for node in nodes for child in node.get("childIds", [])}
    roots = [str(node["nodeId"]) for node in nodes if str(node["nodeId"]) not in child_ids]
    for root in roots:
        compactor.visit(root, 0, "")
    compactor.flush()
    lines = compactor.lines or [(0, "(empty page)", False)]
    kept = list(range(len(lines)))
    rendered = [" " * depth + text for depth, text, _ in lines]
    total = estimate_tokens("\n".join(rendered))
    dropped = 0
    if token_budget is not None and total > token_budget:
        # Drop page text before controls, from the bottom of the page up.
        order = [i for i in reversed(kept) if not lines[i][2]] + [i for i in reversed(kept) if lines[i][2]]
        removed: set[int] = set()
        for index in order:
            if total <= token_budget:
                break
            removed.add(index)
            total -= estimate_tokens(rendered[index] + "\n")
        kept = [i for i in kept if i not in removed]
        dropped = len(removed)
    text_lines = [rendered[i] for i in kept]
    if dropped:
        text_lines.append(f"({dropped} lines cut to fit {token_budget} tokens)")
    text = "\n".join(text_lines)
    kept_set = set(kept)
    ids = tuple(bid for bid, line in compactor.ids if line in kept_set)
    irreversible = tuple(bid for bid in compactor.irreversible if bid in ids)
    actionable = tuple(bid for bid, line in compactor.ids if line in kept_set and lines[line][2])
    return CompactTree(text, ids, irreversible, estimate_tokens(text), dropped, lines, actionable)
