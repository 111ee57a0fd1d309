"""Debian Chromium for the web adapters: where it is, how tools find it, and its processes.

Both adapters drive the system Chromium (``apt-get install chromium chromium-driver``), never a
downloaded browser build. BrowserGym takes the binary through ``pw_chromium_kwargs``, but its chat
window launches a second browser that Playwright looks up under ``$PLAYWRIGHT_BROWSERS_PATH``; we point
that variable at a folder of our own holding a symlink to the system binary. MiniWoB++ reads
``MINIWOB_CHROME_BINARY`` and ``MINIWOB_CHROMEDRIVER``.

A browser is a tree of processes. :class:`ProcessTracker` records which Chromium (and chromedriver)
processes an adapter started, so a crashed or hung browser can be killed and nothing outlives ``close``.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shlex
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from dg_core import ConfigError

__all__ = [
    "BrowserHungError",
    "ProcessTracker",
    "browser_processes",
    "chromium_paths",
    "chromium_with_flags",
    "configure_miniwob_chrome",
    "link_playwright_chromium",
    "playwright_browsers_dir",
]

_CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/lib/chromium/chromium")
_CHROMEDRIVER_CANDIDATES = ("/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver")
_BROWSER_NAMES = ("chromium", "chrome", "chromedriver", "headless_shell")
_T = TypeVar("_T")
_INSTALL_HINT = "install Debian's browser: apt-get install -y chromium chromium-driver"
_lock = threading.Lock()
_browsers_dir: Path | None = None
_launchers: dict[tuple[str, ...], str] = {}


def _first_executable(env_var: str, candidates: tuple[str, ...], what: str) -> str:
    configured = os.environ.get(env_var)
    if configured:
        if not os.access(configured, os.X_OK):
            raise ConfigError(f"{env_var}={configured!r} is not an executable file")
        return configured
    for candidate in candidates:
        if os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which(Path(candidates[0]).name)
    if found:
        return found
    raise ConfigError(f"no {what} found (looked at {', '.join(candidates)}; set {env_var}); {_INSTALL_HINT}")


def chromium_paths() -> tuple[str, str]:
    """``(chromium, chromedriver)`` executables; ``DG_CHROMIUM`` / ``DG_CHROMEDRIVER`` override the lookup."""
    chromium = _first_executable("DG_CHROMIUM", _CHROMIUM_CANDIDATES, "Chromium binary")
    chromedriver = _first_executable("DG_CHROMEDRIVER", _CHROMEDRIVER_CANDIDATES, "chromedriver")
    return chromium, chromedriver


def playwright_browsers_dir() -> Path:
    """Point ``PLAYWRIGHT_BROWSERS_PATH`` at a folder this process owns (made once, removed at exit).

    Must run before Playwright's driver starts: the driver reads the variable when it launches. A
    value the user set is kept as is.
    """
    global _browsers_dir
    with _lock:
        if _browsers_dir is None:
            configured = os.environ.get("PLAYWRIGHT_BROWSERS_PATH")
            if configured:
                _browsers_dir = Path(configured)
            else:
                _browsers_dir = Path(tempfile.mkdtemp(prefix="dg-playwright-"))
                os.environ["PLAYWRIGHT_BROWSERS_PATH"] = str(_browsers_dir)
                atexit.register(shutil.rmtree, _browsers_dir, True)
        return _browsers_dir


def chromium_with_flags(flags: tuple[str, ...]) -> str:
    """An executable that starts the system Chromium with ``flags`` before the caller's own arguments.

    For flags a launcher gives no way to pass (BrowserGym fixes Playwright's ``args``). The small shell
    script lives in a private folder removed at exit; Chromium replaces it (``exec``), so the process
    tree and :class:`ProcessTracker` see Chromium itself.
    """
    for flag in flags:
        if not flag.startswith("--") or "\n" in flag:
            raise ConfigError(f"not a Chromium flag: {flag!r}")
    chromium, _ = chromium_paths()
    key = (chromium, *flags)
    with _lock:
        if key not in _launchers:
            folder = Path(tempfile.mkdtemp(prefix="dg-chromium-"))
            atexit.register(shutil.rmtree, folder, True)
            script = folder / "chromium"
            quoted = " ".join(shlex.quote(part) for part in key)
            script.write_text(f'#!/bin/sh\nexec {quoted} "$@"\n')
            script.chmod(0o755)
            _launchers[key] = str(script)
        return _launchers[key]


def link_playwright_chromium(expected_executable: str) -> None:
    """Make Playwright's expected Chromium path a symlink to the system binary if nothing is there."""
    target = Path(expected_executable)
    if target.exists():
        return
    chromium, _ = chromium_paths()
    target.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        target.symlink_to(chromium)


def configure_miniwob_chrome() -> None:
    """Set ``MINIWOB_CHROME_BINARY`` / ``MINIWOB_CHROMEDRIVER`` to the system browser unless already set."""
    chromium, chromedriver = chromium_paths()
    if not os.environ.get("MINIWOB_CHROME_BINARY") and not os.environ.get("MINIWOB_CHROMEDRIVER"):
        os.environ["MINIWOB_CHROME_BINARY"] = chromium
        os.environ["MINIWOB_CHROMEDRIVER"] = chromedriver


def _parent_map() -> dict[int, tuple[int, str, str]]:
    """pid -> (parent pid, command name, state) for every process we can read in /proc."""
    table: dict[int, tuple[int, str, str]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            raw = Path(entry.path, "stat").read_text()
        except OSError:  # the process ended while we looked
            continue
        # The command name is in parentheses and may itself hold spaces or parentheses.
        name = raw[raw.index("(") + 1 : raw.rindex(")")]
        fields = raw[raw.rindex(")") + 2 :].split()
        table[int(entry.name)] = (int(fields[1]), name, fields[0])
    return table


def browser_processes(root: int | None = None, *, include_zombies: bool = True) -> list[int]:
    """Chromium / chromedriver processes descending from ``root`` (default: this process)."""
    root = os.getpid() if root is None else root
    table = _parent_map()
    children: dict[int, list[int]] = {}
    for pid, (parent, _, _) in table.items():
        children.setdefault(parent, []).append(pid)
    found: list[int] = []
    stack = list(children.get(root, []))
    while stack:
        pid = stack.pop()
        _, name, state = table[pid]
        if any(marker in name.lower() for marker in _BROWSER_NAMES) and (include_zombies or state != "Z"):
            found.append(pid)
        stack.extend(children.get(pid, []))
    return sorted(found)


class ProcessTracker:
    """Remembers the browser processes that appeared while an adapter launched its browser.

    Launches are serialised through a process-wide lock so that two adapters starting browsers at once
    cannot claim each other's processes.
    """

    launch_lock = threading.RLock()

    def __init__(self) -> None:
        self.pids: set[int] = set()
        self._before: set[int] | None = None

    def __enter__(self) -> ProcessTracker:
        ProcessTracker.launch_lock.acquire()
        self._before = set(browser_processes())
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self._claim_new()
        finally:
            self._before = None
            ProcessTracker.launch_lock.release()

    def _claim_new(self) -> None:
        before = self._before
        if before is not None:  # inside a launch: whatever appeared since is ours
            self.pids |= set(browser_processes()) - before

    def refresh(self) -> None:
        """Add processes that the tracked ones started since (renderers, GPU helpers)."""
        for pid in list(self.pids):
            self.pids |= set(browser_processes(pid))

    def alive(self) -> list[int]:
        """Tracked processes still running (zombies excluded)."""
        return [pid for pid in browser_processes(include_zombies=False) if pid in self.pids]

    def main_pids(self) -> list[int]:
        """Tracked processes whose parent is not itself tracked: the browsers (and chromedrivers)."""
        table = _parent_map()
        return sorted(pid for pid in self.alive() if table.get(pid, (0, "", ""))[0] not in self.pids)

    def kill(self, *, grace_s: float = 2.0) -> None:
        """SIGKILL every tracked process and wait (up to ``grace_s``) until they are gone or reaped."""
        self._claim_new()
        self.refresh()
        for pid in self.pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline:
            for pid in list(self.pids):
                with contextlib.suppress(ChildProcessError):  # our own children must be reaped, or stay zombies
                    os.waitpid(pid, os.WNOHANG)
            if not self.alive():
                break
            time.sleep(0.05)
        self.pids.clear()


class BrowserHungError(RuntimeError):
    """A browser call outlived its time limit; the browser was killed."""


def run_watched(tracker: ProcessTracker, call: Callable[[], _T], timeout_s: float) -> _T:
    """Run a browser call; if it outlives ``timeout_s``, kill the tracked browser so the call fails.

    Raises:
        BrowserHungError: The call did not return in time (the browser was killed), wrapping the
            error the dead browser raised.
    """
    fired = threading.Event()

    def expire() -> None:
        fired.set()
        tracker.kill()

    timer = threading.Timer(timeout_s, expire)
    timer.daemon = True
    timer.start()
    try:
        return call()
    except Exception as error:
        timer.cancel()
        timer.join()
        if fired.is_set():
            raise BrowserHungError(f"no answer from the browser within {timeout_s:g} s; it was killed") from error
        raise
    finally:
        timer.cancel()
        timer.join()
