"""Test helpers that ship with dg-core: deterministic fakes and the Env conformance suite.

The fakes need nothing beyond dg-core. The conformance suite needs pytest
(``pip install "dg-core[testing]"``) and is imported on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dg_core.testing._fakes import (
    FAILURE_TEXT,
    ITEMS,
    ScriptedEnv,
    ScriptedExperienceModel,
    ScriptedPolicy,
    ScriptedTaskGenerator,
    scripted_task,
)

if TYPE_CHECKING:
    from dg_core.testing._conformance import EnvConformance

__all__ = [
    "FAILURE_TEXT",
    "ITEMS",
    "EnvConformance",
    "ScriptedEnv",
    "ScriptedExperienceModel",
    "ScriptedPolicy",
    "ScriptedTaskGenerator",
    "scripted_task",
]


def __getattr__(name: str) -> Any:
    if name == "EnvConformance":
        from dg_core._imports import require

        require("pytest", distribution="dg-core", extra="testing", purpose="The Env conformance suite")
        from dg_core.testing._conformance import EnvConformance

        return EnvConformance
    raise AttributeError(f"module 'dg_core.testing' has no attribute {name!r}")
