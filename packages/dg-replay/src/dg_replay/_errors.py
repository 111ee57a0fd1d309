"""Errors dg-replay raises on purpose; each names the file or field at fault."""

from __future__ import annotations

from pathlib import Path

from dg_core import DGError

__all__ = ["ReplayError", "ReplayFileError", "ReplayMismatchError", "ReplayReadOnlyError"]


class ReplayError(DGError):
    """Base class of every error dg-replay raises on purpose."""


class ReplayFileError(ReplayError, ValueError):
    """A buffer file that is missing, corrupted or not what it claims to be."""

    def __init__(self, path: str | Path, message: str) -> None:
        self.path = Path(path)
        self.reason = message
        super().__init__(f"{self.path}: {message}")


class ReplayMismatchError(ReplayFileError):
    """Files (or a file and the encoder / index settings) that do not belong together."""


class ReplayReadOnlyError(ReplayError, RuntimeError):
    """A write to a buffer, storage or index that was opened read-only."""
