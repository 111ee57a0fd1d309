"""The BrowserGym task behind open-ended site tasks (imported only once browsergym-core is installed)."""

from __future__ import annotations

from typing import Any

import playwright.sync_api
from browsergym.core.task import AbstractBrowserTask

__all__ = ["SiteTask"]


class SiteTask(AbstractBrowserTask):  # type: ignore[misc]  # browsergym is untyped
    """Open ``start_url`` and judge the episode with the ``success`` checks of :func:`~dg_envs.web.site_task`.

    Args:
        seed: BrowserGym's task seed (the site decides what it means).
        start_url: First page.
        goal: The instruction, shown in BrowserGym's chat.
        success: ``url_contains`` / ``page_contains`` / ``answer_contains`` checks, all required.
        slow_mo_ms: Playwright's pause after each browser operation; ``None`` keeps BrowserGym's default.
    """

    @classmethod
    def get_task_id(cls) -> str:
        """BrowserGym's name for the task kind."""
        return "dg-site"

    def __init__(
        self, seed: int, start_url: str, goal: str, success: dict[str, str], slow_mo_ms: int | None = None
    ) -> None:
        super().__init__(seed)
        if slow_mo_ms is not None:
            self.slow_mo = slow_mo_ms
        self.start_url = start_url
        self.goal = goal
        self.success = success

    def setup(self, page: playwright.sync_api.Page) -> tuple[str, dict[str, Any]]:
        """Open the start page."""
        page.goto(self.start_url, timeout=10_000)
        return self.goal, {}

    def teardown(self) -> None:
        """Nothing to undo: the site keeps its own records."""

    def validate(
        self, page: playwright.sync_api.Page, chat_messages: list[dict[str, Any]]
    ) -> tuple[float, bool, str, dict[str, Any]]:
        """Reward 1 and done once every check holds; an answer without a match ends the episode as a failure."""
        # The first assistant message is BrowserGym's greeting; later ones are the agent's.
        answers = [m["message"] for m in chat_messages if m["role"] == "assistant"][1:]
        checks: dict[str, bool] = {}
        if "url_contains" in self.success:
            checks["url_contains"] = self.success["url_contains"] in page.url
        if "page_contains" in self.success:
            text = page.evaluate("() => document.body ? document.body.innerText : ''")
            checks["page_contains"] = self.success["page_contains"] in " ".join(str(text).split())
        if "answer_contains" in self.success:
            expected = self.success["answer_contains"].lower()
            checks["answer_contains"] = bool(answers) and expected in answers[-1].lower()
        won = all(checks.values())
        done = won or ("answer_contains" in self.success and bool(answers))
        return (1.0 if won else 0.0), done, "", {"checks": checks}
