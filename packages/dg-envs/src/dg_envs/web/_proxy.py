"""The browser's only way out: an HTTP proxy on 127.0.0.1 that forwards to allowed hosts and refuses the rest.

:class:`~dg_envs.web.WebArenaEnv` launches Chromium with ``--proxy-server`` pointing here (Playwright adds
``--proxy-bypass-list=<-loopback>``, so even ``127.0.0.1`` and ``localhost`` go through it). Every network
request the browser makes then arrives here first: navigations, each hop of a redirect, subresources,
iframes, popups, workers, ``fetch``/XHR, WebSockets (as ``CONNECT``). The host checked is the one Chromium
itself parsed and is about to connect to (the absolute URL of a plain-HTTP request, the ``host:port`` of a
``CONNECT``), so no URL trick can make the check and the connection disagree. A refused request never
leaves the machine: plain HTTP gets a ``403`` page from the proxy, a tunnel a ``403`` that Chromium shows as
an error page; both are recorded for the env's step ``info``.

Plain HTTP is forwarded one request per connection (``Connection: close`` both ways), so a reused
connection can never carry a second request past the check.
"""

from __future__ import annotations

import contextlib
import select
import socket
import socketserver
import threading
from types import TracebackType

from dg_envs.web._allowlist import HostAllowlist, URLRefusedError, parse_authority, parse_web_url

__all__ = ["AllowlistProxy"]

_MAX_HEAD_BYTES = 64 * 1024
_HOP_HEADERS = {b"connection", b"proxy-connection", b"keep-alive", b"proxy-authorization", b"proxy-authenticate"}
_CONNECT_TIMEOUT_S = 15.0
_IDLE_TIMEOUT_S = 300.0
_BLOCKED_BODY = b"<!doctype html><title>Blocked</title><p>dg: this host is outside the task's allowed hosts.</p>"


def _read_head(sock: socket.socket) -> tuple[bytes, bytes] | None:
    """``(head, bytes after it)`` of an HTTP message, or ``None`` if the peer closed or sent too much."""
    data = b""
    while b"\r\n\r\n" not in data:
        if len(data) > _MAX_HEAD_BYTES:
            return None
        chunk = sock.recv(65536)
        if not chunk:
            return None
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    return head, rest


def _without_hop_headers(lines: list[bytes]) -> list[bytes]:
    return [line for line in lines if line.split(b":", 1)[0].strip().lower() not in _HOP_HEADERS]


def _splice(client: socket.socket, upstream: socket.socket, *, rewrite_response_head: bool) -> None:
    """Copy bytes both ways until both sides are done (or idle too long)."""
    open_reads = {client: upstream, upstream: client}
    pending_head = b"" if rewrite_response_head else None
    while open_reads:
        readable, _, _ = select.select(list(open_reads), [], [], _IDLE_TIMEOUT_S)
        if not readable:
            return
        for source in readable:
            target = open_reads[source]
            try:
                chunk = source.recv(65536)
            except OSError:
                chunk = b""
            if not chunk:
                del open_reads[source]
                with contextlib.suppress(OSError):
                    target.shutdown(socket.SHUT_WR)
                if source is upstream:  # the response is over: nothing more goes up this connection
                    return
                continue
            if source is upstream and pending_head is not None:
                pending_head += chunk
                if b"\r\n\r\n" not in pending_head:
                    if len(pending_head) > _MAX_HEAD_BYTES:
                        return
                    continue
                head, _, body = pending_head.partition(b"\r\n\r\n")
                lines = head.split(b"\r\n")
                lines = [lines[0], *_without_hop_headers(lines[1:]), b"Connection: close", b"Proxy-Connection: close"]
                chunk, pending_head = b"\r\n".join(lines) + b"\r\n\r\n" + body, None
            target.sendall(chunk)


class _Handler(socketserver.BaseRequestHandler):
    server: _ProxyServer

    def handle(self) -> None:
        client: socket.socket = self.request
        client.settimeout(_IDLE_TIMEOUT_S)
        try:
            message = _read_head(client)
            if message is None:
                return
            head, rest = message
            lines = head.split(b"\r\n")
            parts = lines[0].decode("latin-1").split(" ")
            if len(parts) != 3:
                self._reply(400, "Bad Request")
                return
            method, target, version = parts
            if method.upper() == "CONNECT":
                self._tunnel(target, rest)
            else:
                self._forward(method, target, version, lines[1:], rest)
        except OSError:
            return

    def _reply(self, status: int, reason: str, body: bytes = b"") -> None:
        head = (
            f"HTTP/1.1 {status} {reason}\r\nContent-Type: text/html; charset=utf-8\r\n"
            f"Content-Length: {len(body)}\r\nX-DG-Blocked: allowlist\r\nConnection: close\r\n"
            "Proxy-Connection: close\r\n\r\n"
        )
        self.request.sendall(head.encode("latin-1") + body)

    def _refuse(self, target: str) -> None:
        self.server.record_blocked(target)
        self._reply(403, "Forbidden", _BLOCKED_BODY)

    def _open(self, host: str, port: int) -> socket.socket | None:
        try:
            return socket.create_connection((host.strip("[]"), port), timeout=_CONNECT_TIMEOUT_S)
        except OSError:
            self._reply(502, "Bad Gateway")
            return None

    def _tunnel(self, authority: str, rest: bytes) -> None:
        try:
            host, port = parse_authority(authority)
        except URLRefusedError:
            host, port = "", None
        if port is None or not self.server.allowlist.allows(host, port):
            self._refuse(authority)
            return
        upstream = self._open(host, port)
        if upstream is None:
            return
        with upstream:
            self.request.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            if rest:
                upstream.sendall(rest)
            _splice(self.request, upstream, rewrite_response_head=False)

    def _forward(self, method: str, target: str, version: str, headers: list[bytes], rest: bytes) -> None:
        try:
            origin = parse_web_url(target)
        except URLRefusedError:
            origin = None
        if origin is None or origin.scheme != "http" or not self.server.allowlist.allows(origin.host, origin.port):
            self._refuse(target)
            return
        after_scheme = target.split("//", 1)[1]
        slash = min((i for i in (after_scheme.find(c) for c in "/?#") if i >= 0), default=len(after_scheme))
        path = after_scheme[slash:].split("#", 1)[0] or "/"
        if not path.startswith("/"):
            path = "/" + path
        upstream = self._open(origin.host, origin.port)
        if upstream is None:
            return
        request_head = [f"{method} {path} {version}".encode("latin-1"), *_without_hop_headers(headers)]
        request_head.append(b"Connection: close")
        with upstream:
            upstream.sendall(b"\r\n".join(request_head) + b"\r\n\r\n" + rest)
            _splice(self.request, upstream, rewrite_response_head=True)


class _ProxyServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    allowlist: HostAllowlist
    blocked: list[str]
    lock: threading.Lock

    def record_blocked(self, target: str) -> None:
        with self.lock:
            if len(self.blocked) < 1000:
                self.blocked.append(target)


class AllowlistProxy:
    """An HTTP(S) forward proxy on a free ``127.0.0.1`` port that only reaches ``allowlist`` hosts.

    Use it as a context manager or call :meth:`start` / :meth:`stop`. :attr:`allowlist` may be replaced
    between episodes; :meth:`take_blocked` returns (and forgets) what was refused since the last call.
    """

    def __init__(self, allowlist: HostAllowlist) -> None:
        self._allowlist = allowlist
        self._server: _ProxyServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def allowlist(self) -> HostAllowlist:
        """The hosts requests may reach."""
        return self._allowlist

    @allowlist.setter
    def allowlist(self, allowlist: HostAllowlist) -> None:
        self._allowlist = allowlist
        if self._server is not None:
            self._server.allowlist = allowlist

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``, for Playwright's ``proxy={"server": ...}``."""
        if self._server is None:
            raise RuntimeError("the proxy is not running; call start() first")
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> AllowlistProxy:
        """Listen on a free port and serve from a daemon thread."""
        if self._server is None:
            server = _ProxyServer(("127.0.0.1", 0), _Handler)
            server.allowlist, server.blocked, server.lock = self._allowlist, [], threading.Lock()
            self._server = server
            self._thread = threading.Thread(target=server.serve_forever, name="dg-allowlist-proxy", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening (connections in flight end with the browser that holds them)."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
            if self._thread is not None:
                self._thread.join(timeout=5)
            self._thread = None

    def take_blocked(self) -> list[str]:
        """Targets refused since the last call: absolute ``http://`` URLs, or ``host:port`` of refused tunnels."""
        if self._server is None:
            return []
        with self._server.lock:
            blocked, self._server.blocked = self._server.blocked, []
        return blocked

    def __enter__(self) -> AllowlistProxy:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
