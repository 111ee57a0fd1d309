"""The replay buffer: storage, index, encoder, sampler and eviction policy composed into one object."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict

from dg_core import ConfigError, Source, Step, Task, Trajectory, read_trajectories
from dg_replay._encoders import CachedEncoder, Encoder, minilm_encoder, normalize_rows
from dg_replay._errors import ReplayError, ReplayFileError, ReplayMismatchError, ReplayReadOnlyError
from dg_replay._filters import ReplayFilter, as_filter
from dg_replay._index import IndexConfig, USearchIndex, as_matrix, checked_expansion
from dg_replay._policies import EvictionPolicy, KeepAll, Sampler, UniformSampler
from dg_replay._records import RetrievalQuery, Retrieved, StoredTransition, content_hash, key_text
from dg_replay._retrieval import Tail, search_keys
from dg_replay._snapshot import STORAGE_NAME, SnapshotManifest, encoder_named, open_snapshot, write_snapshot
from dg_replay._storage import NewTransition, SQLiteStorage

__all__ = ["AddResult", "BufferStats", "ReplayBuffer"]

Filters = ReplayFilter | Mapping[str, Any] | None
Query = RetrievalQuery | str


@dataclass(frozen=True)
class AddResult:
    """What one ``add`` did."""

    keys: list[int | None]
    """Key of each offered step; ``None`` for a duplicate or a synthetic step the eviction policy rejected."""
    duplicates: int = 0
    """Steps already stored (same content hash)."""
    evicted: list[int] = field(default_factory=list)
    """Keys deleted by the eviction policy (older synthetic steps, or new ones it rejected)."""


class BufferStats(BaseModel):
    """Counts and sizes of a buffer."""

    model_config = ConfigDict(frozen=True)

    total: int
    """Transitions stored."""
    by_source: dict[str, int]
    """Transitions per source."""
    by_env: dict[str, int]
    """Transitions per environment."""
    by_split: dict[str, int]
    """Transitions per split (``"None"`` for tasks without one)."""
    indexed: int
    """Vectors in the index (the rest, if any, are searched exactly)."""
    encoder: str
    """Encoder name."""
    dim: int
    """Embedding dimension."""
    index_memory_bytes: int
    """Index size in memory as USearch reports it."""
    storage_bytes: int
    """Storage size on disk (0 in memory)."""


class ReplayBuffer:
    """Real and synthetic transitions with top-k retrieval by (task, state, action) similarity.

    Built from parts, all swappable: ``storage`` (where transitions live), ``index`` (similarity
    search), ``encoder`` (texts to vectors), ``sampler`` (for :meth:`sample`) and ``eviction`` (which
    synthetic transitions to drop). A buffer over existing storage indexes every stored row it has
    no snapshot of, so the index can always be rebuilt from the storage.
    """

    def __init__(
        self,
        *,
        encoder: Encoder,
        storage: SQLiteStorage | None = None,
        index: USearchIndex | None = None,
        sampler: Sampler | None = None,
        eviction: EvictionPolicy | None = None,
        seed: int = 0,
        exact_search_limit: int = 2_000,
        snapshot: SnapshotManifest | None = None,
    ) -> None:
        """Args:
        encoder: Turns (task, state, action) key texts into vectors.
        storage: Transition storage; in memory if omitted.
        index: Vector index with ``dim == encoder.dim``; a new f16 index if omitted.
        sampler: How :meth:`sample` picks; uniform if omitted.
        eviction: Which synthetic transitions to drop; :class:`KeepAll` if omitted.
        seed: Seed of the generator the sampler and eviction policy draw from.
        exact_search_limit: Filters matching at most this many rows, and buffers of at most this many rows,
            use exact search.
        snapshot: The manifest ``index`` was loaded from (its watermarks say what it already holds).
        """
        self.encoder = encoder
        self.storage = storage if storage is not None else SQLiteStorage()
        self.index = index if index is not None else USearchIndex(IndexConfig(dim=encoder.dim))
        self.sampler: Sampler = sampler if sampler is not None else UniformSampler()
        self.eviction: EvictionPolicy = eviction if eviction is not None else KeepAll()
        self.exact_search_limit = exact_search_limit
        self.read_only = self.storage.read_only
        self._rng = np.random.default_rng(seed)
        if self.index.config.dim != encoder.dim:
            raise ReplayMismatchError(
                self.storage.path or ":memory:", f"index dim {self.index.config.dim} != encoder dim {encoder.dim}"
            )
        if self.read_only:
            name, dim = self.storage.meta("encoder"), self.storage.meta("dim")
            if name is not None and (name != encoder.name or dim != str(encoder.dim)):
                raise ReplayMismatchError(
                    self.storage.path or ":memory:", f"stored encoder {name!r} (dim {dim}) != {encoder.name!r}"
                )
        else:
            self.storage.bind_encoder(encoder.name, encoder.dim)
        self._indexed_key = snapshot.last_key if snapshot else 0
        self._applied_tombstone = snapshot.last_tombstone if snapshot else 0
        self._tail = Tail()
        self._tail_version: int | None = None
        self._writes = 0
        self._counts: dict[ReplayFilter, int] = {}
        self._counts_version: tuple[int, int] | None = None
        self._catch_up()

    # -- construction -----------------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        directory: str | Path | None = None,
        *,
        encoder: Encoder | None = None,
        index_config: IndexConfig | None = None,
        **parts: Any,
    ) -> ReplayBuffer:
        """A new, empty buffer in ``directory`` (``None``: in memory).

        Args:
            directory: Folder for ``transitions.sqlite`` and the index snapshots; must not hold a buffer yet.
            encoder: Defaults to the offline MiniLM model behind an embedding cache.
            index_config: Index settings (``dim`` must be the encoder's); f16 defaults otherwise.
            **parts: ``sampler``, ``eviction``, ``seed``, ``exact_search_limit``.
        """
        encoder = encoder if encoder is not None else CachedEncoder(minilm_encoder())
        storage_path = None if directory is None else Path(directory) / STORAGE_NAME
        if storage_path is not None and storage_path.exists():
            raise ReplayError(f"{storage_path}: a buffer already exists here; use ReplayBuffer.open")
        config = index_config or IndexConfig(dim=encoder.dim)
        return cls(encoder=encoder, storage=SQLiteStorage(storage_path), index=USearchIndex(config), **parts)

    @classmethod
    def open(
        cls,
        directory: str | Path,
        *,
        encoder: Encoder | None = None,
        read_only: bool = False,
        verify: bool = True,
        expansion_search: int | None = None,
        **parts: Any,
    ) -> ReplayBuffer:
        """Open a saved buffer: writable (index loaded into memory) or read-only (index memory-mapped).

        Args:
            directory: The buffer's folder.
            encoder: Defaults to the encoder recorded in the storage when dg-replay can build it
                (hashing, offline MiniLM).
            read_only: Open for evaluation: nothing is written; safe beside a writing process.
            verify: Check the index file's checksum against the manifest.
            expansion_search: Search width (HNSW ``ef``) to use instead of the one the snapshot was saved
                with: larger is better recall and slower, no rebuild needed. Also settable later as
                ``buffer.index.expansion_search``.
            **parts: ``sampler``, ``eviction``, ``seed``, ``exact_search_limit``.
        """
        folder = Path(directory)
        if expansion_search is not None:
            checked_expansion(expansion_search)
        if not (folder / STORAGE_NAME).is_file():
            raise ReplayFileError(folder / STORAGE_NAME, "no buffer here (use ReplayBuffer.create for a new one)")
        storage = SQLiteStorage(folder / STORAGE_NAME, read_only=read_only)
        try:
            encoder = encoder if encoder is not None else encoder_named(storage)
            manifest, index = open_snapshot(folder, encoder, read_only=read_only, verify=verify)
            buffer = cls(encoder=encoder, storage=storage, index=index, snapshot=manifest, **parts)
            if expansion_search is not None:
                buffer.index.expansion_search = expansion_search  # also an index rebuilt from storage
            return buffer
        except BaseException:
            storage.close()
            raise

    # -- writing ----------------------------------------------------------------------------------
    def add(
        self,
        steps: Iterable[Step],
        source: Source | str,
        *,
        task: Task,
        trajectory_id: str | None = None,
        embeddings: Any = None,
    ) -> AddResult:
        """Store ``steps`` of ``task`` and index their (task, state, action) keys.

        Args:
            steps: Transitions, all from ``source``.
            source: ``"real"`` or ``"synthetic"``; a step claiming another source is refused.
            task: The task the steps were played in.
            trajectory_id: Episode id, for provenance.
            embeddings: Precomputed key embeddings ``(len(steps), dim)``; computed by the encoder if omitted.
        """
        self._writable()
        steps = list(steps)
        source = Source(source)
        for position, step in enumerate(steps):
            if step.source != source:
                raise ConfigError(
                    f"steps[{position}].source is {step.source.value!r} but add() was given {source.value!r}"
                )
        return self._add([(task, step, trajectory_id) for step in steps], embeddings)

    def add_trajectories(self, trajectories: Iterable[Trajectory | str | Path], *, batch_size: int = 1024) -> AddResult:
        """Seed from trajectories or trajectory files (JSONL / Parquet), in batches of ``batch_size`` steps."""
        self._writable()
        keys: list[int | None] = []
        duplicates = 0
        evicted: list[int] = []
        batch: list[tuple[Task, Step, str | None]] = []

        def flush() -> None:
            nonlocal duplicates
            result = self._add(batch, None)
            keys.extend(result.keys)
            duplicates += result.duplicates
            evicted.extend(result.evicted)
            batch.clear()

        for item in trajectories:
            episodes = read_trajectories(item) if isinstance(item, str | Path) else [item]
            for trajectory in episodes:
                batch.extend((trajectory.task, step, trajectory.id) for step in trajectory.steps)
                if len(batch) >= batch_size:
                    flush()
        if batch:
            flush()
        return AddResult(keys=keys, duplicates=duplicates, evicted=evicted)

    def _add(self, items: Sequence[tuple[Task, Step, str | None]], embeddings: Any) -> AddResult:
        if not items:
            return AddResult(keys=[])
        if embeddings is None:
            vectors = self.encoder.encode([key_text(task, step.state, step.action) for task, step, _ in items])
        else:
            vectors = normalize_rows(as_matrix(embeddings, self.encoder.dim, "embeddings"))
            if len(vectors) != len(items):
                raise ConfigError(f"{len(vectors)} embeddings for {len(items)} steps")
        new = [
            NewTransition(task, step, trajectory_id, content_hash(task, step), vector)
            for (task, step, trajectory_id), vector in zip(items, vectors, strict=True)
        ]
        keys = self.storage.insert(new)
        self._writes += 1
        synthetic = [
            key for key, item in zip(keys, items, strict=True) if key is not None and item[1].source == Source.SYNTHETIC
        ]
        evicted = self.eviction.evictions(self.storage, synthetic, self._rng) if synthetic else []
        gone = set(evicted)
        if evicted:
            self.storage.delete(evicted)
            self.index.remove(evicted)
        kept = [row for row, key in enumerate(keys) if key is not None and key not in gone]
        self.index.add(np.asarray([keys[row] for row in kept], dtype=np.int64), vectors[kept])
        self._indexed_key = self.storage.last_key()
        self._applied_tombstone = self.storage.last_tombstone()
        return AddResult(
            keys=[None if key in gone else key for key in keys],
            duplicates=sum(key is None for key in keys),
            evicted=evicted,
        )

    def remove(self, keys: Iterable[int]) -> int:
        """Delete transitions from storage and index; returns how many existed."""
        self._writable()
        key_list = [int(key) for key in keys]
        deleted = self.storage.delete(key_list)
        self._writes += 1
        self.index.remove(key_list)
        self._applied_tombstone = self.storage.last_tombstone()
        return deleted

    @property
    def last_key(self) -> int:
        """The largest key ever assigned (0 when none): a checkpoint records it to cut the buffer back later."""
        return self.storage.last_key()

    def remove_after(self, key: int, filters: Filters = None) -> int:
        """Delete every transition stored after ``key`` (those ``filters`` match); returns how many.

        A training checkpoint records :attr:`last_key`; a run resumed from it calls this, so transitions its
        interrupted process stored after the checkpoint are not kept twice. Evictions made after ``key`` are not
        undone.
        """
        later = [int(k) for k in self.storage.keys(as_filter(filters), after=int(key))]
        return self.remove(later) if later else 0

    def save(self) -> SnapshotManifest:
        """Snapshot the index atomically next to the storage file (transitions are durable on every add)."""
        self._writable()
        if self.storage.path is None:
            raise ReplayError("an in-memory buffer cannot be saved; create it with a directory")
        return write_snapshot(
            self.storage.path.parent,
            self.index,
            encoder=self.encoder.name,
            last_key=self._indexed_key,
            last_tombstone=self._applied_tombstone,
        )

    # -- reading ----------------------------------------------------------------------------------
    def retrieve(
        self, queries: Sequence[Query] | NDArray[Any], k: int = 10, filters: Filters = None
    ) -> list[list[Retrieved]]:
        """The ``k`` stored transitions most similar to each query, best first.

        Args:
            queries: :class:`RetrievalQuery` objects, ready-made key texts, or unit query vectors.
            k: Hits per query.
            filters: Only transitions passing this filter (a :class:`ReplayFilter` or a dict of its fields).
        """
        if k < 1:
            raise ConfigError(f"k must be >= 1, got {k}")
        vectors = self._query_vectors(queries)
        self._refresh_tail()
        selected = as_filter(filters)
        hits = search_keys(
            vectors,
            k,
            index=self.index,
            storage=self.storage,
            tail=self._tail,
            filters=selected,
            matching=None if selected is None else self._matching_count(selected),
            trust_index=not self.read_only,
            exact_limit=self.exact_search_limit,
        )
        rows = self.storage.get(sorted({key for query_hits in hits for key, _ in query_hits}))
        return [[Retrieved(rows[key], score) for key, score in query_hits if key in rows] for query_hits in hits]

    def _query_vectors(self, queries: Sequence[Query] | NDArray[Any]) -> NDArray[np.float32]:
        if isinstance(queries, np.ndarray):
            matrix = as_matrix(queries, self.encoder.dim, "queries")
            norms = np.sqrt(np.einsum("ij,ij->i", matrix, matrix))
            norms[norms == 0.0] = 1.0
            return np.asarray(matrix / norms[:, None], dtype=np.float32)
        texts = [
            query if isinstance(query, str) else key_text(query.task, query.state, query.action) for query in queries
        ]
        return self.encoder.encode(texts)

    def sample(self, count: int, filters: Filters = None) -> list[StoredTransition]:
        """``count`` transitions chosen by the sampler (fewer if fewer pass ``filters``)."""
        keys = self.sampler.sample(self.storage, count, as_filter(filters), self._rng)
        rows = self.storage.get(sorted({int(key) for key in keys}))
        return [rows[int(key)] for key in keys if int(key) in rows]

    def get(self, keys: Iterable[int]) -> list[StoredTransition]:
        """Stored transitions by key (absent keys are skipped)."""
        key_list = [int(key) for key in keys]
        rows = self.storage.get(key_list)
        return [rows[key] for key in key_list if key in rows]

    def transitions(self, filters: Filters = None, *, batch_size: int = 1024) -> Iterator[StoredTransition]:
        """Every stored transition passing ``filters``, in insertion (key) order, read ``batch_size`` rows at a time."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        keys = [int(key) for key in self.storage.keys(as_filter(filters))]
        for start in range(0, len(keys), batch_size):
            yield from self.get(keys[start : start + batch_size])

    def task(self, env_id: str, task_id: str) -> Task | None:
        """The task stored with the transitions of ``(env_id, task_id)`` (its latest version), or ``None``."""
        return self.storage.task(env_id, task_id)

    def __len__(self) -> int:
        return self.storage.count()

    def stats(self) -> BufferStats:
        """Counts per source, environment and split, and sizes."""
        self._refresh_tail()
        return BufferStats(
            total=self.storage.count(),
            by_source=self.storage.counts_by("source"),
            by_env=self.storage.counts_by("env_id"),
            by_split=self.storage.counts_by("split"),
            indexed=len(self.index),
            encoder=self.encoder.name,
            dim=self.encoder.dim,
            index_memory_bytes=self.index.memory_bytes,
            storage_bytes=self.storage.size_bytes(),
        )

    def _matching_count(self, filters: ReplayFilter) -> int:
        """Rows passing ``filters``, cached until this buffer or another process writes."""
        version = (self._writes, self.storage.data_version())
        if version != self._counts_version:
            self._counts.clear()
            self._counts_version = version
        if filters not in self._counts:
            self._counts[filters] = self.storage.count(filters)
        return self._counts[filters]

    # -- consistency ------------------------------------------------------------------------------
    def _catch_up(self) -> None:
        """Bring a writable index up to the storage; a read-only buffer keeps the rest as its tail."""
        if self.read_only:
            self._refresh_tail()
            return
        keys, vectors = self.storage.embeddings(after=self._indexed_key)
        deleted, self._applied_tombstone = self.storage.tombstones(after=self._applied_tombstone)
        self.index.remove(deleted)
        self.index.add(keys, vectors)
        self._indexed_key = max(self._indexed_key, self.storage.last_key())

    def _refresh_tail(self) -> None:
        if not self.read_only:
            return
        version = self.storage.data_version()
        if version != self._tail_version:
            keys, vectors = self.storage.embeddings(after=self._indexed_key)
            self._tail = Tail(keys, vectors)
            self._tail_version = version

    def _writable(self) -> None:
        if self.read_only:
            raise ReplayReadOnlyError(f"{self.storage.path}: buffer was opened read-only")

    def close(self) -> None:
        """Close the storage (and release the writer lock)."""
        self.storage.close()

    def __enter__(self) -> ReplayBuffer:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()
