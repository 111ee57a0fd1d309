"""Lazy imports of optional dependencies that fail with the exact install command."""

from __future__ import annotations

import importlib
from types import ModuleType

from dg_core._errors import MissingExtraError


def require(module: str, *, distribution: str, extra: str, purpose: str) -> ModuleType:
    """Import ``module`` or raise :class:`MissingExtraError` naming ``pip install "distribution[extra]"``.

    Args:
        module: Import name of the optional dependency (``"pyarrow"``).
        distribution: The dg distribution whose extra provides it (``"dg-core"``).
        extra: Name of that extra (``"parquet"``).
        purpose: What needs it, for the message (``"Parquet trajectory files"``).
    """
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise MissingExtraError(module, distribution, extra, purpose) from error
