"""The text environments are registered through the ``dg.envs`` entry points and made lazily."""

from __future__ import annotations

import subprocess
import sys

from dg_core import list_envs, make_env
from dg_envs.alfworld import AlfWorldEnv
from dg_envs.textworld import TextWorldEnv


def test_entry_points_name_the_text_envs() -> None:
    assert {"textworld", "alfworld", "webshop"} <= set(list_envs())
    assert isinstance(make_env("textworld", max_steps=5), TextWorldEnv)
    assert isinstance(make_env("alfworld", max_steps=5, expert=False), AlfWorldEnv)


def test_importing_dg_envs_loads_no_engine() -> None:
    code = (
        "import sys, dg_envs, dg_envs.textworld, dg_envs.alfworld, dg_envs.webshop; "
        "print(sorted(m for m in ('textworld', 'alfworld', 'jericho', 'web_agent_site') if m in sys.modules))"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"
