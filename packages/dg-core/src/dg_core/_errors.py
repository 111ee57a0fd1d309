"""Exceptions shared by every dg package."""

from __future__ import annotations

from pathlib import Path


class DGError(Exception):
    """Base class of every error dg raises on purpose."""


class TrajectoryFormatError(DGError, ValueError):
    """A trajectory record that cannot be read, with the file, line (or row) and field at fault."""

    def __init__(self, path: str | Path, line: int, message: str, field: str | None = None) -> None:
        self.path = Path(path)
        self.line = line
        self.field = field
        self.reason = message
        where = f"{self.path}:{line}"
        at = f" (field {field!r})" if field else ""
        super().__init__(f"{where}{at}: {message}")


class UnsupportedSchemaVersionError(TrajectoryFormatError):
    """A record written with a schema version this dg-core cannot read."""


class TornTailError(DGError, ValueError):
    """A JSONL file whose last line was cut off mid-write (the writer was killed).

    ``repair_jsonl(path)`` moves the partial line aside into ``<path>.torn`` so nothing is lost.
    """

    def __init__(self, path: str | Path, line: int, offset: int) -> None:
        self.path = Path(path)
        self.line = line
        self.offset = offset
        super().__init__(
            f"{self.path}:{line}: the last line has no newline (a write was interrupted at byte {offset}); "
            f"run dg_core.repair_jsonl({str(self.path)!r}) to move it into {self.path.name}.torn"
        )


class EnvError(DGError, RuntimeError):
    """An environment used against its contract."""


class ResetNeededError(EnvError):
    """``step`` was called before ``reset`` or after the episode ended."""


class EnvClosedError(EnvError):
    """The environment was used after ``close``."""


class ConfigError(DGError, ValueError):
    """A configuration key or value that is not allowed, naming the key and what is allowed."""


class MissingExtraError(DGError, ImportError):
    """An optional dependency is missing; the message holds the exact install command."""

    def __init__(self, module: str, distribution: str, extra: str, purpose: str) -> None:
        self.module = module
        self.install = f'pip install "{distribution}[{extra}]"'
        super().__init__(f"{purpose} needs the {module!r} package: {self.install}", name=module)
