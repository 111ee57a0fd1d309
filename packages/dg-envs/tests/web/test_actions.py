"""The web action grammar: literal calls only, canonical rendering, host checks (more in test_allowlist.py)."""

from __future__ import annotations

import pytest

from dg_envs.web import ActionParseError, WebAction, host_allowed, parse_web_action


@pytest.mark.parametrize(
    ("text", "name", "args"),
    [
        ('click("12")', "click", ("12",)),
        ("click('a51')", "click", ("a51",)),
        ('fill("7", "blue kettle")', "fill", ("7", "blue kettle")),
        ('fill(bid="7", value="x")', "fill", ("7", "x")),
        ('select_option("3", ["Billing", "Returns"])', "select_option", ("3", ("Billing", "Returns"))),
        ("scroll(0, -200.5)", "scroll", (0.0, -200.5)),
        ("noop()", "noop", ()),
        ('goto("http://127.0.0.1:8000/x")', "goto", ("http://127.0.0.1:8000/x",)),
        ('  send_msg_to_user("It costs $24.99")  ', "send_msg_to_user", ("It costs $24.99",)),
    ],
)
def test_parses_allowed_calls(text: str, name: str, args: tuple[object, ...]) -> None:
    action = parse_web_action(text)
    assert action == WebAction(name, args)  # type: ignore[arg-type]
    assert parse_web_action(action.render()) == action


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty action"),
        ("click(12", "not a function call"),
        ('__import__("os").system("x")', "expected one call"),
        ('eval("1")', "unknown action 'eval'"),
        ("click(12)", "must be a literal str"),
        ('click(bid=("1"))', None),
        ('click("1", "2")', "at most 1 arguments"),
        ('fill("7")', "needs value"),
        ('fill("7", value=x)', "must be a literal str"),
        ('fill("7", "a", colour="red")', "no argument 'colour'"),
        ('click("1"); click("2")', "not a function call"),
        ("scroll(True, 1)", "must be a literal number"),
        ("new_tab()", "unknown action 'new_tab'"),
        ("x" * 5000, "longer than"),
    ],
)
def test_refuses_anything_else(text: str, message: str | None) -> None:
    if message is None:  # a parenthesised literal is still a literal
        assert parse_web_action(text).args == ("1",)
        return
    with pytest.raises(ActionParseError, match=message):
        parse_web_action(text)


def test_bid_and_url_accessors() -> None:
    assert parse_web_action('fill("7", "x")').bid == "7"
    assert parse_web_action("scroll(0, 1)").bid is None
    assert parse_web_action('goto("http://h/")').url == "http://h/"
    assert parse_web_action('click("9")').url is None
    assert parse_web_action("fill('7', \"it's\")").render() == "fill('7', \"it's\")"


@pytest.mark.parametrize(
    ("url", "allowed", "expected"),
    [
        ("http://127.0.0.1:8000/a", ("127.0.0.1:8000",), True),
        ("http://127.0.0.1:9000/a", ("127.0.0.1:8000",), False),
        ("http://localhost:8000/a", ("127.0.0.1:8000",), False),
        ("https://shop.example.com/x", ("shop.example.com",), True),
        ("https://evil.example.com/x", ("shop.example.com",), False),
        ("file:///etc/passwd", ("127.0.0.1:8000",), False),
        ("javascript:alert(1)", ("127.0.0.1:8000",), False),
        ("about:blank", ("127.0.0.1:8000",), True),
        # No allowed hosts allows nothing (it used to allow everything).
        ("http://anything/", (), False),
        ("about:blank", (), True),
        # data: pages used to be always allowed.
        ("data:text/html,<script>location='http://127.0.0.1:9000/'</script>", ("127.0.0.1:8000",), False),
        # urlsplit read host 127.0.0.1:8000 here; Chromium reads 127.0.0.1:9000.
        ("http://127.0.0.1:9000\\@127.0.0.1:8000/", ("127.0.0.1:8000",), False),
    ],
)
def test_host_allowed(url: str, allowed: tuple[str, ...], expected: bool) -> None:
    assert host_allowed(url, allowed) is expected
