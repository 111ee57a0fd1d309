"""The four systems the replay benchmark compares, behind one small interface.

Each system is built from the same unit vectors (keys 0..n-1), then answers single queries and a
batch of queries with the top-k keys. ``ReplayBufferSystem`` goes through the whole buffer: content
hashing, SQLite storage, the USearch index, and on retrieval the storage lookup and Step parsing.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from dg_core import Action, Source, State, Step, Task
from dg_replay import IndexConfig, ReplayBuffer

K_NEIGHBOURS = 10


class System(Protocol):
    name: str

    def build(self, vectors: NDArray[np.float32]) -> None: ...

    def search_one(self, query: NDArray[np.float32], k: int) -> list[int]: ...

    def search_batch(self, queries: NDArray[np.float32], k: int) -> list[list[int]]: ...

    def memory_bytes(self) -> int: ...

    def close(self) -> None: ...


class BruteForceSystem:
    """Exact search: one float32 matrix product per query batch."""

    name = "numpy brute force (f32)"

    def build(self, vectors: NDArray[np.float32]) -> None:
        self.matrix = np.array(vectors, dtype=np.float32, copy=True)

    def search_batch(self, queries: NDArray[np.float32], k: int) -> list[list[int]]:
        out: list[list[int]] = []
        for start in range(0, len(queries), 256):
            scores = queries[start : start + 256] @ self.matrix.T
            top = np.argpartition(-scores, k, axis=1)[:, :k]
            order = np.take_along_axis(scores, top, axis=1).argsort(axis=1)[:, ::-1]
            out.extend(np.take_along_axis(top, order, axis=1).tolist())
        return out

    def search_one(self, query: NDArray[np.float32], k: int) -> list[int]:
        return self.search_batch(query[None, :], k)[0]

    def memory_bytes(self) -> int:
        return int(self.matrix.nbytes)

    def close(self) -> None:
        del self.matrix


class USearchSystem:
    """Raw USearch HNSW: the very graph inside the buffer, searched directly (isolates the buffer's overhead)."""

    def __init__(self, config: IndexConfig, index: Any) -> None:
        self.name = f"raw USearch ({config.dtype}, M={config.connectivity})"
        self.index = index

    def build(self, vectors: NDArray[np.float32]) -> None:
        raise NotImplementedError("built by the buffer; its add time is measured there")

    # Buffer keys are row + 1.
    def search_one(self, query: NDArray[np.float32], k: int) -> list[int]:
        return [int(key) - 1 for key in self.index.search(query, k).keys]

    def search_batch(self, queries: NDArray[np.float32], k: int) -> list[list[int]]:
        return [[int(key) - 1 for key in row] for row in self.index.search(queries, k).keys]

    def memory_bytes(self) -> int:
        return int(self.index.memory_usage)

    def close(self) -> None:
        pass


class FaissHNSWSystem:
    """faiss ``IndexHNSWFlat`` (float32, inner product on unit vectors), same M / efConstruction / efSearch."""

    def __init__(self, config: IndexConfig) -> None:
        import faiss

        self.faiss: Any = faiss
        self.name = f"faiss HNSWFlat (f32, M={config.connectivity})"
        self.index = faiss.IndexHNSWFlat(config.dim, config.connectivity, faiss.METRIC_INNER_PRODUCT)
        self.index.hnsw.efConstruction = config.expansion_add
        self.index.hnsw.efSearch = config.expansion_search

    def build(self, vectors: NDArray[np.float32]) -> None:
        self.index.add(vectors)

    def set_expansion_search(self, expansion_search: int) -> None:
        """Search width (efSearch) of later searches; the graph is unchanged."""
        self.index.hnsw.efSearch = expansion_search

    def search_one(self, query: NDArray[np.float32], k: int) -> list[int]:
        return [int(key) for key in self.index.search(query[None, :], k)[1][0]]

    def search_batch(self, queries: NDArray[np.float32], k: int) -> list[list[int]]:
        return [[int(key) for key in row] for row in self.index.search(queries, k)[1]]

    def memory_bytes(self) -> int:
        # Serialised size: the flat vectors plus the graph's neighbour lists.
        return len(self.faiss.serialize_index(self.index))

    def close(self) -> None:
        del self.index


class PrecomputedVectors:
    """The benchmark passes embeddings in; this only names their space for the buffer."""

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self.name = f"benchmark-vectors-{dim}"

    def encode(self, texts: Sequence[str]) -> NDArray[np.float32]:
        raise RuntimeError("the benchmark passes embeddings explicitly")


def synthetic_steps(start: int, count: int, source: Source) -> list[Step]:
    """Distinct, realistic-sized steps (copies of one validated template with new texts)."""
    template = Step(
        state=State(text="kitchen: a fridge, a counter", available_actions=("open fridge", "go north", "look")),
        action=Action(text="open fridge"),
        next_state=State(text="the fridge is open; inside: an apple"),
        reward=0.0,
        done=False,
        source=source,
        step_index=0,
    )
    return [
        template.model_copy(
            update={
                "state": template.state.model_copy(update={"text": f"kitchen {index}: a fridge, a counter"}),
                "step_index": index % 50,
            }
        )
        for index in range(start, start + count)
    ]


class ReplayBufferSystem:
    """dg-replay end to end: storage on disk, index, storage lookup and Step parsing on every query."""

    def __init__(self, config: IndexConfig, *, synthetic_fraction: float = 0.5) -> None:
        self.config = config
        self.name = f"dg-replay ReplayBuffer ({config.dtype}, end to end)"
        self.folder = tempfile.TemporaryDirectory(prefix="dg-replay-bench-")
        self.buffer = ReplayBuffer.create(
            Path(self.folder.name) / "buffer", encoder=PrecomputedVectors(config.dim), index_config=config
        )
        self.synthetic_fraction = synthetic_fraction
        self.filters: dict[str, str] | None = None

    def build(self, vectors: NDArray[np.float32]) -> None:
        self.index_add_s = 0.0
        index_add = self.buffer.index.add

        def timed_index_add(*args: Any, **kwargs: Any) -> None:
            started = time.perf_counter()
            index_add(*args, **kwargs)
            self.index_add_s += time.perf_counter() - started

        self.buffer.index.add = timed_index_add  # type: ignore[method-assign]
        batch = 10_000
        for start in range(0, len(vectors), batch):
            count = min(batch, len(vectors) - start)
            # Alternate batches of real and synthetic steps so filtered retrieval has something to filter.
            source = Source.SYNTHETIC if (start // batch) % 2 else Source.REAL
            task = Task(id=f"task-{start // batch}", env_id="kitchen", instruction="make breakfast", split="train")
            result = self.buffer.add(
                synthetic_steps(start, count, source), source, task=task, embeddings=vectors[start : start + count]
            )
            assert result.keys[0] == start + 1, "benchmark keys must be row + 1"
        del self.buffer.index.add  # back to the method

    def search_one(self, query: NDArray[np.float32], k: int) -> list[int]:
        hits = self.buffer.retrieve(query[None, :], k=k, filters=self.filters)[0]
        return [hit.key - 1 for hit in hits]

    def search_batch(self, queries: NDArray[np.float32], k: int) -> list[list[int]]:
        return [[hit.key - 1 for hit in hits] for hits in self.buffer.retrieve(queries, k=k, filters=self.filters)]

    def memory_bytes(self) -> int:
        return self.buffer.index.memory_bytes

    def cold(self) -> None:
        self.buffer.storage.clear_row_cache()

    def disk_bytes(self) -> int:
        return self.buffer.storage.size_bytes()

    def close(self) -> None:
        self.buffer.close()
        self.folder.cleanup()
