"""Deterministic data splits from hashes, shared by the generated suites."""

from __future__ import annotations

import hashlib

from dg_core import Split

SplitName = Split
"""Name of a data split (dg-core's ``Split``)."""


def unit_interval(*parts: object) -> float:
    """A number in [0, 1) fixed by ``parts`` (the same on every machine and run)."""
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_at(position: float, fractions: tuple[float, float, float]) -> SplitName:
    """The split a position in [0, 1) falls in, given the train / validation / test shares."""
    if position < fractions[0]:
        return "train"
    return "validation" if position < fractions[0] + fractions[1] else "test"
