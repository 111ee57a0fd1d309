"""Test helpers that ship with dg-rl: the conformance suite every :class:`~dg_rl.RolloutSampler` passes.

It needs pytest (``pip install "dg-rl[testing]"``) and is imported on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dg_rl.testing._conformance import RolloutSamplerConformance

__all__ = ["RolloutSamplerConformance"]


def __getattr__(name: str) -> Any:
    if name == "RolloutSamplerConformance":
        from dg_core import require

        require("pytest", distribution="dg-rl", extra="testing", purpose="The rollout-sampler conformance suite")
        from dg_rl.testing._conformance import RolloutSamplerConformance

        return RolloutSamplerConformance
    raise AttributeError(f"module 'dg_rl.testing' has no attribute {name!r}")
