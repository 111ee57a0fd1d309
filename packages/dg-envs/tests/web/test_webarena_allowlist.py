"""WebArenaEnv's allowlist on real Chromium: the attacks of issue 21 (item 11) and lures a page can set.

Each test serves lures from an allowed site and checks that a second site on another port of the same
host (outside the allowlist) never receives a request, and that the env reports what it refused.
"""

from __future__ import annotations

import itertools
import socket
import time
from collections.abc import Iterator

import pytest

from dg_core import Task
from dg_envs.web import DemoShop, URLRefusedError, WebArenaEnv, chromium_paths, parse_web_url, site_task

from .conftest import RecordingSite, element_id

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def env() -> Iterator[WebArenaEnv]:
    web_env = WebArenaEnv(max_steps=8, pre_observation_delay_s=0.3, slow_mo_ms=0, step_timeout_s=30.0)
    yield web_env
    web_env.close()


def _task(site: RecordingSite, path: str = "start") -> Task:
    """A task on ``site`` with no ``allowed_hosts``: only the start URL's host:port is allowed."""
    return Task(
        id="lure",
        env_id="webarena",
        instruction="Look around.",
        config={"start_url": site.url + path, "success": {"url_contains": "/never"}},
    )


def _settle(outside: RecordingSite) -> None:
    time.sleep(0.5)  # let a request that slipped through arrive before we look
    assert outside.requests == []


def test_a_task_without_allowed_hosts_cannot_read_local_files(env: WebArenaEnv, shop: DemoShop) -> None:
    no_hosts = Task(
        id="no-hosts",
        env_id="webarena",
        instruction="Look around.",
        config={"start_url": shop.url, "success": {"url_contains": "/never"}},
    )
    before = env.reset(no_hosts)
    result = env.step('goto("file:///etc/passwd")')
    assert result.done and result.success is False
    assert result.info["left_allowed_hosts"] == "file:///etc/passwd"
    assert "root:" not in result.state.text
    assert result.state.text.startswith(before.text)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:{other}\\@127.0.0.1:{allowed}/",  # Chromium: host 127.0.0.1:{other}
        "http://127.0.0.1:{other}/",
        "http://localhost:{allowed}/",
        "http://user@127.0.0.1:{allowed}/",
        "http:/\\127.0.0.1:{other}/",
        "data:text/html,<script>location='http://127.0.0.1:{other}/from-data'</script>",
        "javascript:location='http://127.0.0.1:{other}/from-js'",
        "view-source:http://127.0.0.1:{other}/",
        "blob:http://127.0.0.1:{allowed}/x",
        "chrome://version",
    ],
)
def test_goto_tricks_are_refused_before_the_browser_moves(
    env: WebArenaEnv, lures: RecordingSite, outside: RecordingSite, url: str
) -> None:
    env.reset(_task(lures))
    target = url.format(other=outside.port, allowed=lures.port)
    result = env.step(f"goto({target!r})")
    assert result.done and result.success is False
    assert result.info["left_allowed_hosts"] == target
    assert outside.marker not in result.state.text
    _settle(outside)


def test_redirects_to_another_port_are_stopped_in_the_browser(
    env: WebArenaEnv, lures: RecordingSite, outside: RecordingSite
) -> None:
    lures.pages["/redirect"] = ("redirect", f"http://127.0.0.1:{outside.port}/redirected")
    lures.pages["/slashes"] = ("redirect", f"/\\127.0.0.1:{outside.port}/backslash")  # protocol-relative in Chromium
    for path in ("redirect", "slashes"):
        env.reset(_task(lures))
        result = env.step(f'goto("{lures.url}{path}")')  # allowed: the first hop is on the start host
        assert result.done and result.success is False, path
        assert str(result.info["left_allowed_hosts"]).startswith(f"http://127.0.0.1:{outside.port}/")
        assert result.info["left_allowed_hosts"] in result.info["blocked_requests"]
        assert outside.marker not in result.state.text
    _settle(outside)


def test_page_scripts_and_subresources_cannot_reach_other_hosts(
    env: WebArenaEnv, lures: RecordingSite, outside: RecordingSite
) -> None:
    other = f"127.0.0.1:{outside.port}"
    lures.pages["/start"] = (
        "<title>lures</title><p>Lures</p>"
        f'<img src="http://{other}/img" alt="pixel">'
        f'<iframe src="http://{other}/frame"></iframe>'
        f"<iframe src=\"data:text/html,<script>fetch('http://{other}/from-data-frame')</script>\"></iframe>"
        f"<script>fetch('http://{other}/fetch').catch(() => {{}});"
        f"try {{ new WebSocket('ws://{other}/ws'); }} catch (e) {{}}</script>"
    )
    state = env.reset(_task(lures))
    assert "Lures" in state.text
    _settle(outside)
    blocked = [
        *map(str, state.info.get("blocked_requests", [])),
        *map(str, env.step("noop(500)").info.get("blocked_requests", [])),
    ]
    for target in (f"http://{other}/img", f"http://{other}/frame", f"http://{other}/fetch", other):
        assert target in blocked, (target, blocked)
    assert f"http://{other}/from-data-frame" in blocked
    assert lures.requests.count("/start") == 1  # the allowed site itself is reached through the proxy


def test_links_popups_and_script_navigation_stop_before_leaving(
    env: WebArenaEnv, lures: RecordingSite, outside: RecordingSite
) -> None:
    other = f"127.0.0.1:{outside.port}"
    lures.pages["/start"] = (
        "<title>links</title>"
        f'<a href="http://{other}/clicked">Plain link</a> '
        f'<a href="http://{other}/popup" target="_blank">Popup link</a> '
        f"<button onclick=\"location.href='http://{other}\\\\@127.0.0.1:{lures.port}/'\">Script nav</button>"
    )
    for role, name, path in (
        ("link", "Plain link", "/clicked"),
        ("link", "Popup link", "/popup"),
        ("button", "Script nav", "/@127.0.0.1"),
    ):
        state = env.reset(_task(lures))
        result = env.step(f'click("{element_id(state, role, name)}")')
        assert result.done and result.success is False, name
        assert str(result.info["left_allowed_hosts"]).startswith(f"http://{other}{path}"), result.info
        assert outside.marker not in result.state.text
    _settle(outside)


def test_webrtc_cannot_send_udp_around_the_proxy(env: WebArenaEnv, lures: RecordingSite) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as stun:
        stun.bind(("127.0.0.1", 0))
        stun.settimeout(3.0)
        lures.pages["/start"] = (
            "<title>webrtc</title><script>"
            f"const pc = new RTCPeerConnection({{iceServers: [{{urls: 'stun:127.0.0.1:{stun.getsockname()[1]}'}}]}});"
            "pc.createDataChannel('x'); pc.createOffer().then(offer => pc.setLocalDescription(offer));</script>"
        )
        env.reset(_task(lures))
        env.step("noop(1000)")
        with pytest.raises(TimeoutError):  # without the WebRTC flag a STUN binding request arrives here
            stun.recvfrom(2048)


def test_the_allowed_site_still_works_through_the_proxy(env: WebArenaEnv, shop: DemoShop) -> None:
    state = env.reset(site_task("tray", "Open the Oak Tray.", shop.url + "products", {"url_contains": "/oak-tray"}))
    result = env.step(f'click("{element_id(state, "link", "Oak Tray")}")')
    assert result.success is True
    # Only Chromium's own services (autofill lookups for a page's forms) may show up as refused.
    blocked = [*state.info.get("blocked_requests", []), *result.info.get("blocked_requests", [])]  # type: ignore[misc]
    assert not [target for target in map(str, blocked) if "127.0.0.1" in target], blocked


_PREFIXES = (
    "http://",
    "http:\\\\",
    "http:/\\",
    "HTTP://",
    " http://",
    "h\ttp://",
    "https://",
    "http:///",
    "http:",
    "http:/",
)
_HOSTS = (
    "127.0.0.1", "127.0.0.1.", "2130706433", "0x7f.0.0.1", "127.1", "127.000.0.1", "localhost", "LocalHost.", "[::1]",
    "[0::ffff:127.0.0.1]", "exa%6dple.com", "xn--e1afmkfd.xn--p1ai", "a_b.example", "a..b", "1.2.3.4.5", "x.0x1",
)  # fmt: skip
_PORTS = ("", ":", ":8000", ":08000", ":80", ":443", ":65536")
_SUFFIXES = ("/", "\\@127.0.0.1:9/", "?@x/", "#x", "@127.0.0.1:9/", "", ":9/")


def test_the_url_reader_agrees_with_chromium_or_refuses() -> None:
    """Every URL the pre-check accepts has the scheme, host and port Chromium's own parser finds."""
    from browsergym.core import _get_global_playwright

    urls = ["".join(parts) for parts in itertools.product(_PREFIXES, _HOSTS, _PORTS, _SUFFIXES)]
    browser = _get_global_playwright().chromium.launch(executable_path=chromium_paths()[0], chromium_sandbox=False)
    try:
        read = browser.new_page().evaluate(
            "urls => urls.map(u => { try { const x = new URL(u); return [x.protocol, x.hostname, x.port]; }"
            " catch (e) { return null; } })",
            urls,
        )
    finally:
        browser.close()
    accepted = 0
    for url, chromium_read in zip(urls, read, strict=True):
        try:
            origin = parse_web_url(url)
        except URLRefusedError:
            continue
        accepted += 1
        assert origin is not None and chromium_read is not None, url
        scheme, host, port = chromium_read[0].rstrip(":"), chromium_read[1], chromium_read[2]
        port_number = int(port) if port else {"http": 80, "https": 443}[scheme]
        # A trailing dot names the same host; the reader drops it, Chromium keeps it on names.
        assert (scheme, host.removesuffix("."), port_number) == (origin.scheme, origin.host, origin.port), url
    assert accepted > 1000  # the tricky forms Chromium reads one way are accepted, not only refused
