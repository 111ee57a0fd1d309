"""Fixtures for the web adapters' tests: the demo shop and recording sites on 127.0.0.1, and a leak check."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

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


class RecordingSite:
    """A site on 127.0.0.1 serving ``pages`` (path -> HTML, or ``("redirect", location)``), recording every request.

    The allowlist tests serve lures from one site and check that a second one, outside the allowlist,
    never hears from the browser.
    """

    def __init__(self, pages: dict[str, str | tuple[str, str]] | None = None) -> None:
        self.pages = dict(pages or {})
        self.requests: list[str] = []
        site = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                """Quiet."""

            def do_GET(self) -> None:
                site.requests.append(self.path)
                page = site.pages.get(self.path.split("?", 1)[0], f"<title>page</title><p>{site.marker}</p>")
                if isinstance(page, tuple):
                    self.send_response(302)
                    self.send_header("Location", page[1])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = page.encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_POST = do_GET

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_port
        self.marker = f"CONTENT-OF-PORT-{self.port}"
        """Text of every page not in ``pages``."""
        self.url = f"http://127.0.0.1:{self.port}/"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def outside() -> Iterator[RecordingSite]:
    """A site that no task allows: the browser must never reach it."""
    site = RecordingSite()
    yield site
    site.close()


@pytest.fixture
def lures() -> Iterator[RecordingSite]:
    """An allowed site whose pages the tests fill with lures towards :func:`outside`."""
    site = RecordingSite()
    yield site
    site.close()
