"""Metadata filters for retrieval and sampling, compiled to a SQL condition."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from dg_core import ConfigError, Source

__all__ = ["ReplayFilter", "as_filter"]

FilterValue = str | tuple[str, ...] | None


class ReplayFilter(BaseModel):
    """Which transitions qualify: each field is one value, a tuple of allowed values, or ``None`` for any."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    env_id: FilterValue = None
    """Environment(s) the transition comes from."""
    source: FilterValue = None
    """``"real"`` and / or ``"synthetic"``."""
    task_id: FilterValue = None
    """Task id(s)."""
    split: FilterValue = None
    """Split(s) of the task (``"train"``, ``"validation"``, ``"test"``)."""

    @field_validator("env_id", "source", "task_id", "split", mode="before")
    @classmethod
    def _listify(cls, value: Any) -> Any:
        if isinstance(value, list | set | frozenset):
            return tuple(sorted(str(item) for item in value))
        return value

    @field_validator("source")
    @classmethod
    def _known_source(cls, value: FilterValue) -> FilterValue:
        allowed = {source.value for source in Source}
        for item in (value,) if isinstance(value, str) else value or ():
            if item not in allowed:
                raise ValueError(f"unknown source {item!r}; allowed: {sorted(allowed)}")
        return value

    @property
    def is_empty(self) -> bool:
        """Whether every transition qualifies."""
        return all(getattr(self, name) is None for name in type(self).model_fields)

    def to_sql(self) -> tuple[str, list[str]]:
        """A ``WHERE`` condition over the ``transitions`` table and its parameters (``"1"`` when empty)."""
        clauses: list[str] = []
        params: list[str] = []
        for column in ("env_id", "source", "task_id", "split"):
            value = getattr(self, column)
            if value is None:
                continue
            values = (value,) if isinstance(value, str) else value
            if not values:
                clauses.append("0")
                continue
            clauses.append(f"{column} IN ({','.join('?' * len(values))})")
            params.extend(values)
        return (" AND ".join(clauses) or "1"), params


def as_filter(filters: ReplayFilter | Mapping[str, Any] | None) -> ReplayFilter | None:
    """Accept a :class:`ReplayFilter`, a mapping of its fields, or ``None``; an empty filter becomes ``None``."""
    if filters is None:
        return None
    if not isinstance(filters, ReplayFilter):
        try:
            filters = ReplayFilter.model_validate(dict(filters))
        except ValidationError as error:
            first = error.errors()[0]
            field = ".".join(str(part) for part in first["loc"])
            raise ConfigError(f"filters field {field!r}: {first['msg']}") from error
    return None if filters.is_empty else filters
