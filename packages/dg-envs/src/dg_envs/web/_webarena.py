"""WebArena-style web tasks through BrowserGym on Debian Chromium: ``WebArenaEnv``.

Observations are compacted AXTrees (:func:`~dg_envs.web.compact_axtree`); actions are BrowserGym
strings (``click("12")``, ``fill("7", "text")``, ``goto("http://...")``, ``send_msg_to_user("...")``).
The action space is free text, so ``State.available_actions`` is ``None``; the element ids an action
may target are in the state text, and the ids of irreversible controls are tagged as
``click("<id>")`` in ``State.irreversible_actions``. With ``action_set="clicks"`` the action space is
finite instead: ``click("<id>")`` on every control shown (buttons, links, fields...), for policies that choose
among the available actions; tasks that need typing or an answer cannot be done in that mode.

Safety and robustness:

- an unparseable action, or one naming an element that is not on the page, is answered as an invalid
  action (reward 0, unchanged state) without touching the browser;
- the agent reaches only the task's ``allowed_hosts`` (by default the ``host:port`` of its start URL):
  ``goto`` is pre-checked by :class:`~dg_envs.web.HostAllowlist` (only ``http(s)`` and ``about:blank``;
  ``file:``, ``data:``, ``javascript:``... refused) and the browser's every request (navigations,
  redirects, subresources, popups, WebSockets) passes :class:`~dg_envs.web.AllowlistProxy`, which refuses
  other hosts before anything leaves (WebRTC is kept off direct UDP by a Chromium flag); a refused
  ``goto`` or a step that ends on a refused page ends the episode as a failure
  (``info["left_allowed_hosts"]``) with the state before the step (nothing of the refused page gets
  into it), and refused requests are listed in ``info["blocked_requests"]``;
- a browser that crashes, or does not answer within ``step_timeout_s`` (then it is killed), ends the
  episode as a failure; the next ``reset`` starts a fresh browser, and ``close`` leaves no process.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from typing import Any, Literal, TypeVar

from dg_core import Action as DGAction
from dg_core import ConfigError, Env, EnvError, StepResult, Task, require
from dg_core import State as DGState
from dg_envs.web._actions import ActionParseError, parse_web_action
from dg_envs.web._allowlist import HostAllowlist
from dg_envs.web._axtree import compact_axtree, estimate_tokens
from dg_envs.web._browser import (
    ProcessTracker,
    chromium_paths,
    chromium_with_flags,
    link_playwright_chromium,
    playwright_browsers_dir,
    run_watched,
)
from dg_envs.web._proxy import AllowlistProxy

__all__ = ["WebArenaEnv"]

_T = TypeVar("_T")
_playwright_thread: int | None = None  # BrowserGym's one Playwright instance works from one thread only
_GUARD_FLAGS = ("--webrtc-ip-handling-policy=disable_non_proxied_udp",)
_INSTALL = {"distribution": "dg-envs", "extra": "web", "purpose": "the WebArena / BrowserGym adapter"}


class WebArenaEnv(Env):
    """WebArena and open-ended site tasks through BrowserGym (see the module docstring).

    Args:
        max_steps: Step limit per episode.
        token_budget: Token budget of the compacted page in the state text.
        step_timeout_s: A step taking longer is treated as a hung browser (which is then killed).
        reset_timeout_s: The same for starting a browser and an episode.
        pre_observation_delay_s: Pause after each action before reading the page (BrowserGym's default 0.5).
        slow_mo_ms: Playwright's pause after every browser operation; ``None`` keeps the task's (BrowserGym's
            tasks use 1000 ms, which is most of a step's time; 0 suits pages without animations).
        headless: Run Chromium without a window.
        action_set: ``"free"`` (any action string; ``available_actions`` is ``None``) or ``"clicks"`` (the
            available actions are ``click("<id>")`` on each control shown).
    """

    env_id = "webarena"

    def __init__(
        self,
        *,
        max_steps: int | None = 30,
        token_budget: int = 2000,
        step_timeout_s: float = 60.0,
        reset_timeout_s: float = 120.0,
        pre_observation_delay_s: float = 0.5,
        slow_mo_ms: int | None = None,
        headless: bool = True,
        action_set: Literal["free", "clicks"] = "free",
    ) -> None:
        super().__init__(max_steps=max_steps)
        if token_budget < 50:
            raise ConfigError(f"token_budget must be at least 50, got {token_budget}")
        if action_set not in ("free", "clicks"):
            raise ConfigError(f"action_set must be 'free' or 'clicks', got {action_set!r}")
        self.action_set = action_set
        if min(step_timeout_s, reset_timeout_s) <= 0:
            raise ConfigError(f"timeouts must be positive, got {step_timeout_s} and {reset_timeout_s}")
        require("browsergym.core", **_INSTALL)
        self.token_budget = token_budget
        self.step_timeout_s = step_timeout_s
        self.reset_timeout_s = reset_timeout_s
        self.pre_observation_delay_s = pre_observation_delay_s
        if slow_mo_ms is not None and slow_mo_ms < 0:
            raise ConfigError(f"slow_mo_ms must be >= 0 or None, got {slow_mo_ms}")
        self.slow_mo_ms = slow_mo_ms
        self.headless = headless
        self.browser_restarts = 0
        self._chromium, _ = chromium_paths()
        # WebRTC may send UDP (STUN) straight out, around any proxy; this keeps it to the proxied path.
        self._guarded_chromium = chromium_with_flags(_GUARD_FLAGS)
        self._tracker = ProcessTracker()
        self._browser_env: Any = None
        self._allowlist: HostAllowlist | None = None
        self._proxy: AllowlistProxy | None = None
        self._browser_proxy: AllowlistProxy | None = None
        self._known_ids: set[str] = set()

    @property
    def browser_pids(self) -> list[int]:
        """Main processes of the running browsers (the page's and the chat's)."""
        return self._tracker.main_pids()

    # -- browser lifecycle --------------------------------------------------------------------
    def _watched(self, call: Callable[[], _T], timeout_s: float | None = None) -> _T:
        return run_watched(self._tracker, call, timeout_s or self.step_timeout_s)

    def _stop_browser(self) -> None:
        browser_env, self._browser_env = self._browser_env, None
        if browser_env is not None:
            with contextlib.suppress(Exception):
                self._watched(browser_env.close, self.reset_timeout_s)
        self._tracker.kill()

    def _make_browser_env(self, task: Task) -> Any:
        from browsergym.core.action.functions import check, uncheck
        from browsergym.core.action.highlevel import HighLevelActionSet
        from browsergym.core.env import BrowserEnv

        config = task.config
        common: dict[str, Any] = {
            "headless": self.headless,
            "wait_for_user_message": False,
            "pre_observation_delay": self.pre_observation_delay_s,
            # Our parser already admitted exactly one call; BrowserGym maps it to its own functions.
            "action_mapping": HighLevelActionSet(
                subsets=["chat", "infeas", "bid", "nav", "custom"],
                custom_actions=[check, uncheck],
                multiaction=False,
                strict=True,
                demo_mode="off",  # no cursor animations: they add about a second per action
            ).to_python_code,
            # Every request goes through an allowlist proxy (Playwright adds --proxy-bypass-list=<-loopback>):
            # the pages' through the context's proxy, whose refusals the steps report; Chromium's own
            # background traffic (component updates, Google accounts) through the browser's, quietly.
            "pw_chromium_kwargs": {
                "executable_path": self._guarded_chromium,
                "chromium_sandbox": False,
                "proxy": {"server": self._guard_proxies()[1].url},
            },
            "pw_context_kwargs": {"proxy": {"server": self._guard_proxies()[0].url}},
        }
        if "webarena_task_id" in config:
            webarena = require("browsergym.webarena.task", distribution="dg-envs", extra="webarena", purpose="WebArena")
            task_kwargs: dict[str, Any] = {"task_id": int(config["webarena_task_id"])}
            return BrowserEnv(
                task_entrypoint=webarena.GenericWebArenaTask,
                task_kwargs=task_kwargs,
                viewport={"width": 1280, "height": 720},
                timeout=10_000,
                slow_mo=self.slow_mo_ms,
                **common,
            )
        from dg_envs.web._site_task import SiteTask

        site_kwargs = {
            "start_url": config["start_url"],
            "goal": task.instruction,
            "success": config["success"],
            "slow_mo_ms": self.slow_mo_ms,
        }
        return BrowserEnv(task_entrypoint=SiteTask, task_kwargs=site_kwargs, **common)

    def _guard_proxies(self) -> tuple[AllowlistProxy, AllowlistProxy]:
        """The pages' proxy and the browser's, started on first use, both on the current allowlist."""
        if self._allowlist is None:
            raise EnvError("no allowlist: reset the env with a task first")
        if self._proxy is None or self._browser_proxy is None:
            self._stop_proxies()
            self._proxy = AllowlistProxy(self._allowlist).start()
            self._browser_proxy = AllowlistProxy(self._allowlist).start()
        self._proxy.allowlist = self._browser_proxy.allowlist = self._allowlist
        self._browser_proxy.take_blocked()  # Chromium's own requests: refused, not reported
        return self._proxy, self._browser_proxy

    def _stop_proxies(self) -> None:
        for proxy in (self._proxy, self._browser_proxy):
            if proxy is not None:
                proxy.stop()
        self._proxy = self._browser_proxy = None

    @staticmethod
    def _check_thread() -> None:
        global _playwright_thread
        current = threading.get_ident()
        if _playwright_thread is None:
            _playwright_thread = current
        elif _playwright_thread != current:
            raise EnvError(
                "BrowserGym drives every browser of a process through one Playwright instance, bound to the thread "
                "that started it; step WebArenaEnv from that thread (EnvPool(workers=1)) or use one process per env"
            )

    def _start(self, task: Task, seed: int | None) -> dict[str, Any]:
        from browsergym.core import _get_global_playwright

        playwright_browsers_dir()  # before Playwright's driver starts
        self._stop_browser()
        self._browser_env = self._make_browser_env(task)
        with self._tracker:
            link_playwright_chromium(_get_global_playwright().chromium.executable_path)
            observation, _ = self._watched(lambda: self._browser_env.reset(seed=seed), self.reset_timeout_s)
        return dict(observation)

    # -- Env hooks ------------------------------------------------------------------------------
    def _reset(self, task: Task, seed: int | None) -> DGState:
        config = task.config
        if "webarena_task_id" not in config and not {"start_url", "success"} <= set(config):
            raise ConfigError(f"task {task.id!r}: config needs 'webarena_task_id', or 'start_url' and 'success'")
        start_urls = str(config.get("start_url", "")).split(" |AND| ")
        try:  # no allowed_hosts: the start URL's host:port only
            self._allowlist = HostAllowlist.for_task(config.get("allowed_hosts"), start_urls)
        except ConfigError as error:
            raise ConfigError(f"task {task.id!r}: {error}") from None
        self._guard_proxies()[0].take_blocked()  # forget what an earlier episode left
        seed = seed if seed is not None else task.seed
        self._check_thread()
        for attempt in range(2):  # one retry: a browser can fail to start on a loaded machine
            try:
                observation = self._start(task, seed)
                return self._state(observation, self._guard_proxies()[0].take_blocked())
            except Exception as error:
                self._stop_browser()
                self.browser_restarts += 1
                if attempt == 1:
                    raise EnvError(f"could not start the browser for task {task.id!r}: {error}") from error
        raise AssertionError("unreachable")

    def _step(self, action: DGAction) -> StepResult:
        self._check_thread()
        state = self.state
        try:
            parsed = parse_web_action(action.text)
        except ActionParseError as error:
            return self._invalid(state, f"Invalid action: {error}.")
        if parsed.bid is not None and parsed.bid not in self._known_ids:
            return self._invalid(state, f"Invalid action: no element with id {parsed.bid!r} on this page.")
        allowlist = self._allowlist
        if allowlist is None or self._proxy is None:  # reset sets both
            return self._crashed(state, "no allowlist proxy is running")
        if parsed.url is not None and (reason := allowlist.refusal(parsed.url)) is not None:
            return self._left_allowed_hosts(state, parsed.url, reason, [])
        if self._browser_env is None:
            return self._crashed(state, "the browser is not running")
        try:
            observation, reward, terminated, _, _ = self._watched(lambda: self._browser_env.step(parsed.render()))
        except Exception as error:  # the browser died or hung (and was killed)
            return self._crashed(state, f"{type(error).__name__}: {error}")
        observation = dict(observation)
        blocked = self._proxy.take_blocked()
        for url in [str(observation.get("url", "")), *map(str, observation.get("open_pages_urls", []))]:
            if (reason := allowlist.refusal(url)) is not None:
                # The state before the step: nothing of a refused page (or the proxy's refusal) gets into it.
                return self._left_allowed_hosts(state, url, reason, blocked)
        won = float(reward) > 0
        return StepResult(
            state=self._state(observation, blocked),
            reward=1.0 if won else 0.0,
            done=bool(terminated),
            success=won if terminated else None,
            info={"blocked_requests": blocked} if blocked else {},
        )

    def _close(self) -> None:
        self._stop_browser()
        self._stop_proxies()

    # -- results ------------------------------------------------------------------------------
    @staticmethod
    def _invalid(state: DGState, feedback: str) -> StepResult:
        return StepResult(state=state, reward=0.0, info={"invalid_action": True, "feedback": feedback})

    @staticmethod
    def _left_allowed_hosts(state: DGState, url: str, reason: str, blocked: list[str]) -> StepResult:
        text = f"{state.text}\nStopped: {url[:300]} may not be opened: {reason}."
        ended = DGState(text=text, info={**state.info, "left_allowed_hosts": url})
        info: dict[str, Any] = {"left_allowed_hosts": url, "refused_because": reason}
        if blocked:
            info["blocked_requests"] = blocked
        return StepResult(state=ended, reward=0.0, done=True, success=False, info=info)

    def _crashed(self, state: DGState, reason: str) -> StepResult:
        self._stop_browser()
        self.browser_restarts += 1
        ended = DGState(text=f"{state.text}\nThe browser crashed; the episode ended.", info=state.info)
        return StepResult(state=ended, reward=0.0, done=True, success=False, info={"browser_crashed": reason})

    def _state(self, observation: dict[str, Any], blocked: list[str] | None = None) -> DGState:
        from browsergym.utils.obs import flatten_axtree_to_str

        tree = compact_axtree(
            observation["axtree_object"], observation.get("extra_element_properties"), token_budget=self.token_budget
        )
        self._known_ids = set(tree.element_ids)
        url = str(observation.get("url", ""))
        titles = [str(title) for title in observation.get("open_pages_titles", [])]
        active = int(observation.get("active_page_index", [0])[0]) if titles else 0
        header = [f"Page: {titles[active] if titles else ''} ({url})"]
        if len(titles) > 1:
            header.append("Tabs: " + "; ".join(f"{i}: {title}" for i, title in enumerate(titles)))
        error = str(observation.get("last_action_error", "")).strip()
        if error:
            header.append(f"Last action failed: {error.splitlines()[0][:300]}")
        text = "\n".join([*header, tree.text])
        raw_tokens = estimate_tokens(flatten_axtree_to_str(observation["axtree_object"]))
        clicks = tuple(f'click("{bid}")' for bid in tree.actionable_ids) if self.action_set == "clicks" else None
        return DGState(
            text=text,
            available_actions=clicks,
            irreversible_actions=tuple(f'click("{bid}")' for bid in tree.irreversible_ids),
            info={
                "url": url,
                "state_tokens": estimate_tokens(text),
                "axtree_tokens": tree.tokens,
                "raw_axtree_tokens": raw_tokens,
                "lines_cut": tree.dropped_lines,
                **({"blocked_requests": list(blocked)} if blocked else {}),
            },
        )
