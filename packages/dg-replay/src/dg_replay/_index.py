"""The vector index: USearch HNSW over unit vectors with the cosine metric and int64 keys."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict, Field
from usearch.index import Index

from dg_core import ConfigError
from dg_replay._errors import ReplayFileError, ReplayMismatchError, ReplayReadOnlyError

__all__ = ["IndexConfig", "SearchResult", "USearchIndex"]

IndexDType = Literal["f32", "f16", "bf16", "i8"]


class IndexConfig(BaseModel):
    """Settings of the HNSW graph; ``f16`` halves memory at no measurable recall cost (``i8`` loses recall)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    dim: int = Field(ge=1)
    """Vector dimension (the encoder's)."""
    dtype: IndexDType = "f16"
    """Scalar type vectors are stored in."""
    connectivity: int = Field(default=16, ge=2)
    """Graph degree (HNSW ``M``): more is better recall and more memory."""
    expansion_add: int = Field(default=128, ge=1)
    """Candidate list size while inserting (HNSW ``efConstruction``)."""
    expansion_search: int = Field(default=64, ge=1)
    """Candidate list size while searching (HNSW ``ef``), raised to ``k`` when ``k`` is larger. A search-time
    setting only: change it on a built or opened index with :attr:`USearchIndex.expansion_search` (or
    ``ReplayBuffer.open(..., expansion_search=)``) without rebuilding; larger is better recall and slower."""


@dataclass(frozen=True, slots=True)
class SearchResult:
    """Top-k neighbours of a batch of queries; missing slots have key -1 and score -inf."""

    keys: NDArray[np.int64]
    """``(queries, k)`` keys, best first."""
    scores: NDArray[np.float32]
    """``(queries, k)`` cosine similarities."""


def as_matrix(vectors: Any, dim: int, what: str = "vectors") -> NDArray[np.float32]:
    """``vectors`` as a C-contiguous float32 ``(n, dim)`` matrix, or a ConfigError saying what is wrong."""
    if (
        isinstance(vectors, np.ndarray)
        and vectors.dtype == np.float32
        and vectors.ndim == 2
        and vectors.shape[1] == dim
        and vectors.flags.c_contiguous
        and np.isfinite(vectors.sum())  # one reduction: NaN or inf anywhere makes the sum non-finite
    ):
        return vectors
    matrix = np.asarray(vectors, dtype=np.float32)
    if matrix.ndim == 1:
        matrix = matrix[None, :]
    if matrix.ndim != 2 or matrix.shape[1] != dim:
        raise ConfigError(f"{what} must have shape (n, {dim}), got {tuple(np.shape(vectors))}")
    if not np.isfinite(matrix).all():
        raise ConfigError(f"{what} contain NaN or infinite values")
    return np.ascontiguousarray(matrix)


def checked_expansion(value: object) -> int:
    """``value`` as a search width (HNSW ``ef``), or a ConfigError."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ConfigError(f"expansion_search must be an integer >= 1, got {value!r}")
    return int(value)


class USearchIndex:
    """A USearch index with the guarantees the buffer relies on.

    Adding a key that is present replaces its vector (remove, then add). Keys are non-negative int64.
    An index opened with :meth:`view` is memory-mapped and read-only.
    """

    def __init__(self, config: IndexConfig, *, _index: Index | None = None, _read_only: bool = False) -> None:
        """Args:
        config: Graph settings.
        """
        self.config = config
        self.read_only = _read_only
        self._index = _index or Index(
            ndim=config.dim,
            metric="cos",
            dtype=config.dtype,
            connectivity=config.connectivity,
            expansion_add=config.expansion_add,
            expansion_search=config.expansion_search,
        )

    def __len__(self) -> int:
        return int(self._index.size)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, int | np.integer) and bool(self._index.contains(int(key)))

    @property
    def expansion_search(self) -> int:
        """Candidate list size of searches (HNSW ``ef``); settable at any time, read-only views included.

        Only searches change (no rebuild): larger is better recall and slower. ``config`` follows the
        new value, so the next snapshot records it.
        """
        return self.config.expansion_search

    @expansion_search.setter
    def expansion_search(self, value: int) -> None:
        checked = checked_expansion(value)
        self._index.expansion_search = checked  # type: ignore[misc]  # usearch declares the setter apart
        self.config = self.config.model_copy(update={"expansion_search": checked})

    @property
    def memory_bytes(self) -> int:
        """Bytes USearch reports for the graph and vectors."""
        return int(self._index.memory_usage)

    def _writable(self) -> None:
        if self.read_only:
            raise ReplayReadOnlyError("this index is a read-only memory-mapped view; open the buffer writable")

    def add(self, keys: Any, vectors: Any, *, threads: int = 0) -> None:
        """Insert ``vectors`` under ``keys``, replacing the vectors of keys already present."""
        self._writable()
        key_array = np.asarray(keys, dtype=np.int64).reshape(-1)
        matrix = as_matrix(vectors, self.config.dim)
        if len(key_array) != len(matrix):
            raise ConfigError(f"{len(key_array)} keys for {len(matrix)} vectors")
        if len(key_array) == 0:
            return
        if (key_array < 0).any():
            raise ConfigError("index keys must be non-negative")
        if len(np.unique(key_array)) != len(key_array):
            raise ConfigError("duplicate keys in one add")
        present = np.asarray(self._index.contains(key_array), dtype=bool).reshape(-1)
        if present.any():
            self._index.remove(key_array[present])
        self._index.add(key_array, matrix, threads=threads)

    def remove(self, keys: Any) -> int:
        """Remove ``keys`` (absent ones are ignored); returns how many were removed."""
        self._writable()
        key_array = np.asarray(keys, dtype=np.int64).reshape(-1)
        if len(key_array) == 0:
            return 0
        present = key_array[np.asarray(self._index.contains(key_array), dtype=bool).reshape(-1)]
        if len(present):
            self._index.remove(present)
        return len(present)

    def search(self, queries: Any, k: int, *, threads: int = 0, exact: bool = False) -> SearchResult:
        """Top-``k`` by cosine similarity for each row of ``queries``: approximate (the graph), or by
        comparing with every stored vector when ``exact``."""
        matrix = as_matrix(queries, self.config.dim, "queries")
        keys = np.full((len(matrix), k), -1, dtype=np.int64)
        scores = np.full((len(matrix), k), -np.inf, dtype=np.float32)
        if len(self) == 0 or k <= 0 or len(matrix) == 0:
            return SearchResult(keys, scores)
        matches = self._index.search(matrix, k, threads=threads, exact=exact)
        found_keys = np.asarray(matches.keys).reshape(len(matrix), -1)
        distances = np.asarray(matches.distances, dtype=np.float32).reshape(len(matrix), -1)
        # A single query comes back as ``Matches`` (no ``counts``), a batch as ``BatchMatches``.
        counts = np.asarray(matches.counts if hasattr(matches, "counts") else [len(matches.keys)]).reshape(-1)
        for row, count in enumerate(counts):
            keys[row, :count] = found_keys[row, :count]
            scores[row, :count] = 1.0 - distances[row, :count]
        return SearchResult(keys, scores)

    def get(self, keys: Any) -> NDArray[np.float32]:
        """The stored vectors of ``keys`` as float32 rows; a ConfigError names any absent key."""
        key_array = np.asarray(keys, dtype=np.int64).reshape(-1)
        if len(key_array) == 0:
            return np.zeros((0, self.config.dim), dtype=np.float32)
        present = np.asarray(self._index.contains(key_array), dtype=bool).reshape(-1)
        if not present.all():
            raise ConfigError(f"keys not in the index: {key_array[~present][:10].tolist()}")
        vectors = self._index.get(key_array, dtype="f32")
        return np.ascontiguousarray(np.asarray(vectors, dtype=np.float32).reshape(len(key_array), -1))

    def keys(self) -> NDArray[np.int64]:
        """All keys present."""
        return np.asarray(self._index.keys, dtype=np.int64)

    def save(self, path: str | Path) -> None:
        """Write the index to ``path`` (not atomic by itself; the buffer's snapshot makes it so)."""
        self._index.save(str(path))

    @classmethod
    def _checked(cls, path: Path, config: IndexConfig) -> None:
        try:
            metadata = Index.metadata(str(path))
        except (ValueError, RuntimeError, OSError) as error:
            raise ReplayFileError(path, f"not a readable USearch index ({error})") from error
        if metadata is None:
            raise ReplayFileError(path, "not a readable USearch index")
        if int(metadata["dimensions"]) != config.dim:
            raise ReplayMismatchError(
                path, f"index has dimension {metadata['dimensions']}, expected {config.dim} (a different encoder?)"
            )

    @classmethod
    def load(cls, path: str | Path, config: IndexConfig) -> USearchIndex:
        """Read an index fully into memory (writable)."""
        return cls._open(Path(path), config, view=False)

    @classmethod
    def view(cls, path: str | Path, config: IndexConfig) -> USearchIndex:
        """Memory-map an index read-only (fast to open, shares pages between reader processes)."""
        return cls._open(Path(path), config, view=True)

    @classmethod
    def _open(cls, path: Path, config: IndexConfig, *, view: bool) -> USearchIndex:
        if not path.is_file():
            raise ReplayFileError(path, "index file does not exist")
        cls._checked(path, config)
        index = Index(
            ndim=config.dim,
            metric="cos",
            dtype=config.dtype,
            connectivity=config.connectivity,
            expansion_add=config.expansion_add,
            expansion_search=config.expansion_search,
        )
        try:
            if view:
                index.view(str(path))
            else:
                index.load(str(path))
        except (ValueError, RuntimeError, OSError) as error:
            raise ReplayFileError(path, f"corrupted USearch index ({error})") from error
        return cls(config, _index=index, _read_only=view)
