"""The web allowlist without a browser: URLs read as Chromium reads them, task defaults, and the proxy."""

from __future__ import annotations

import os
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from dg_core import ConfigError, Task
from dg_envs.web import AllowlistProxy, HostAllowlist, URLRefusedError, WebOrigin, parse_web_url, site_task

from .conftest import RecordingSite


@pytest.mark.parametrize(
    ("url", "origin"),
    [
        ("http://127.0.0.1:8000/a", WebOrigin("http", "127.0.0.1", 8000)),
        ("HTTP://Shop.Example.COM/x", WebOrigin("http", "shop.example.com", 80)),
        ("https://shop.example.com:443/", WebOrigin("https", "shop.example.com", 443)),
        ("https://shop.example.com./", WebOrigin("https", "shop.example.com", 443)),  # trailing dot
        ("http://127.0.0.1.:8000/", WebOrigin("http", "127.0.0.1", 8000)),
        ("http://127.0.0.1:/", WebOrigin("http", "127.0.0.1", 80)),  # empty port: the default
        ("  http://127.0.0.1:8000/\n", WebOrigin("http", "127.0.0.1", 8000)),  # outer spaces stripped
        ("ht\ttp://127.0.\n0.1:80\r00/", WebOrigin("http", "127.0.0.1", 8000)),  # tabs / newlines dropped
        ("http:\\\\127.0.0.1:8000\\x", WebOrigin("http", "127.0.0.1", 8000)),  # backslash is a slash
        ("http://127.0.0.1:9000\\@127.0.0.1:8000/", WebOrigin("http", "127.0.0.1", 9000)),  # the URL
        ("http://127.0.0.1:9000?@127.0.0.1:8000/", WebOrigin("http", "127.0.0.1", 9000)),
        ("http://127.0.0.1:9000#@127.0.0.1:8000/", WebOrigin("http", "127.0.0.1", 9000)),
        ("http://[0:0::1]:8000/", WebOrigin("http", "[::1]", 8000)),
    ],
)
def test_urls_are_read_as_chromium_reads_them(url: str, origin: WebOrigin) -> None:
    assert parse_web_url(url) == origin


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("file:///etc/passwd", "file: URLs are not allowed"),
        ("FILE:///etc/passwd", "file: URLs are not allowed"),
        ("data:text/html,<p>hi", "data: URLs are not allowed"),
        ("javascript:alert(1)", "javascript: URLs are not allowed"),
        (" javascript:alert(1)", "javascript: URLs are not allowed"),
        ("java\tscript:alert(1)", "javascript: URLs are not allowed"),
        ("blob:http://127.0.0.1:8000/uuid", "blob: URLs are not allowed"),
        ("view-source:http://127.0.0.1:8000/", "view-source: URLs are not allowed"),
        ("chrome://version", "chrome: URLs are not allowed"),
        ("ws://127.0.0.1:8000/", "ws: URLs are not allowed"),
        ("about:config", "only about:blank"),
        ("//127.0.0.1:8000/", "not an absolute URL"),
        ("127.0.0.1:8000/x", "not an absolute URL"),
        ("localhost:8000/x", "localhost: URLs are not allowed"),
        ("/path", "not an absolute URL"),
        ("http:/127.0.0.1:8000/", "expected http://"),  # read differently with and without a base URL
        ("http:///127.0.0.1:8000/", "expected http://"),
        ("http://user@127.0.0.1:8000/", "user info"),
        ("http://127.0.0.1:8000@127.0.0.1:9000/", "user info"),
        ("http://127.0.0.1:8000:9000/", "bad port"),
        ("http://127.0.0.1:99999/", "bad port"),
        ("http://127.0.0.1:8\uff1000/", "bad port"),  # a non-ASCII digit
        ("http://2130706433:8000/", "dotted-decimal"),  # 127.0.0.1 for Chromium
        ("http://0x7f.1:8000/", "dotted-decimal"),
        ("http://127.1:8000/", "dotted-decimal"),
        ("http://0177.0.0.1:8000/", "dotted-decimal"),
        ("http://1.2.3.4.5/", "dotted-decimal"),
        ("http://%31%32%37.0.0.1:8000/", "percent-encoded"),
        ("http://ex\u0430mple.com/", "non-ASCII"),  # a Cyrillic a
        ("http://exa mple.com/", "characters a browser may read differently"),
        ("http://a..b/", "empty label"),
        ("http://[::1/", "malformed IPv6"),
        ("http://[fe80::1%25eth0]/", "malformed IPv6"),
        ("http://:8000/", "no host"),
        ("http://127.0.0.1:8000/a\x00b", "control characters"),
        ("http://x/" + "a" * 9000, "longer than"),
    ],
)
def test_other_schemes_and_ambiguous_urls_are_refused(url: str, reason: str) -> None:
    with pytest.raises(URLRefusedError, match=reason):
        parse_web_url(url)


def test_about_blank_is_the_one_page_without_a_host() -> None:
    assert parse_web_url("about:blank") is None
    assert parse_web_url("ABOUT:BLANK") is None


def test_allowlist_entries_with_and_without_ports() -> None:
    allowlist = HostAllowlist(["127.0.0.1:8000", "Shop.Example.com", "[::1]:9000"])
    assert allowlist.entries == ("127.0.0.1:8000", "shop.example.com", "[::1]:9000")
    assert allowlist.refusal("http://127.0.0.1:8000/x") is None
    assert allowlist.refusal("about:blank") is None
    assert allowlist.refusal("https://shop.example.com/") is None  # a bare host: ports 80 and 443
    assert allowlist.refusal("http://shop.example.com./") is None
    assert allowlist.refusal("http://[::1]:9000/") is None
    for url in ("http://127.0.0.1:8001/", "http://localhost:8000/", "http://shop.example.com:8080/", "http://[::1]/"):
        assert "is not an allowed host" in str(allowlist.refusal(url)), url
    assert "file:" in str(allowlist.refusal("file:///etc/passwd"))
    for bad in ([], ["http://127.0.0.1:8000/"], ["user@host"], ["127.1"], ["host:port"]):
        with pytest.raises(ConfigError):
            HostAllowlist(bad)


def test_a_task_without_allowed_hosts_gets_its_start_host_and_port_only() -> None:
    allowlist = HostAllowlist.for_task(None, ["http://127.0.0.1:8000/start"])
    assert allowlist.entries == ("127.0.0.1:8000",)
    assert HostAllowlist.for_task([], ["http://shop.example.com/"]).entries == ("shop.example.com:80",)
    both = HostAllowlist.for_task(None, ["http://10.0.0.5:8023", "http://forum.internal:9999"])
    assert both.entries == ("10.0.0.5:8023", "forum.internal:9999")
    assert HostAllowlist.for_task("127.0.0.1:8000", ["http://127.0.0.1:8000/"]).entries == ("127.0.0.1:8000",)
    with pytest.raises(ConfigError, match="is refused"):
        HostAllowlist.for_task(["127.0.0.1:8000"], ["http://127.0.0.1:9000/"])
    with pytest.raises(ConfigError, match="file: URLs are not allowed"):
        HostAllowlist.for_task(None, ["file:///etc/passwd"])
    with pytest.raises(ConfigError, match="at least one host"):
        HostAllowlist.for_task(None, [""])


def test_site_tasks_record_the_start_host_and_port() -> None:
    assert site_task("t", "x", "http://Shop.Example.com/", {"url_contains": "/"}).config["allowed_hosts"] == [
        "shop.example.com:80"
    ]
    with pytest.raises(ConfigError, match="expected an http"):
        site_task("t", "x", "file:///etc/passwd", {"url_contains": "/"})


@pytest.mark.browser  # needs Chromium installed, though it starts none
def test_webarena_env_refuses_a_task_it_cannot_confine() -> None:
    pytest.importorskip("browsergym.core")
    from dg_envs.web import WebArenaEnv

    env = WebArenaEnv()
    try:
        bad = Task(id="t", env_id="webarena", instruction="x", config={"start_url": "data:text/html,hi", "success": {}})
        with pytest.raises(ConfigError, match="data: URLs are not allowed"):
            env.reset(bad)
        no_start = Task(id="w", env_id="webarena", instruction="x", config={"webarena_task_id": 1})
        with pytest.raises(ConfigError, match="at least one host"):
            env.reset(no_start)
    finally:
        env.close()


# -- the proxy, driven by urllib -----------------------------------------------------------------
@pytest.fixture
def proxy(lures: RecordingSite) -> Iterator[AllowlistProxy]:
    with AllowlistProxy(HostAllowlist([f"127.0.0.1:{lures.port}"])) as running:
        yield running


def _get(proxy: AllowlistProxy, url: str) -> tuple[int, bytes, str | None]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({"http": proxy.url}))
    try:
        with opener.open(url, timeout=10) as response:
            return response.status, response.read(), response.headers.get("Connection")
    except urllib.error.HTTPError as error:
        return error.code, error.read(), error.headers.get("X-DG-Blocked")


def test_proxy_forwards_to_allowed_hosts_only(
    proxy: AllowlistProxy, lures: RecordingSite, outside: RecordingSite
) -> None:
    status, body, connection = _get(proxy, lures.url + "page?q=1")
    assert status == 200 and lures.marker.encode() in body and connection == "close"
    assert lures.requests == ["/page?q=1"]
    for url in (outside.url + "secret", f"http://localhost:{lures.port}/", f"http://127.0.0.1:{lures.port}.evil/"):
        status, body, blocked = _get(proxy, url)
        assert status == 403 and blocked == "allowlist" and outside.marker.encode() not in body
    assert outside.requests == []
    assert proxy.take_blocked() == [
        outside.url + "secret",
        f"http://localhost:{lures.port}/",
        f"http://127.0.0.1:{lures.port}.evil/",
    ]
    assert proxy.take_blocked() == []


def test_proxy_checks_every_redirect_hop_as_its_own_request(
    proxy: AllowlistProxy, lures: RecordingSite, outside: RecordingSite
) -> None:
    lures.pages["/hop"] = ("redirect", outside.url + "landed")
    status, _, _ = _get(proxy, lures.url + "hop")  # urllib follows the redirect through the proxy
    assert status == 403
    assert outside.requests == [] and proxy.take_blocked() == [outside.url + "landed"]


def _connect(proxy: AllowlistProxy, authority: str) -> bytes:
    port = int(proxy.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode())
        reply = sock.recv(4096)
        if reply.startswith(b"HTTP/1.1 200"):
            sock.sendall(b"GET /tunnelled HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            while chunk := sock.recv(4096):
                reply += chunk
        return reply


def test_proxy_tunnels_only_to_allowed_hosts(
    proxy: AllowlistProxy, lures: RecordingSite, outside: RecordingSite
) -> None:
    reply = _connect(proxy, f"127.0.0.1:{lures.port}")
    assert reply.startswith(b"HTTP/1.1 200") and lures.marker.encode() in reply
    assert lures.requests == ["/tunnelled"]
    for authority in (f"127.0.0.1:{outside.port}", f"user@127.0.0.1:{lures.port}", "127.0.0.1", "2130706433:80"):
        assert _connect(proxy, authority).startswith(b"HTTP/1.1 403")
    assert outside.requests == []
    assert len(proxy.take_blocked()) == 4


def test_proxy_follows_a_new_allowlist(proxy: AllowlistProxy, lures: RecordingSite, outside: RecordingSite) -> None:
    proxy.allowlist = HostAllowlist([f"127.0.0.1:{outside.port}"])
    assert _get(proxy, lures.url)[0] == 403
    assert _get(proxy, outside.url)[0] == 200


@pytest.mark.browser  # needs Chromium installed
def test_chromium_launcher_passes_the_guard_flags() -> None:
    from dg_envs.web._browser import chromium_with_flags

    flags = ("--webrtc-ip-handling-policy=disable_non_proxied_udp",)
    launcher = chromium_with_flags(flags)
    assert chromium_with_flags(flags) == launcher and os.access(launcher, os.X_OK)
    assert "--webrtc-ip-handling-policy=disable_non_proxied_udp" in Path(launcher).read_text()
    with pytest.raises(ConfigError, match="not a Chromium flag"):
        chromium_with_flags(("rm -rf /",))
