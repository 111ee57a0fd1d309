"""dg-replay: experience replay for dg.

Real and synthetic transitions in durable SQLite storage, indexed by USearch over embeddings of
their (task, state, action) keys, with filtered top-k retrieval, sampling, eviction policies and
atomic index snapshots. The experience model conditions each prediction on what :meth:`ReplayBuffer.retrieve`
returns.
"""

from dg_replay._buffer import AddResult, BufferStats, ReplayBuffer
from dg_replay._encoders import (
    MINILM_NAME,
    CachedEncoder,
    Encoder,
    HashingEncoder,
    SentenceTransformerEncoder,
    minilm_encoder,
)
from dg_replay._errors import ReplayError, ReplayFileError, ReplayMismatchError, ReplayReadOnlyError
from dg_replay._filters import ReplayFilter
from dg_replay._index import IndexConfig, SearchResult, USearchIndex
from dg_replay._policies import (
    EvictionPolicy,
    FIFOEviction,
    KeepAll,
    ReservoirEviction,
    Sampler,
    UniformSampler,
)
from dg_replay._records import RetrievalQuery, Retrieved, StoredTransition, content_hash, key_text
from dg_replay._snapshot import MANIFEST_NAME, STORAGE_NAME, SnapshotManifest
from dg_replay._storage import STORAGE_SCHEMA_VERSION, SQLiteStorage

__version__ = "0.1.0"

__all__ = [
    "MANIFEST_NAME",
    "MINILM_NAME",
    "STORAGE_NAME",
    "STORAGE_SCHEMA_VERSION",
    "AddResult",
    "BufferStats",
    "CachedEncoder",
    "Encoder",
    "EvictionPolicy",
    "FIFOEviction",
    "HashingEncoder",
    "IndexConfig",
    "KeepAll",
    "ReplayBuffer",
    "ReplayError",
    "ReplayFileError",
    "ReplayFilter",
    "ReplayMismatchError",
    "ReplayReadOnlyError",
    "ReservoirEviction",
    "RetrievalQuery",
    "Retrieved",
    "SQLiteStorage",
    "Sampler",
    "SearchResult",
    "SentenceTransformerEncoder",
    "SnapshotManifest",
    "StoredTransition",
    "USearchIndex",
    "UniformSampler",
    "__version__",
    "content_hash",
    "key_text",
    "minilm_encoder",
]
