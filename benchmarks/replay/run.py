"""Replay retrieval benchmark: dg-replay end to end vs raw USearch vs faiss HNSW vs numpy brute force.

For each size: add throughput, p50 / p99 single-query latency (k=10), batch QPS, recall@10 against
exact search, and memory, all on the same clustered unit vectors (dim 384 by default), in one run.
The buffer is also measured with a filter (source=real, half the rows) and read-only from its saved,
memory-mapped snapshot. ``--expansion-search 64,128,256`` sweeps the search width (HNSW ``ef``) on the
same built graphs: every value adds rows for the buffer, raw USearch, the filtered and read-only buffer
and faiss, without rebuilding. Prints a Markdown table and writes ``benchmarks/results/replay.json``.

    python benchmarks/replay/run.py                  # 100k
    python benchmarks/replay/run.py --large          # 100k and 1M (about 6 GiB RAM, ~15 min on 2 cores)
    python benchmarks/replay/run.py --sizes 1000000 --skip-faiss --expansion-search 64,128,256
    nox -s bench -- replay --large
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

# The script's folder is on sys.path when it runs, so its sibling module imports by name.
from systems import (
    K_NEIGHBOURS,
    BruteForceSystem,
    FaissHNSWSystem,
    PrecomputedVectors,
    ReplayBufferSystem,
    System,
    USearchSystem,
)

from dg_replay import IndexConfig, ReplayBuffer

RESULTS = Path(__file__).resolve().parents[1] / "results"


def clustered_unit_vectors(count: int, dim: int, *, clusters: int, seed: int) -> NDArray[np.float32]:
    """Unit vectors around ``clusters`` random centres (embeddings of similar states cluster too)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim), dtype=np.float32)
    out = np.empty((count, dim), dtype=np.float32)
    for start in range(0, count, 100_000):
        stop = min(count, start + 100_000)
        chunk = centres[rng.integers(0, clusters, stop - start)]
        chunk += 0.5 * rng.standard_normal((stop - start, dim), dtype=np.float32)
        out[start:stop] = chunk / np.linalg.norm(chunk, axis=1, keepdims=True)
    return out


def exact_neighbours(queries: NDArray[np.float32], vectors: NDArray[np.float32], k: int) -> NDArray[np.int64]:
    truth = BruteForceSystem()
    truth.matrix = vectors
    return np.asarray(truth.search_batch(queries, k), dtype=np.int64)


def recall(found: list[list[int]], truth: NDArray[np.int64]) -> float:
    k = truth.shape[1]
    return float(np.mean([len(set(row[:k]) & set(want.tolist())) / k for row, want in zip(found, truth, strict=True)]))


def latency(system: System, queries: NDArray[np.float32], count: int) -> tuple[float, float, list[list[int]]]:
    timings: list[float] = []
    found: list[list[int]] = []
    for query in queries[:count]:
        started = time.perf_counter_ns()
        found.append(system.search_one(query, K_NEIGHBOURS))
        timings.append((time.perf_counter_ns() - started) / 1e6)
    return float(np.percentile(timings, 50)), float(np.percentile(timings, 99)), found


def measure(
    system: System,
    vectors: NDArray[np.float32] | None,
    queries: NDArray[np.float32],
    truth: NDArray[np.int64],
    *,
    single_queries: int,
    cold: Callable[[], None] = lambda: None,
) -> dict[str, Any]:
    """Build (if ``vectors``), then time single queries and one batch; ``cold`` empties row caches first."""
    row: dict[str, Any] = {"system": system.name}
    if vectors is not None:
        started = time.perf_counter()
        system.build(vectors)
        row["add_per_s"] = len(vectors) / (time.perf_counter() - started)
    system.search_batch(queries[-50:], K_NEIGHBOURS)  # page the index in, with queries not timed below
    cold()
    row["p50_ms"], row["p99_ms"], single = latency(system, queries, single_queries)
    cold()
    started = time.perf_counter()
    batch = system.search_batch(queries, K_NEIGHBOURS)
    row["batch_qps"] = len(queries) / (time.perf_counter() - started)
    row["recall_at_10"] = recall(batch, truth)
    row["recall_at_10_single"] = recall(single, truth[: len(single)])
    row["memory_mib"] = system.memory_bytes() / 2**20
    return row


class _ReaderSystem:
    """A read-only buffer opened from the saved snapshot (memory-mapped index), as evaluation uses it."""

    def __init__(self, folder: Path, dim: int) -> None:
        started = time.perf_counter()
        self.folder = folder
        self.buffer = ReplayBuffer.open(folder, read_only=True, encoder=PrecomputedVectors(dim))
        self.open_s = time.perf_counter() - started
        self.name = "dg-replay read-only (mmap snapshot)"

    def build(self, vectors: NDArray[np.float32]) -> None:
        raise NotImplementedError

    def search_one(self, query: NDArray[np.float32], k: int) -> list[int]:
        return [hit.key - 1 for hit in self.buffer.retrieve(query[None, :], k=k)[0]]

    def search_batch(self, queries: NDArray[np.float32], k: int) -> list[list[int]]:
        return [[hit.key - 1 for hit in hits] for hits in self.buffer.retrieve(queries, k=k)]

    def memory_bytes(self) -> int:
        # The index is memory-mapped: its pages live in the page cache, shared by every reader.
        files = list(self.folder.glob("index-*.usearch"))
        return sum(path.stat().st_size for path in files)

    def cold(self) -> None:
        self.buffer.storage.clear_row_cache()

    def close(self) -> None:
        self.buffer.close()


def run_size(size: int, args: argparse.Namespace, config: IndexConfig) -> dict[str, Any]:
    print(f"\n## {size:,} transitions, dim {args.dim}", flush=True)
    data = clustered_unit_vectors(size + args.queries, args.dim, clusters=args.clusters, seed=size)
    vectors, queries = data[:size], data[size:]
    started = time.perf_counter()
    truth = exact_neighbours(queries, vectors, K_NEIGHBOURS)
    print(f"exact ground truth for {len(queries)} queries: {time.perf_counter() - started:.1f}s", flush=True)
    brute_single = max(20, min(args.single_queries, 100_000_000 // size))
    rows: list[dict[str, Any]] = []

    def record(row: dict[str, Any], expansion_search: int | None = None) -> None:
        rows.append({**row, "expansion_search": expansion_search})
        print(_table_row(rows[-1]), flush=True)

    brute = BruteForceSystem()
    record(measure(brute, vectors, queries, truth, single_queries=brute_single))
    brute.close()

    # One graph for every search width: build (timed), snapshot, open a reader, then sweep.
    buffer = ReplayBufferSystem(config)
    started = time.perf_counter()
    buffer.build(vectors)
    add_per_s = size / (time.perf_counter() - started)
    print(f"buffer built: {size / add_per_s:.0f}s", flush=True)
    started = time.perf_counter()
    buffer.buffer.save()
    save_s = time.perf_counter() - started
    reader = _ReaderSystem(Path(buffer.folder.name) / "buffer", args.dim)
    raw = USearchSystem(config, buffer.buffer.index._index)
    # Filtered: only real rows (every other batch of 10k, half of all), against exact search over them.
    real_rows = np.flatnonzero((np.arange(size) // 10_000) % 2 == 0)
    real_truth = real_rows[exact_neighbours(queries, vectors[real_rows], K_NEIGHBOURS)]
    for position, ef in enumerate(args.expansion_search):
        buffer.buffer.index.expansion_search = ef  # the graph raw USearch searches too
        reader.buffer.index.expansion_search = ef
        assert raw.index.expansion_search == ef
        first = position == 0
        buffer.filters = None
        buffer.name = f"dg-replay ReplayBuffer ({config.dtype}, end to end)"
        row = measure(buffer, None, queries, truth, single_queries=args.single_queries, cold=buffer.cold)
        record({**row, "add_per_s": add_per_s if first else None, "disk_mib": buffer.disk_bytes() / 2**20}, ef)
        row = measure(raw, None, queries, truth, single_queries=args.single_queries)
        record({**row, "add_per_s": size / buffer.index_add_s if first else None}, ef)
        buffer.filters = {"source": "real"}
        buffer.name = "dg-replay ReplayBuffer, filter source=real (50%)"
        record(measure(buffer, None, queries, real_truth, single_queries=args.single_queries, cold=buffer.cold), ef)
        row = measure(reader, None, queries, truth, single_queries=args.single_queries, cold=reader.cold)
        record({**row, "save_s": save_s, "open_read_only_s": reader.open_s}, ef)
    reader.close()
    buffer.close()
    del raw
    gc.collect()

    if size <= args.faiss_max_size and not args.skip_faiss:
        faiss_system = FaissHNSWSystem(config)
        started = time.perf_counter()
        faiss_system.build(vectors)
        faiss_add_per_s = size / (time.perf_counter() - started)
        for position, ef in enumerate(args.expansion_search):
            faiss_system.set_expansion_search(ef)
            row = measure(faiss_system, None, queries, truth, single_queries=args.single_queries)
            record({**row, "add_per_s": faiss_add_per_s if position == 0 else None}, ef)
        faiss_system.close()
    return {"size": size, "rows": rows}


def _target_lines(result: dict[str, Any]) -> list[str]:
    """Per search width: the buffer's p50 and recall against the target, and its ratio to raw USearch."""
    by_ef: dict[int, dict[str, dict[str, Any]]] = {}
    for row in result["rows"]:
        if row["expansion_search"] is not None:
            by_ef.setdefault(row["expansion_search"], {})[row["system"]] = row
    lines = []
    for ef, systems in by_ef.items():
        buffer = next(row for name, row in systems.items() if name.startswith("dg-replay ReplayBuffer ("))
        raw = next(row for name, row in systems.items() if name.startswith("raw USearch"))
        met = buffer["p50_ms"] <= TARGET_P50_MS and buffer["recall_at_10"] >= TARGET_RECALL
        lines.append(
            f"- ef={ef}: dg-replay p50 {buffer['p50_ms']:.3f} ms (raw USearch {raw['p50_ms']:.3f} ms, "
            f"x{buffer['p50_ms'] / raw['p50_ms']:.2f}), recall@10 {buffer['recall_at_10']:.4f}: "
            f"target {'met' if met else 'missed'}"
        )
    return lines


def _fmt(value: Any, pattern: str) -> str:
    return "—" if value is None else format(value, pattern)


def _table_row(row: dict[str, Any]) -> str:
    return (
        f"| {row['system']} | {_fmt(row.get('expansion_search'), 'd')} | {_fmt(row.get('add_per_s'), ',.0f')} | "
        f"{row['p50_ms']:.3f} | {row['p99_ms']:.3f} | {row['batch_qps']:,.0f} | {row['recall_at_10']:.4f} | "
        f"{row['memory_mib']:,.0f} |"
    )


HEADER = (
    "| system | ef search | add/s | p50 ms (k=10) | p99 ms | batch QPS | recall@10 | index memory MiB |\n"
    "| --- | --- | --- | --- | --- | --- | --- | --- |"
)
TARGET_P50_MS = 0.5
TARGET_RECALL = 0.98


def _widths(text: str) -> list[int]:
    widths = [int(part) for part in text.split(",")]
    if not widths or min(widths) < 1 or len(set(widths)) != len(widths):
        raise argparse.ArgumentTypeError(f"distinct integers >= 1, comma-separated, got {text!r}")
    return widths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=lambda text: [int(part) for part in text.split(",")], default=[100_000])
    parser.add_argument("--large", action="store_true", help="also run 1,000,000 transitions")
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--queries", type=int, default=1000, help="batch size, and the recall query set")
    parser.add_argument("--single-queries", type=int, default=1000, help="queries timed one by one")
    parser.add_argument("--clusters", type=int, default=1000)
    parser.add_argument("--dtype", default="f16", choices=["f32", "f16", "bf16", "i8"])
    parser.add_argument("--connectivity", type=int, default=16)
    parser.add_argument("--expansion-add", type=int, default=128)
    parser.add_argument(
        "--expansion-search",
        type=_widths,
        default=[64],
        help="search width(s), comma-separated (64,128,256): each is measured on the same built graph",
    )
    parser.add_argument("--skip-faiss", action="store_true")
    parser.add_argument("--faiss-max-size", type=int, default=10_000_000, help="skip faiss above this size")
    parser.add_argument("--output", type=Path, default=RESULTS / "replay.json")
    args = parser.parse_args()
    sizes = sorted(set(args.sizes + ([1_000_000] if args.large else [])))
    config = IndexConfig(
        dim=args.dim,
        dtype=args.dtype,
        connectivity=args.connectivity,
        expansion_add=args.expansion_add,
        expansion_search=args.expansion_search[0],
    )
    machine = {"cpus": os.cpu_count(), "python": platform.python_version(), "machine": platform.machine()}
    print(f"replay retrieval benchmark: {machine}, index {config.model_dump()}, ef sweep {args.expansion_search}")
    results = [run_size(size, args, config) for size in sizes]
    print("\n# Summary (k=10; latency is one query at a time, end to end for dg-replay rows)")
    for result in results:
        print(f"\n{result['size']:,} transitions\n\n{HEADER}")
        for row in result["rows"]:
            print(_table_row(row))
        print(f"\nTarget (set for 1M): p50 <= {TARGET_P50_MS} ms end to end with recall@10 >= {TARGET_RECALL}")
        print("\n".join(_target_lines(result)))
    report = {
        "machine": machine,
        "index": config.model_dump(),
        "expansion_search_sweep": args.expansion_search,
        "load_average_1_5_15": os.getloadavg(),
        "args": {**vars(args), "output": str(args.output)},
        "results": results,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {args.output}")


if __name__ == "__main__":
    main()
