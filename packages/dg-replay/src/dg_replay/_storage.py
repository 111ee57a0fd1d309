"""Durable storage of transitions in SQLite (WAL): metadata columns for filters, the step as JSON,
the embedding as float16 bytes, and a content hash for exact-duplicate detection.

One process writes (an exclusive lock file enforces it); any number of processes read at the same
time and see only committed batches.
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
from numpy.typing import NDArray
from pydantic import ValidationError

from dg_core import Source, Step, Task
from dg_replay._errors import ReplayError, ReplayFileError, ReplayMismatchError, ReplayReadOnlyError
from dg_replay._filters import ReplayFilter
from dg_replay._records import StoredTransition

__all__ = ["STORAGE_SCHEMA_VERSION", "NewTransition", "SQLiteStorage"]

STORAGE_SCHEMA_VERSION = 1
"""Version of the SQLite layout this release writes and reads."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS transitions (
    key INTEGER PRIMARY KEY AUTOINCREMENT,
    content_hash BLOB NOT NULL UNIQUE,
    env_id TEXT NOT NULL,
    task_id TEXT NOT NULL,
    split TEXT,
    source TEXT NOT NULL,
    trajectory_id TEXT,
    step TEXT NOT NULL,
    embedding BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS transitions_source ON transitions (source, key);
CREATE INDEX IF NOT EXISTS transitions_env ON transitions (env_id, source);
CREATE INDEX IF NOT EXISTS transitions_task ON transitions (task_id);
CREATE INDEX IF NOT EXISTS transitions_split ON transitions (split);
CREATE TABLE IF NOT EXISTS tasks (env_id TEXT NOT NULL, task_id TEXT NOT NULL, task TEXT NOT NULL,
                                  PRIMARY KEY (env_id, task_id));
CREATE TABLE IF NOT EXISTS tombstones (id INTEGER PRIMARY KEY AUTOINCREMENT, key INTEGER NOT NULL);
"""
_COLUMNS = "key, env_id, task_id, split, source, trajectory_id, step"


@dataclass(frozen=True, slots=True)
class NewTransition:
    """A transition on its way into storage."""

    task: Task
    step: Step
    trajectory_id: str | None
    content_hash: bytes
    embedding: NDArray[np.float32]


class SQLiteStorage:
    """Transitions in one SQLite file (or in memory with ``path=None``)."""

    def __init__(
        self, path: str | Path | None = None, *, read_only: bool = False, row_cache_size: int = 65_536
    ) -> None:
        """Args:
        path: Database file, created if missing (unless ``read_only``); ``None`` keeps it in memory.
        read_only: Open without writing anything; safe while another process writes.
        row_cache_size: Parsed transitions kept in memory (keys are never reused, so a cached row can
            only go stale by deletion, and every lookup still asks SQLite which keys exist).
        """
        self.path = Path(path) if path is not None else None
        self.read_only = read_only
        self._rows: OrderedDict[int, StoredTransition] = OrderedDict()
        self._row_cache_size = row_cache_size
        self._lock: IO[bytes] | None = None
        if self.path is None:
            if read_only:
                raise ReplayReadOnlyError("an in-memory storage cannot be read-only")
            self._db = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
        elif read_only:
            if not self.path.is_file():
                raise ReplayFileError(self.path, "storage file does not exist")
            self._db = sqlite3.connect(
                f"file:{self.path}?mode=ro", uri=True, isolation_level=None, check_same_thread=False
            )
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._take_writer_lock(self.path)
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA busy_timeout = 30000")
        try:
            self._initialise()
        except sqlite3.DatabaseError as error:
            self.close()
            raise ReplayFileError(self.path or ":memory:", f"not a dg-replay SQLite database ({error})") from error

    def _take_writer_lock(self, path: Path) -> None:
        self._lock = open(f"{path}.lock", "wb")  # noqa: SIM115 - held for the storage's lifetime
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as error:
            self._lock.close()
            self._lock = None
            raise ReplayError(f"{path}: another process has this storage open for writing") from error

    def _initialise(self) -> None:
        if not self.read_only:
            if self.path is not None:
                self._db.execute("PRAGMA journal_mode = WAL")
                # WAL + NORMAL: a committed batch survives a process kill; only power loss can drop the last ones.
                self._db.execute("PRAGMA synchronous = NORMAL")
            self._db.executescript(_SCHEMA)
            if self.meta("schema_version") is None:
                self.set_meta("schema_version", str(STORAGE_SCHEMA_VERSION))
        version = self.meta("schema_version")
        if version != str(STORAGE_SCHEMA_VERSION):
            raise ReplayMismatchError(
                self.path or ":memory:",
                f"storage schema_version {version!r}; this dg-replay reads {STORAGE_SCHEMA_VERSION}",
            )

    # -- metadata -------------------------------------------------------------------------------
    def meta(self, name: str) -> str | None:
        """A value from the ``meta`` table, or ``None``."""
        try:
            row = self._db.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        except sqlite3.OperationalError as error:
            if "no such table" in str(error):
                raise sqlite3.DatabaseError("no meta table") from error
            raise
        return None if row is None else str(row[0])

    def set_meta(self, name: str, value: str) -> None:
        """Set a value in the ``meta`` table."""
        self._writable()
        self._db.execute("INSERT OR REPLACE INTO meta (name, value) VALUES (?, ?)", (name, value))

    def bind_encoder(self, name: str, dim: int) -> None:
        """Record the encoder on first use; afterwards refuse a different one (embeddings would not compare)."""
        stored_name, stored_dim = self.meta("encoder"), self.meta("dim")
        if stored_name is None:
            self.set_meta("encoder", name)
            self.set_meta("dim", str(dim))
        elif stored_name != name or stored_dim != str(dim):
            raise ReplayMismatchError(
                self.path or ":memory:",
                f"storage holds embeddings of encoder {stored_name!r} (dim {stored_dim}), not {name!r} (dim {dim})",
            )

    def _writable(self) -> None:
        if self.read_only:
            raise ReplayReadOnlyError(f"{self.path}: storage was opened read-only")

    # -- writing --------------------------------------------------------------------------------
    def insert(self, transitions: Sequence[NewTransition]) -> list[int | None]:
        """Store new transitions in one transaction; returns each one's key, or ``None`` for a duplicate."""
        self._writable()
        result: list[int | None] = [None] * len(transitions)
        self._db.execute("BEGIN IMMEDIATE")
        try:
            hashes = [transition.content_hash for transition in transitions]
            existing = self._existing_hashes(hashes)
            row = self._db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'transitions'").fetchone()
            next_key = (int(row[0]) if row else 0) + 1
            rows: list[tuple[Any, ...]] = []
            tasks: dict[tuple[str, str], str] = {}
            for position, transition in enumerate(transitions):
                if transition.content_hash in existing:
                    continue
                existing.add(transition.content_hash)
                task, step = transition.task, transition.step
                result[position] = next_key
                rows.append(
                    (
                        next_key,
                        transition.content_hash,
                        task.env_id,
                        task.id,
                        task.split,
                        Source(step.source).value,
                        transition.trajectory_id,
                        step.model_dump_json(),
                        np.asarray(transition.embedding, dtype=np.float16).tobytes(),
                    )
                )
                tasks[(task.env_id, task.id)] = task.model_dump_json()
                next_key += 1
            self._db.executemany("INSERT INTO transitions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
            self._db.executemany(
                "INSERT OR REPLACE INTO tasks VALUES (?, ?, ?)", [(*ids, task) for ids, task in tasks.items()]
            )
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        return result

    def _existing_hashes(self, hashes: Sequence[bytes]) -> set[bytes]:
        found: set[bytes] = set()
        for start in range(0, len(hashes), 900):
            chunk = hashes[start : start + 900]
            query = f"SELECT content_hash FROM transitions WHERE content_hash IN ({','.join('?' * len(chunk))})"
            found.update(bytes(row[0]) for row in self._db.execute(query, chunk))
        return found

    def delete(self, keys: Sequence[int]) -> int:
        """Delete transitions (absent keys are ignored), leaving a tombstone for each; returns how many."""
        self._writable()
        if not keys:
            return 0
        payload = json.dumps([int(key) for key in keys])
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.execute(
                "INSERT INTO tombstones (key) "
                "SELECT key FROM transitions WHERE key IN (SELECT value FROM json_each(?))",
                (payload,),
            )
            for key in keys:
                self._rows.pop(int(key), None)
            deleted = self._db.execute(
                "DELETE FROM transitions WHERE key IN (SELECT value FROM json_each(?))", (payload,)
            ).rowcount
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        return int(deleted)

    # -- reading --------------------------------------------------------------------------------
    def _where(self, filters: ReplayFilter | None) -> tuple[str, list[Any]]:
        return filters.to_sql() if filters is not None else ("1", [])

    def get(self, keys: Sequence[int], filters: ReplayFilter | None = None) -> dict[int, StoredTransition]:
        """The stored transitions among ``keys`` that exist (and pass ``filters``), by key."""
        if not len(keys):
            return {}
        where, params = self._where(filters)
        query = f"SELECT {_COLUMNS} FROM transitions WHERE key IN (SELECT value FROM json_each(?)) AND {where}"
        rows = self._db.execute(query, [json.dumps([int(key) for key in keys]), *params]).fetchall()
        found: dict[int, StoredTransition] = {}
        for row in rows:
            key = int(row[0])
            cached = self._rows.get(key)
            if cached is None:
                cached = self._rows[key] = self._parse(row)
                if len(self._rows) > self._row_cache_size:
                    self._rows.popitem(last=False)
            else:
                self._rows.move_to_end(key)
            found[key] = cached
        return found

    def clear_row_cache(self) -> None:
        """Forget parsed transitions (benchmarks use it to measure cold lookups)."""
        self._rows.clear()

    def _parse(self, row: tuple[Any, ...]) -> StoredTransition:
        key, env_id, task_id, split, source, trajectory_id, step_json = row
        try:
            step = Step.model_validate_json(step_json)
        except ValidationError as error:
            raise ReplayFileError(self.path or ":memory:", f"row key={key}: unreadable step ({error})") from error
        return StoredTransition(
            key=int(key),
            env_id=env_id,
            task_id=task_id,
            split=split,
            source=Source(source),
            trajectory_id=trajectory_id,
            step=step,
        )

    def matching(self, keys: Sequence[int], filters: ReplayFilter | None) -> set[int]:
        """Which of ``keys`` exist and pass ``filters`` (no row is parsed)."""
        if not len(keys):
            return set()
        where, params = self._where(filters)
        query = f"SELECT key FROM transitions WHERE key IN (SELECT value FROM json_each(?)) AND {where}"
        return {int(row[0]) for row in self._db.execute(query, [json.dumps([int(key) for key in keys]), *params])}

    def count(self, filters: ReplayFilter | None = None) -> int:
        """Number of stored transitions passing ``filters``."""
        where, params = self._where(filters)
        return int(self._db.execute(f"SELECT COUNT(*) FROM transitions WHERE {where}", params).fetchone()[0])

    def keys(self, filters: ReplayFilter | None = None, *, after: int = 0) -> NDArray[np.int64]:
        """Keys passing ``filters`` (and greater than ``after``), in insertion order."""
        where, params = self._where(filters)
        query = f"SELECT key FROM transitions WHERE key > ? AND {where} ORDER BY key"
        return np.fromiter((row[0] for row in self._db.execute(query, [after, *params])), dtype=np.int64)

    def embeddings(
        self, filters: ReplayFilter | None = None, *, after: int = 0
    ) -> tuple[NDArray[np.int64], NDArray[np.float32]]:
        """Keys passing ``filters`` and greater than ``after``, with their stored embeddings (float32 rows)."""
        dim = int(self.meta("dim") or 0)
        where, params = self._where(filters)
        query = f"SELECT key, embedding FROM transitions WHERE key > ? AND {where} ORDER BY key"
        rows = self._db.execute(query, [after, *params])
        keys: list[int] = []
        chunks: list[bytes] = []
        for key, blob in rows:
            if len(blob) != 2 * dim:
                raise ReplayFileError(self.path or ":memory:", f"row key={key}: embedding has the wrong size")
            keys.append(int(key))
            chunks.append(blob)
        matrix = np.frombuffer(b"".join(chunks), dtype=np.float16).reshape(len(keys), dim).astype(np.float32)
        return np.asarray(keys, dtype=np.int64), matrix

    def tombstones(self, *, after: int = 0) -> tuple[NDArray[np.int64], int]:
        """Keys deleted by tombstones with id greater than ``after``, and the last tombstone id."""
        rows = self._db.execute("SELECT id, key FROM tombstones WHERE id > ? ORDER BY id", (after,)).fetchall()
        last = int(rows[-1][0]) if rows else after
        return np.asarray([row[1] for row in rows], dtype=np.int64), last

    def last_key(self) -> int:
        """The largest key ever assigned (keys are never reused), 0 when none."""
        row = self._db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'transitions'").fetchone()
        return int(row[0]) if row else 0

    def last_tombstone(self) -> int:
        """The id of the latest tombstone, 0 when none."""
        row = self._db.execute("SELECT MAX(id) FROM tombstones").fetchone()
        return int(row[0]) if row and row[0] is not None else 0

    def task(self, env_id: str, task_id: str) -> Task | None:
        """The latest stored version of a task, or ``None``."""
        row = self._db.execute("SELECT task FROM tasks WHERE env_id = ? AND task_id = ?", (env_id, task_id)).fetchone()
        return None if row is None else Task.model_validate_json(row[0])

    def oldest(self, source: Source, count: int) -> list[int]:
        """The ``count`` oldest keys of ``source``."""
        query = "SELECT key FROM transitions WHERE source = ? ORDER BY key LIMIT ?"
        return [int(row[0]) for row in self._db.execute(query, (source.value, count))]

    def counts_by(self, column: str) -> dict[str, int]:
        """Number of transitions per value of ``column`` (``env_id``, ``source``, ``split``)."""
        if column not in {"env_id", "source", "split", "task_id"}:
            raise ValueError(f"cannot group by {column!r}")
        query = f"SELECT {column}, COUNT(*) FROM transitions GROUP BY {column}"
        return {str(value): int(count) for value, count in self._db.execute(query)}

    def data_version(self) -> int:
        """Changes whenever another connection commits (cheap: no table is read)."""
        return int(self._db.execute("PRAGMA data_version").fetchone()[0])

    def size_bytes(self) -> int:
        """Bytes on disk (database plus write-ahead log), 0 in memory."""
        if self.path is None:
            return 0
        return sum(os.path.getsize(p) for p in (self.path, Path(f"{self.path}-wal")) if p.exists())

    def close(self) -> None:
        """Close the connection and release the writer lock."""
        self._db.close()
        if self._lock is not None:
            self._lock.close()
            self._lock = None
