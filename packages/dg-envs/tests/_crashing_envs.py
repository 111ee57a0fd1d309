"""Environments that crash on purpose, importable by the collection worker processes."""

from __future__ import annotations

import os

from dg_core import Action, StepResult
from dg_core.testing import ScriptedEnv

CRASH_ITEM = "red key"
"""Tasks whose goal is this item crash the environment."""


class RaisingEnv(ScriptedEnv):
    """Raises from its first step in tasks asking for :data:`CRASH_ITEM`."""

    def _step(self, action: Action) -> StepResult:
        if self.task.config.get("goal_item") == CRASH_ITEM:
            raise RuntimeError("simulated engine failure")
        return super()._step(action)


class DyingEnv(ScriptedEnv):
    """Kills its whole process on its first step in tasks asking for :data:`CRASH_ITEM` (a segfault, say)."""

    def _step(self, action: Action) -> StepResult:
        if self.task.config.get("goal_item") == CRASH_ITEM:
            os._exit(17)
        return super()._step(action)


def make_raising_env() -> RaisingEnv:
    return RaisingEnv(max_steps=20)


def make_dying_env() -> DyingEnv:
    return DyingEnv(max_steps=20)
