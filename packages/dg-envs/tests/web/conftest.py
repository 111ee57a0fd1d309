"""Fixtures for the web adapters' tests: the demo shop served on 127.0.0.1, and a leak check."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from dg_core import State
from dg_envs.web import DemoShop, browser_processes


@pytest.fixture(scope="session")
def shop() -> Iterator[DemoShop]:
    """The demo shop on a free port for the whole session."""
    with DemoShop() as served:
        yield served


@pytest.fixture
def no_leftover_browsers() -> Iterator[None]:
    """Fail the test if a Chromium or chromedriver process it started outlives it."""
    before = set(browser_processes())
    yield
    leftover = sorted(set(browser_processes()) - before)
    assert leftover == [], f"browser processes left behind: {leftover}"


def element_id(state: State, role: str, name: str) -> str:
    """The id of the element shown as ``[id] role 'name'`` in a state, failing clearly if absent."""
    match = re.search(rf"\[(\w+)\] {re.escape(role)} '{re.escape(name)}'", state.text)
    assert match is not None, f"no {role} {name!r} in:\n{state.text}"
    return match.group(1)
