"""Tasks for :class:`~dg_envs.web.WebArenaEnv`: WebArena's own configs, and open-ended tasks on any site.

A task's ``config`` holds either

- ``webarena_task_id`` (an int): one of WebArena's 812 tasks, run and judged by ``browsergym-webarena``
  against the user's WebArena sites, whose URLs come from ``WA_SHOPPING``, ``WA_SHOPPING_ADMIN``,
  ``WA_REDDIT``, ``WA_GITLAB``, ``WA_WIKIPEDIA``, ``WA_MAP`` and ``WA_HOMEPAGE`` (or ``site_urls=``); or
- ``start_url`` and ``success``: an open-ended task on any site, won when every ``success`` check
  holds: ``url_contains``, ``page_contains`` (text of the page) and ``answer_contains`` (the agent's
  ``send_msg_to_user`` message; sending one ends the episode).

Both carry ``allowed_hosts``: ``host:port`` entries (or ``host``, meaning ports 80 and 443) the agent
may reach; a task without them reaches its start URL's ``host:port`` only.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dg_core import ConfigError, Task, require
from dg_envs.web._allowlist import URLRefusedError, parse_web_url

__all__ = ["WEBARENA_SITES", "demo_shop_tasks", "site_task", "webarena_site_urls", "webarena_tasks"]

WEBARENA_SITES = ("shopping", "shopping_admin", "reddit", "gitlab", "wikipedia", "map", "homepage")
"""Site names used in WebArena configs (``__SHOPPING__`` placeholders, ``WA_SHOPPING`` variables)."""

SUCCESS_CHECKS = ("url_contains", "page_contains", "answer_contains")


def _host(url: str) -> str:
    """``host:port`` of an http(s) URL, read as Chromium reads it (the default port written out)."""
    try:
        origin = parse_web_url(url)
    except URLRefusedError as error:
        raise ConfigError(f"expected an http(s) URL, got {url!r}: {error}") from None
    if origin is None:
        raise ConfigError(f"expected an http(s) URL, got {url!r}")
    return origin.authority


def site_task(
    task_id: str,
    instruction: str,
    start_url: str,
    success: Mapping[str, str],
    *,
    allowed_hosts: tuple[str, ...] | None = None,
    seed: int | None = None,
) -> Task:
    """An open-ended web task on any site, judged by ``success`` checks (see the module docstring)."""
    unknown = sorted(set(success) - set(SUCCESS_CHECKS))
    if unknown or not success:
        raise ConfigError(f"success checks must be a non-empty subset of {list(SUCCESS_CHECKS)}; got {sorted(success)}")
    hosts = list(allowed_hosts) if allowed_hosts is not None else [_host(start_url)]
    return Task(
        id=task_id,
        env_id="webarena",
        instruction=instruction,
        seed=seed,
        config={"start_url": start_url, "success": dict(success), "allowed_hosts": hosts},
    )


def demo_shop_tasks(base_url: str) -> list[Task]:
    """Tasks on :class:`~dg_envs.web.DemoShop` served at ``base_url``: search, list, detail and form."""
    base = base_url.rstrip("/")
    return [
        site_task(
            "shop-price-blue-kettle",
            "What does the Blue Kettle cost? Tell me the price.",
            base + "/",
            {"answer_contains": "24.99"},
        ),
        site_task(
            "shop-buy-red-mug",
            "Buy two Red Mugs.",
            base + "/",
            {"page_contains": "Order confirmed: Red Mug x 2"},
        ),
        site_task(
            "shop-contact-billing",
            "Send the shop a message about Billing, signed with the name Ada.",
            base + "/contact",
            {"page_contains": "Thanks, Ada! Ticket", "url_contains": "/contact"},
        ),
        site_task(
            "shop-open-oak-tray",
            "Open the page of the Oak Tray.",
            base + "/products",
            {"url_contains": "/product/oak-tray"},
        ),
    ]


def webarena_site_urls(overrides: Mapping[str, str] | None = None) -> dict[str, str]:
    """Base URL of each WebArena site from ``WA_<SITE>`` variables, then ``overrides``; unset sites omitted."""
    urls = {site: os.environ[f"WA_{site.upper()}"] for site in WEBARENA_SITES if os.environ.get(f"WA_{site.upper()}")}
    urls.update(overrides or {})
    return urls


def webarena_tasks(
    config_file: str | Path | None = None,
    *,
    site_urls: Mapping[str, str] | None = None,
    task_ids: list[int] | None = None,
) -> list[Task]:
    """WebArena's tasks as dg tasks.

    Args:
        config_file: WebArena's ``test.raw.json`` (or a file of the same format); by default the copy
            that ``browsergym-webarena`` installs (``pip install "dg-envs[webarena]"``).
        site_urls: Site base URLs overriding the ``WA_*`` variables.
        task_ids: Keep only these ids.

    Raises:
        ConfigError: A task needs a site whose URL is not configured.
    """
    if config_file is None:
        import importlib.resources

        require("webarena", distribution="dg-envs", extra="webarena", purpose="WebArena task configs")
        raw_text = importlib.resources.files("webarena").joinpath("test.raw.json").read_text()
    else:
        raw_text = Path(config_file).read_text()
    records: list[dict[str, Any]] = json.loads(raw_text)
    urls = webarena_site_urls(site_urls)
    wanted = set(task_ids) if task_ids is not None else None
    tasks = []
    for record in records:
        task_id = int(record["task_id"])
        if wanted is not None and task_id not in wanted:
            continue
        sites = [str(site) for site in record.get("sites", [])]
        missing = [site for site in sites if site not in urls]
        if missing:
            variables = ", ".join(f"WA_{site.upper()}" for site in missing)
            raise ConfigError(f"WebArena task {task_id} needs the URL of {', '.join(missing)}: set {variables}")
        start_url = str(record["start_url"])
        for site, url in urls.items():
            start_url = start_url.replace(f"__{site.upper()}__", url.rstrip("/"))
        hosts = sorted({_host(urls[site]) for site in sites} | {_host(start_url.split(" |AND| ")[0])})
        tasks.append(
            Task(
                id=f"webarena.{task_id}",
                env_id="webarena",
                instruction=str(record["intent"]),
                config={"webarena_task_id": task_id, "start_url": start_url, "allowed_hosts": hosts},
                metadata={"sites": sites, "intent_template_id": record.get("intent_template_id")},
            )
        )
    return tasks
