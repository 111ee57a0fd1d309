"""The shared part of experience models that wrap another one (exact matches first, the outcome head)."""

from __future__ import annotations

from typing import Any

from dg_core import ExperienceModel


class WrappedModel:
    """An experience model around ``model``: its counters and prompt options are the wrapped model's, and
    :meth:`wrapped_with` gives the wrapped model under other options (what a subclass's ``with_options`` wraps
    again)."""

    def __init__(self, model: ExperienceModel) -> None:
        self.model = model

    @property
    def stats(self) -> Any:
        """The wrapped model's counters (of the queries it answered)."""
        return getattr(self.model, "stats", None)

    @property
    def options(self) -> Any:
        """The wrapped model's prompt options."""
        return getattr(self.model, "options", None)

    def wrapped_with(self, options: Any) -> Any:
        """The wrapped model under ``options`` (the audit's ablations); itself when it takes no options."""
        variant = getattr(self.model, "with_options", None)
        return variant(options) if variant is not None else self.model
