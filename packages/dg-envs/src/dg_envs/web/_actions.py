"""Web action strings (``click("12")``, ``fill("7", "text")``): parsed as data, never evaluated.

A policy writes one call per action. We parse it with :mod:`ast` and accept only a known function
name with literal arguments of the right types, then re-render it canonically. Anything else raises
:class:`ActionParseError`, which the adapters answer as an invalid action (reward 0), never a crash.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass

from dg_envs.web._allowlist import HostAllowlist, URLRefusedError, parse_web_url

__all__ = ["WEB_ACTIONS", "ActionParseError", "WebAction", "host_allowed", "parse_web_action"]

_STR, _NUM, _STRS = "str", "number", "str | list[str]"

WEB_ACTIONS: dict[str, tuple[tuple[str, str, bool], ...]] = {
    # name: ((argument, type, required), ...)
    "click": (("bid", _STR, True),),
    "dblclick": (("bid", _STR, True),),
    "hover": (("bid", _STR, True),),
    "focus": (("bid", _STR, True),),
    "clear": (("bid", _STR, True),),
    "check": (("bid", _STR, True),),
    "uncheck": (("bid", _STR, True),),
    "fill": (("bid", _STR, True), ("value", _STR, True)),
    "select_option": (("bid", _STR, True), ("options", _STRS, True)),
    "press": (("bid", _STR, True), ("key_comb", _STR, True)),
    "scroll": (("delta_x", _NUM, True), ("delta_y", _NUM, True)),
    "goto": (("url", _STR, True),),
    "go_back": (),
    "go_forward": (),
    "noop": (("wait_ms", _NUM, False),),
    "send_msg_to_user": (("text", _STR, True),),
    "report_infeasible": (("reason", _STR, True),),
}
"""The action grammar: BrowserGym's element, navigation and chat actions (no tabs, no coordinates)."""

_MAX_ACTION_CHARS = 4000


class ActionParseError(ValueError):
    """An action string that is not exactly one allowed call with literal arguments."""


@dataclass(frozen=True)
class WebAction:
    """One parsed action."""

    name: str
    """Function name, one of :data:`WEB_ACTIONS`."""
    args: tuple[str | float | tuple[str, ...], ...]
    """Positional argument values in grammar order."""

    @property
    def bid(self) -> str | None:
        """The element id the action targets, if any."""
        spec = WEB_ACTIONS[self.name]
        return str(self.args[0]) if spec and spec[0][0] == "bid" else None

    @property
    def url(self) -> str | None:
        """The URL of a ``goto`` action."""
        return str(self.args[0]) if self.name == "goto" else None

    def render(self) -> str:
        """Canonical text (Python literal syntax, so BrowserGym's own parser reads it back)."""
        rendered = [repr(list(arg)) if isinstance(arg, tuple) else repr(arg) for arg in self.args]
        return f"{self.name}({', '.join(rendered)})"


def _literal(node: ast.expr, kind: str, where: str) -> str | float | tuple[str, ...]:
    if isinstance(node, ast.Constant) and not isinstance(node.value, bool):
        value = node.value
        if kind in (_STR, _STRS) and isinstance(value, str):
            return value
        if kind == _NUM and isinstance(value, int | float):
            return float(value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub) and kind == _NUM:
        inner = _literal(node.operand, kind, where)
        if isinstance(inner, float):
            return -inner
    if kind == _STRS and isinstance(node, ast.List | ast.Tuple):
        items = [_literal(item, _STR, where) for item in node.elts]
        return tuple(str(item) for item in items)
    raise ActionParseError(f"{where} must be a literal {kind}")


def parse_web_action(text: str) -> WebAction:
    """Parse one action string such as ``fill("7", "headphones")``.

    Args:
        text: The policy's action.

    Raises:
        ActionParseError: With what is wrong and the allowed forms.
    """
    text = text.strip()
    if not text:
        raise ActionParseError("empty action")
    if len(text) > _MAX_ACTION_CHARS:
        raise ActionParseError(f"action longer than {_MAX_ACTION_CHARS} characters")
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as error:
        raise ActionParseError(f"not a function call: {error.msg}") from None
    call = tree.body
    if not isinstance(call, ast.Call) or not isinstance(call.func, ast.Name):
        raise ActionParseError("expected one call like click('12') or fill('7', 'text')")
    name = call.func.id
    if name not in WEB_ACTIONS:
        raise ActionParseError(f"unknown action {name!r}; allowed: {', '.join(sorted(WEB_ACTIONS))}")
    spec = WEB_ACTIONS[name]
    by_name = {arg: (kind, required) for arg, kind, required in spec}
    values: dict[str, str | float | tuple[str, ...]] = {}
    if len(call.args) > len(spec):
        raise ActionParseError(f"{name} takes at most {len(spec)} arguments, got {len(call.args)}")
    for (arg, kind, _), node in zip(spec, call.args, strict=False):
        values[arg] = _literal(node, kind, f"{name}: argument {arg!r}")
    for keyword in call.keywords:
        if keyword.arg is None or keyword.arg not in by_name:
            raise ActionParseError(f"{name} has no argument {keyword.arg!r}")
        if keyword.arg in values:
            raise ActionParseError(f"{name}: argument {keyword.arg!r} given twice")
        values[keyword.arg] = _literal(keyword.value, by_name[keyword.arg][0], f"{name}: argument {keyword.arg!r}")
    missing = [arg for arg, _, required in spec if required and arg not in values]
    if missing:
        raise ActionParseError(f"{name} needs {', '.join(missing)}")
    return WebAction(name, tuple(values[arg] for arg, _, _ in spec if arg in values))


def host_allowed(url: str, allowed_hosts: tuple[str, ...]) -> bool:
    """Whether ``url`` may be opened on the allowed hosts (``host`` for ports 80 / 443, or ``host:port``).

    URLs are read the way Chromium reads them (:func:`~dg_envs.web._allowlist.parse_web_url`); only
    ``http(s)`` URLs on an allowed host and ``about:blank`` pass. No allowed hosts allows nothing else.
    """
    if not allowed_hosts:  # fail closed
        try:
            return parse_web_url(url) is None
        except URLRefusedError:
            return False
    return HostAllowlist(allowed_hosts).refusal(url) is None
