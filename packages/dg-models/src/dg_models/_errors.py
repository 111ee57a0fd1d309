"""The one error this package raises on purpose."""

from __future__ import annotations

from dg_core import DGError

__all__ = ["ModelLoadError"]


class ModelLoadError(DGError, RuntimeError):
    """A model source that cannot be loaded: missing, corrupt, truncated, unsafe or unreachable.

    The message names the source and, where one exists, the command that fixes it.
    """
