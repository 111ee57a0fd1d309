"""Fixtures shared by the text-environment tests: real TextWorld games and ALFWorld problems, built once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from dg_core import Task


@pytest.fixture(scope="session")
def textworld_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A TextWorld game cache for the whole session."""
    return tmp_path_factory.mktemp("textworld-cache")


@pytest.fixture(scope="session")
def textworld_custom_tasks(textworld_cache: Path) -> list[Task]:
    """Three small custom-quest games (all splits)."""
    from dg_envs.textworld import textworld_tasks

    return textworld_tasks(
        "custom",
        count=3,
        seed=11,
        settings={"world_size": 3, "nb_objects": 5, "quest_length": 3},
        cache_dir=textworld_cache,
    )


@pytest.fixture(scope="session")
def alfworld_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An ALFWorld generated-game cache for the whole session."""
    return tmp_path_factory.mktemp("alfworld-cache")
