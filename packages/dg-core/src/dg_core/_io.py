"""Streaming trajectory files: JSONL (always) and Parquet (``dg-core[parquet]``).

One trajectory per JSONL line or Parquet row. Writing is append-safe (each record is one ``write``
of a whole line, flushed at once) and a new file is finalised atomically (written as ``<name>.partial``
and renamed on success, so readers never see half a file). Reading streams and reports a bad record
with the file, the line and the field.
"""

from __future__ import annotations

import importlib
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Literal

from pydantic import ValidationError

from dg_core._errors import (
    ConfigError,
    TornTailError,
    TrajectoryFormatError,
    UnsupportedSchemaVersionError,
)
from dg_core._imports import require
from dg_core._types import READABLE_SCHEMA_VERSIONS, Trajectory

PARTIAL_SUFFIX = ".partial"
TORN_SUFFIX = ".torn"
_PARQUET_SUFFIXES = (".parquet", ".pq")

# Parquet keeps a few flat columns for filtering plus the whole record as JSON, so that reading
# back is exact whatever the environment puts into ``info`` and ``metadata``.
_PARQUET_COLUMNS = (
    "schema_version",
    "trajectory_id",
    "env_id",
    "task_id",
    "split",
    "source",
    "policy_id",
    "success",
    "return",
    "num_steps",
    "record",
)


def _is_parquet(path: Path) -> bool:
    return path.suffix.lower() in _PARQUET_SUFFIXES


def _pyarrow() -> Any:
    pyarrow = require("pyarrow", distribution="dg-core", extra="parquet", purpose="Parquet trajectory files")
    importlib.import_module("pyarrow.parquet")  # registers the ``pyarrow.parquet`` attribute
    return pyarrow


def parse_trajectory(record: Any, *, path: str | Path, line: int) -> Trajectory:
    """Validate one decoded record, raising errors that name ``path``, ``line`` and the field.

    Args:
        record: The decoded JSON object.
        path: File the record came from (for messages).
        line: 1-based line (JSONL) or row (Parquet) number.
    """
    if not isinstance(record, dict):
        raise TrajectoryFormatError(path, line, f"expected a JSON object, got {type(record).__name__}")
    if "schema_version" not in record:
        raise TrajectoryFormatError(path, line, "missing", field="schema_version")
    version = record["schema_version"]
    if version not in READABLE_SCHEMA_VERSIONS:
        raise UnsupportedSchemaVersionError(
            path,
            line,
            f"unsupported schema_version {version!r}; this dg-core reads {list(READABLE_SCHEMA_VERSIONS)}",
            field="schema_version",
        )
    try:
        return Trajectory.model_validate(record)
    except ValidationError as error:
        first = error.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or None
        count = error.error_count()
        more = f" (and {count - 1} more errors)" if count > 1 else ""
        raise TrajectoryFormatError(path, line, f"{first['msg']}{more}", field=field) from error


def _dump(trajectory: Trajectory) -> str:
    return trajectory.model_dump_json(by_alias=True)


def _torn_tail_offset(path: Path) -> int | None:
    """Byte offset where an unterminated last line starts, or ``None`` when the file ends cleanly."""
    size = path.stat().st_size
    if size == 0:
        return None
    with path.open("rb") as handle:
        handle.seek(size - 1)
        if handle.read(1) == b"\n":
            return None
        # Walk back to the previous newline in blocks.
        position = size
        block = 1 << 16
        while position > 0:
            start = max(0, position - block)
            handle.seek(start)
            chunk = handle.read(position - start)
            newline = chunk.rfind(b"\n")
            if newline >= 0:
                return start + newline + 1
            position = start
        return 0


def _count_lines_before(path: Path, offset: int) -> int:
    with path.open("rb") as handle:
        return handle.read(offset).count(b"\n")


def repair_jsonl(path: str | Path) -> int:
    """Move an interrupted last line of a JSONL file into ``<path>.torn``; return the bytes moved.

    The complete lines stay where they are; nothing is deleted. Returns 0 when the file was clean.
    """
    path = Path(path)
    offset = _torn_tail_offset(path)
    if offset is None:
        return 0
    with path.open("r+b") as handle:
        handle.seek(offset)
        tail = handle.read()
        torn = path.with_name(path.name + TORN_SUFFIX)
        with torn.open("ab") as aside:
            aside.write(tail + b"\n")
            aside.flush()
            os.fsync(aside.fileno())
        handle.truncate(offset)
        handle.flush()
        os.fsync(handle.fileno())
    return len(tail)


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class TrajectoryWriter:
    """Writes trajectories one at a time to JSONL or Parquet (chosen by the file suffix).

    ``append=False`` (default) writes ``<path>.partial`` and renames it over ``path`` in
    :meth:`close`; if the ``with`` block raises, the ``.partial`` file is kept (every record in it is
    complete) and ``path`` is left untouched. ``append=True`` (JSONL only) adds whole lines to an
    existing file, refusing one whose last line was torn by a crash (see :func:`repair_jsonl`).

    Args:
        path: Destination file; ``.jsonl`` or ``.parquet``.
        append: Add to an existing JSONL file instead of replacing it.
        fsync_every: Force records to disk every this many trajectories (0: only at close).
        row_group_size: Trajectories per Parquet row group.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        append: bool = False,
        fsync_every: int = 0,
        row_group_size: int = 1024,
    ) -> None:
        self.path = Path(path)
        self.append = append
        self.fsync_every = fsync_every
        self.count = 0
        self._closed = False
        self._parquet = _is_parquet(self.path)
        self._rows: list[Trajectory] = []
        self._row_group_size = row_group_size
        self._parquet_writer: Any = None
        self._handle: IO[bytes] | None = None
        if self._parquet and append:
            raise ConfigError(f"{self.path}: append=True is only supported for JSONL files")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if append:
            if self.path.exists():
                offset = _torn_tail_offset(self.path)
                if offset is not None:
                    raise TornTailError(self.path, _count_lines_before(self.path, offset) + 1, offset)
            self._target = self.path
        else:
            self._target = self.path.with_name(self.path.name + PARTIAL_SUFFIX)
        if self._parquet:
            self._pa = _pyarrow()
        else:
            self._handle = self._target.open("ab" if append else "wb", buffering=0)

    def write(self, trajectory: Trajectory) -> None:
        """Write one trajectory; it is on its way to disk when this returns."""
        if self._closed:
            raise ValueError(f"{self.path}: writer is closed")
        if not isinstance(trajectory, Trajectory):
            raise TypeError(f"expected a Trajectory, got {type(trajectory).__name__}")
        if self._parquet:
            self._rows.append(trajectory)
            if len(self._rows) >= self._row_group_size:
                self._flush_parquet()
        else:
            assert self._handle is not None
            # One write call per record: a concurrent appender or a kill never interleaves lines.
            self._handle.write((_dump(trajectory) + "\n").encode())
            if self.fsync_every and (self.count + 1) % self.fsync_every == 0:
                os.fsync(self._handle.fileno())
        self.count += 1

    def write_many(self, trajectories: Iterable[Trajectory]) -> int:
        """Write every trajectory of an iterable; return how many were written."""
        written = 0
        for trajectory in trajectories:
            self.write(trajectory)
            written += 1
        return written

    def _flush_parquet(self) -> None:
        if not self._rows:
            return
        pa = self._pa
        columns: dict[str, list[Any]] = {name: [] for name in _PARQUET_COLUMNS}
        for trajectory in self._rows:
            columns["schema_version"].append(trajectory.schema_version)
            columns["trajectory_id"].append(trajectory.id)
            columns["env_id"].append(trajectory.task.env_id)
            columns["task_id"].append(trajectory.task.id)
            columns["split"].append(trajectory.task.split)
            columns["source"].append(trajectory.source.value)
            columns["policy_id"].append(trajectory.policy_id)
            columns["success"].append(trajectory.success)
            columns["return"].append(trajectory.return_)
            columns["num_steps"].append(trajectory.num_steps)
            columns["record"].append(_dump(trajectory))
        schema = pa.schema(
            [
                ("schema_version", pa.int32()),
                ("trajectory_id", pa.string()),
                ("env_id", pa.string()),
                ("task_id", pa.string()),
                ("split", pa.string()),
                ("source", pa.string()),
                ("policy_id", pa.string()),
                ("success", pa.bool_()),
                ("return", pa.float64()),
                ("num_steps", pa.int32()),
                ("record", pa.large_string()),
            ]
        )
        table = pa.table(columns, schema=schema)
        if self._parquet_writer is None:
            self._parquet_writer = pa.parquet.ParquetWriter(str(self._target), schema, compression="zstd")
        self._parquet_writer.write_table(table)
        self._rows.clear()

    def close(self) -> None:
        """Flush, sync and (for a new file) atomically move the finished file into place."""
        if self._closed:
            return
        self._closed = True
        if self._parquet:
            self._flush_parquet()
            if self._parquet_writer is None:  # no rows: still produce a valid, empty file
                self._rows = []
                self._parquet_writer = self._pa.parquet.ParquetWriter(
                    str(self._target), self._empty_schema(), compression="zstd"
                )
            self._parquet_writer.close()
            with self._target.open("rb") as handle:
                os.fsync(handle.fileno())
        else:
            assert self._handle is not None
            os.fsync(self._handle.fileno())
            self._handle.close()
        if not self.append:
            os.replace(self._target, self.path)
            _fsync_dir(self.path.parent)

    def _empty_schema(self) -> Any:
        pa = self._pa
        return pa.schema([(name, pa.large_string() if name == "record" else pa.string()) for name in _PARQUET_COLUMNS])

    def abandon(self) -> Path | None:
        """Stop without finalising; return the ``.partial`` file that holds what was written, if any."""
        if self._closed:
            return None
        self._closed = True
        if self._parquet:
            self._flush_parquet()
            if self._parquet_writer is not None:
                self._parquet_writer.close()
        elif self._handle is not None:
            os.fsync(self._handle.fileno())
            self._handle.close()
        if self.append or not self._target.exists():
            return None
        return self._target

    def __enter__(self) -> TrajectoryWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> Literal[False]:
        if exc_type is None:
            self.close()
        else:
            self.abandon()
        return False


def write_trajectories(path: str | Path, trajectories: Iterable[Trajectory], *, append: bool = False) -> int:
    """Write trajectories to ``path`` (JSONL or Parquet by suffix); return how many were written."""
    with TrajectoryWriter(path, append=append) as writer:
        return writer.write_many(trajectories)


def _iter_jsonl(path: Path, torn_tail: Literal["raise", "skip"]) -> Iterator[Trajectory]:
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.endswith(b"\n"):
                if torn_tail == "skip":
                    return
                raise TornTailError(path, number, handle.tell() - len(raw))
            text = raw.strip()
            if not text:
                continue
            try:
                record = json.loads(text)
            except (json.JSONDecodeError, UnicodeDecodeError) as error:
                detail = (
                    f"invalid JSON: {error.msg} at column {error.colno}"
                    if isinstance(error, json.JSONDecodeError)
                    else f"not UTF-8: {error.reason}"
                )
                raise TrajectoryFormatError(path, number, detail) from error
            yield parse_trajectory(record, path=path, line=number)


def _iter_parquet(path: Path) -> Iterator[Trajectory]:
    pa = _pyarrow()
    try:
        parquet_file = pa.parquet.ParquetFile(str(path))
    except Exception as error:  # pyarrow raises several types for a damaged file
        raise TrajectoryFormatError(path, 0, f"not a readable Parquet file: {error}") from error
    if "record" not in parquet_file.schema_arrow.names:
        raise TrajectoryFormatError(path, 0, "not a dg trajectory file: no 'record' column", field="record")
    row = 0
    for batch in parquet_file.iter_batches(columns=["record"]):
        for text in batch.column(0).to_pylist():
            row += 1
            try:
                record = json.loads(text)
            except (TypeError, json.JSONDecodeError) as error:
                raise TrajectoryFormatError(path, row, f"invalid JSON record: {error}", field="record") from error
            yield parse_trajectory(record, path=path, line=row)


def read_trajectories(path: str | Path, *, torn_tail: Literal["raise", "skip"] = "raise") -> Iterator[Trajectory]:
    """Stream the trajectories of a JSONL or Parquet file, in order.

    Args:
        path: The file (``.jsonl`` or ``.parquet``).
        torn_tail: What to do with an interrupted last JSONL line: ``"raise"`` a
            :class:`TornTailError`, or ``"skip"`` it (it stays in the file).

    Raises:
        TrajectoryFormatError: a record is malformed; the message names file, line and field.
        UnsupportedSchemaVersionError: a record was written by a newer schema.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no trajectory file at {path}")
    if _is_parquet(path):
        return _iter_parquet(path)
    return _iter_jsonl(path, torn_tail)
