from __future__ import annotations

import re
from importlib.metadata import requires, version

import dg_expmodel

DECLARED_SIBLINGS = ["dg-core", "dg-models", "dg-replay"]


def test_version_is_in_lockstep_with_dg_core() -> None:
    import dg_core

    assert dg_expmodel.__version__ == version("dg-expmodel") == dg_core.__version__


def test_siblings_are_pinned_to_the_same_version() -> None:
    pins = {}
    for requirement in requires("dg-expmodel") or []:
        match = re.match(r"^(dg-[a-z]+)==([0-9.]+)$", requirement.split(";")[0].strip())
        if match:
            pins[match.group(1)] = match.group(2)
    assert sorted(pins) == DECLARED_SIBLINGS
    assert set(pins.values()) == {dg_expmodel.__version__}
