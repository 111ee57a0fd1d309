from __future__ import annotations

import re
from importlib.metadata import requires, version

import dg_models

DECLARED_SIBLINGS = ["dg-core"]


def test_version_is_in_lockstep_with_dg_core() -> None:
    import dg_core

    assert dg_models.__version__ == version("dg-models") == dg_core.__version__


def test_siblings_are_pinned_to_the_same_version() -> None:
    pins = {}
    for requirement in requires("dg-models") or []:
        match = re.match(r"^(dg-[a-z]+)==([0-9.]+)$", requirement.split(";")[0].strip())
        if match:
            pins[match.group(1)] = match.group(2)
    assert sorted(pins) == DECLARED_SIBLINGS
    assert set(pins.values()) == {dg_models.__version__}
