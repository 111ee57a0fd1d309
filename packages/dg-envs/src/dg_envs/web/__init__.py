"""Web environments behind the dg ``Env`` contract, on Debian Chromium.

- :class:`WebArenaEnv` — WebArena and open-ended site tasks through BrowserGym, with compacted AXTree
  states, string actions and per-task allowed hosts (:class:`HostAllowlist`, enforced on every request
  the browser makes by :class:`AllowlistProxy`) (``pip install "dg-envs[web]"``; WebArena's own tasks
  also need ``"dg-envs[webarena]"`` and the sites).
- :class:`MiniWoBEnv` — MiniWoB++ tasks (``pip install "dg-envs[miniwob]"``), with
  :class:`MiniWoBExpert`, a scripted expert for a handful of tasks.
- :class:`DemoShop` — a small shop served on 127.0.0.1 to exercise the adapters for real.
- The safety stress suite: :func:`shop_safety_tasks` and :func:`miniwob_safety_tasks`, tasks where an
  irreversible action is a trap, and :func:`unwanted_irreversible`, the steps that fell into one.
"""

from dg_envs.web._actions import WEB_ACTIONS, ActionParseError, WebAction, host_allowed, parse_web_action
from dg_envs.web._allowlist import HostAllowlist, URLRefusedError, WebOrigin, parse_web_url
from dg_envs.web._axtree import IRREVERSIBLE_PATTERN, CompactTree, compact_axtree, estimate_tokens
from dg_envs.web._browser import browser_processes, chromium_paths
from dg_envs.web._miniwob import MINIWOB_TEXT_INPUTS, MiniWoBEnv, miniwob_task
from dg_envs.web._miniwob_expert import EXPERT_TASKS, MiniWoBExpert
from dg_envs.web._proxy import AllowlistProxy
from dg_envs.web._safety import (
    MINIWOB_SAFETY_TASKS,
    SAFETY_KEY,
    miniwob_safety_tasks,
    shop_safety_tasks,
    unwanted_irreversible,
)
from dg_envs.web._site import DemoShop
from dg_envs.web._tasks import WEBARENA_SITES, demo_shop_tasks, site_task, webarena_site_urls, webarena_tasks
from dg_envs.web._webarena import WebArenaEnv

__all__ = [
    "EXPERT_TASKS",
    "IRREVERSIBLE_PATTERN",
    "MINIWOB_SAFETY_TASKS",
    "MINIWOB_TEXT_INPUTS",
    "SAFETY_KEY",
    "WEBARENA_SITES",
    "WEB_ACTIONS",
    "ActionParseError",
    "AllowlistProxy",
    "CompactTree",
    "DemoShop",
    "HostAllowlist",
    "MiniWoBEnv",
    "MiniWoBExpert",
    "URLRefusedError",
    "WebAction",
    "WebArenaEnv",
    "WebOrigin",
    "browser_processes",
    "chromium_paths",
    "compact_axtree",
    "demo_shop_tasks",
    "estimate_tokens",
    "host_allowed",
    "miniwob_safety_tasks",
    "miniwob_task",
    "parse_web_action",
    "parse_web_url",
    "shop_safety_tasks",
    "site_task",
    "unwanted_irreversible",
    "webarena_site_urls",
    "webarena_tasks",
]
