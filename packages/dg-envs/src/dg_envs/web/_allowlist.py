"""Which URLs a web agent may reach: a strict, browser-like URL reading and a per-task host allowlist.

Python's :func:`urllib.parse.urlsplit` and Chromium disagree on URLs such as
``http://127.0.0.1:8001\\@127.0.0.1:8000/`` (Chromium, following the WHATWG URL standard, treats the
backslash as a slash, so the host is ``127.0.0.1:8001``; ``urlsplit`` reads ``127.0.0.1:8000``). The
reader here follows the WHATWG rules that decide the host (tabs and newlines removed, backslash as slash
for http(s), scheme and host case-folded, default ports, a trailing dot) and refuses whatever it could
read differently from a browser: user info (``user@``), percent-encoded or non-ASCII hosts, IPv4 written
in any form but dotted decimal, a slash count other than two after the scheme.

Only ``http`` and ``https`` URLs on an allowed host (and ``about:blank``) pass; ``file:``, ``data:``,
``javascript:``, ``blob:``, ``view-source:``, ``chrome:`` and every other scheme are refused. This is the
pre-check on ``goto``; the browser's own traffic is checked again, on the host Chromium actually
connects to, by :class:`~dg_envs.web._proxy.AllowlistProxy`.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass

from dg_core import ConfigError

__all__ = ["HostAllowlist", "URLRefusedError", "WebOrigin", "parse_authority", "parse_web_url"]

DEFAULT_PORTS = {"http": 80, "https": 443}
"""Schemes a web agent may use, with their default ports."""
_MAX_URL_CHARS = 8192
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*):(.*)", re.DOTALL)
_HOST_CHARS = re.compile(r"[a-z0-9_\-.]+")
_DIGITS = re.compile(r"[0-9]+")
_ENDS_IN_NUMBER = re.compile(r"(?:[0-9]+|0[xX][0-9A-Fa-f]*)")
_C0_AND_SPACE = "".join(chr(code) for code in range(0x21))


class URLRefusedError(ValueError):
    """A URL the agent may not open, with the reason."""


@dataclass(frozen=True)
class WebOrigin:
    """Scheme, canonical host and port (the default port filled in) of an http(s) URL."""

    scheme: str
    host: str
    """Lowercase name without a trailing dot, dotted-decimal IPv4, or bracketed compressed IPv6."""
    port: int

    @property
    def authority(self) -> str:
        """``host:port``."""
        return f"{self.host}:{self.port}"


def _ipv4(host: str) -> str:
    parts = host.split(".")
    canonical = len(parts) == 4 and all(
        _DIGITS.fullmatch(part) and (part == "0" or not part.startswith("0")) and int(part) <= 255 for part in parts
    )
    if not canonical:
        raise URLRefusedError(f"IPv4 address {host!r} is not in plain dotted-decimal form")
    return host


def _host(text: str) -> str:
    """The canonical host, or :class:`URLRefusedError`."""
    if not text:
        raise URLRefusedError("no host")
    if text.startswith("["):
        if not text.endswith("]") or "%" in text:
            raise URLRefusedError(f"malformed IPv6 host {text!r}")
        try:
            address = ipaddress.IPv6Address(text[1:-1])
        except ValueError:
            raise URLRefusedError(f"malformed IPv6 host {text!r}") from None
        return f"[{address.compressed}]"
    if "%" in text:
        raise URLRefusedError(f"percent-encoded host {text!r}")
    if not text.isascii():
        raise URLRefusedError(f"non-ASCII host {text!r} (write its xn-- form)")
    host = text.lower()
    if not _HOST_CHARS.fullmatch(host):
        raise URLRefusedError(f"host {text!r} holds characters a browser may read differently")
    if host.endswith("."):  # "example.com." and "example.com" are the same name; Chromium drops it on IPv4
        host = host[:-1]
    labels = host.split(".")
    if "" in labels:
        raise URLRefusedError(f"host {text!r} has an empty label")
    if _ENDS_IN_NUMBER.fullmatch(labels[-1]):  # the WHATWG parser reads the whole host as IPv4 then
        return _ipv4(host)
    return host


def _port(text: str, scheme: str | None) -> int | None:
    if not text:
        return DEFAULT_PORTS[scheme] if scheme else None
    if not _DIGITS.fullmatch(text) or int(text) > 65535:
        raise URLRefusedError(f"bad port {text!r}")
    return int(text)


def parse_authority(authority: str, scheme: str | None = None) -> tuple[str, int | None]:
    """``(host, port)`` of ``host``, ``host:port`` or ``[v6]:port``; the port is ``None`` when absent and no scheme.

    Raises:
        URLRefusedError: User info, a malformed host or port, or anything a browser could read otherwise.
    """
    if "@" in authority:
        raise URLRefusedError("user info (user@host) in the URL")
    if authority.startswith("["):
        end = authority.find("]")
        if end < 0:
            raise URLRefusedError(f"malformed IPv6 host in {authority!r}")
        host_text, rest = authority[: end + 1], authority[end + 1 :]
        if rest and not rest.startswith(":"):
            raise URLRefusedError(f"malformed authority {authority!r}")
        port_text = rest[1:]
    else:
        host_text, _, port_text = authority.partition(":")
    return _host(host_text), _port(port_text, scheme)


def parse_web_url(url: str) -> WebOrigin | None:
    """The origin of an http(s) URL, or ``None`` for ``about:blank``, read the way Chromium reads it.

    Raises:
        URLRefusedError: Any other scheme, or a URL this reader could read differently from a browser.
    """
    if len(url) > _MAX_URL_CHARS:
        raise URLRefusedError(f"URL longer than {_MAX_URL_CHARS} characters")
    # WHATWG: strip leading and trailing C0 controls and spaces, drop every tab and newline.
    text = url.strip(_C0_AND_SPACE).replace("\t", "").replace("\n", "").replace("\r", "")
    if any(ord(char) < 0x20 or ord(char) == 0x7F for char in text):
        raise URLRefusedError("control characters in the URL")
    match = _SCHEME.fullmatch(text)
    if match is None:
        raise URLRefusedError("not an absolute URL (no scheme)")
    scheme, rest = match.group(1).lower(), match.group(2)
    if scheme == "about":
        if rest.lower() == "blank":
            return None
        raise URLRefusedError("only about:blank is allowed among about: pages")
    if scheme not in DEFAULT_PORTS:
        raise URLRefusedError(f"{scheme}: URLs are not allowed (only http and https)")
    rest = rest.replace("\\", "/")  # a backslash is a slash in http(s) URLs
    if not rest.startswith("//") or rest.startswith("///"):
        raise URLRefusedError(f"expected {scheme}:// followed by a host")
    authority = re.split(r"[/?#]", rest[2:], maxsplit=1)[0]
    host, port = parse_authority(authority, scheme)
    assert port is not None
    return WebOrigin(scheme, host, port)


class HostAllowlist:
    """The hosts a task's agent may reach: ``host:port`` entries, or ``host`` for its default ports (80 and 443).

    Args:
        entries: Allowed ``host`` / ``host:port`` / ``[v6]:port`` entries; at least one.

    Raises:
        ConfigError: No entry, or an entry that is not a plain host with an optional port.
    """

    def __init__(self, entries: Iterable[str]) -> None:
        parsed: list[tuple[str, int | None]] = []
        for entry in entries:
            try:
                parsed.append(parse_authority(str(entry).strip()))
            except URLRefusedError as error:
                raise ConfigError(f"allowed host {entry!r}: {error}") from None
        if not parsed:
            raise ConfigError("the allowlist needs at least one host")
        self._entries = tuple(dict.fromkeys(parsed))

    @classmethod
    def for_task(cls, allowed_hosts: Iterable[str] | None, start_urls: Iterable[str]) -> HostAllowlist:
        """A task's allowlist: its ``allowed_hosts``, or else the ``host:port`` of its start URLs only.

        Raises:
            ConfigError: A start URL that is not an allowed http(s) URL, or neither hosts nor start URLs.
        """
        starts = [url.strip() for url in start_urls if url.strip()]
        origins = []
        for url in starts:
            try:
                origin = parse_web_url(url)
            except URLRefusedError as error:
                raise ConfigError(f"start URL {url!r}: {error}") from None
            if origin is not None:
                origins.append(origin)
        if isinstance(allowed_hosts, str):
            allowed_hosts = [allowed_hosts]
        hosts = [str(host) for host in allowed_hosts or ()]
        allowlist = cls(hosts or [origin.authority for origin in origins])
        for url in starts:
            reason = allowlist.refusal(url)
            if reason is not None:
                raise ConfigError(f"start URL {url!r} is refused: {reason}")
        return allowlist

    @property
    def entries(self) -> tuple[str, ...]:
        """Canonical entries (``host`` or ``host:port``)."""
        return tuple(host if port is None else f"{host}:{port}" for host, port in self._entries)

    def allows(self, host: str, port: int) -> bool:
        """Whether the canonical ``host`` on ``port`` is allowed."""
        return any(
            host == allowed and (port == allowed_port or (allowed_port is None and port in DEFAULT_PORTS.values()))
            for allowed, allowed_port in self._entries
        )

    def refusal(self, url: str) -> str | None:
        """Why ``url`` may not be opened, or ``None`` when it may (``about:blank`` always may)."""
        try:
            origin = parse_web_url(url)
        except URLRefusedError as error:
            return str(error)
        if origin is None or self.allows(origin.host, origin.port):
            return None
        return f"{origin.authority} is not an allowed host ({', '.join(self.entries)})"

    def __repr__(self) -> str:
        return f"HostAllowlist({list(self.entries)!r})"
