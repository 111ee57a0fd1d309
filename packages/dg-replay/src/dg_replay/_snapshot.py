"""Atomic snapshots of the vector index next to the storage file.

A snapshot is an index file plus ``manifest.json`` naming it with its size and checksum, the
encoder, the index settings and the storage watermarks (last key and last tombstone it contains).
Saving writes the new index file under a fresh name, then replaces the manifest atomically
(write, fsync, rename, fsync the directory), and only then deletes the old index file: a process
killed at any point leaves a manifest that names a complete index.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from dg_core import ConfigError
from dg_replay._encoders import MINILM_NAME, CachedEncoder, Encoder, HashingEncoder, minilm_encoder
from dg_replay._errors import ReplayFileError, ReplayMismatchError
from dg_replay._index import IndexConfig, USearchIndex
from dg_replay._storage import SQLiteStorage

__all__ = [
    "MANIFEST_NAME",
    "STORAGE_NAME",
    "SnapshotManifest",
    "encoder_named",
    "open_snapshot",
    "read_manifest",
    "write_snapshot",
]

MANIFEST_NAME = "manifest.json"
STORAGE_NAME = "transitions.sqlite"
SNAPSHOT_FORMAT = "dg-replay-snapshot"
SNAPSHOT_FORMAT_VERSION = 1


class SnapshotManifest(BaseModel):
    """What a snapshot holds and how to check it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: str = SNAPSHOT_FORMAT
    """Always ``dg-replay-snapshot``."""
    format_version: int = SNAPSHOT_FORMAT_VERSION
    """Layout version of the snapshot."""
    index_file: str = Field(min_length=1)
    """Name of the index file, in the same directory: a plain file name (no folder, ``..`` or absolute path)."""
    index_bytes: int = Field(ge=0)
    """Size of the index file."""
    index_blake2b: str
    """BLAKE2b-256 hex digest of the index file."""
    index_config: IndexConfig
    """Settings the index was built with."""
    encoder: str
    """Name of the encoder that made the embeddings."""
    count: int = Field(ge=0)
    """Vectors in the index."""
    last_key: int = Field(ge=0)
    """Largest storage key the index has seen; rows with larger keys were added after the snapshot."""
    last_tombstone: int = Field(ge=0)
    """Latest storage tombstone applied to the index."""
    created_unix: float
    """When the snapshot was written."""

    @field_validator("index_file")
    @classmethod
    def _plain_file_name(cls, name: str) -> str:
        # A manifest may come from anywhere (a copied folder): it must not point the loader outside its folder.
        if "/" in name or "\\" in name or "\0" in name or name in (".", "..") or ":" in name:
            raise ValueError(f"must be a plain file name inside the snapshot folder, got {name!r}")
        return name


def _fsync_path(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def file_digest(path: Path) -> str:
    """BLAKE2b-256 hex digest of a file, read in 8 MiB chunks."""
    digest = hashlib.blake2b(digest_size=32)
    with open(path, "rb") as handle:
        while chunk := handle.read(8 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def write_snapshot(
    directory: Path, index: USearchIndex, *, encoder: str, last_key: int, last_tombstone: int
) -> SnapshotManifest:
    """Save ``index`` and point ``manifest.json`` at it atomically; returns the new manifest."""
    directory.mkdir(parents=True, exist_ok=True)
    name = f"index-{time.time_ns()}.usearch"
    partial = directory / f"{name}.partial"
    index.save(partial)
    _fsync_path(partial)
    os.replace(partial, directory / name)
    manifest = SnapshotManifest(
        index_file=name,
        index_bytes=(directory / name).stat().st_size,
        index_blake2b=file_digest(directory / name),
        index_config=index.config,
        encoder=encoder,
        count=len(index),
        last_key=last_key,
        last_tombstone=last_tombstone,
        created_unix=time.time(),
    )
    manifest_partial = directory / f"{MANIFEST_NAME}.partial"
    manifest_partial.write_text(manifest.model_dump_json(indent=2) + "\n", encoding="utf-8")
    _fsync_path(manifest_partial)
    os.replace(manifest_partial, directory / MANIFEST_NAME)
    _fsync_path(directory)
    # Only now is the old index unreferenced (readers that mapped it keep their mapping); leftovers of
    # killed saves go too.
    for stale in directory.glob("index-*.usearch*"):
        if stale.name != name:
            stale.unlink(missing_ok=True)
    return manifest


def read_manifest(directory: Path, *, verify: bool = True) -> SnapshotManifest:
    """The manifest in ``directory``, with its index file checked (size always, checksum if ``verify``)."""
    path = directory / MANIFEST_NAME
    if not path.is_file():
        raise ReplayFileError(path, "no snapshot manifest (was the buffer ever saved?)")
    try:
        manifest = SnapshotManifest.model_validate_json(path.read_bytes())
    except ValidationError as error:
        first = error.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or "(document)"
        raise ReplayFileError(path, f"corrupted manifest (field {field!r}: {first['msg']})") from error
    if manifest.format != SNAPSHOT_FORMAT or manifest.format_version != SNAPSHOT_FORMAT_VERSION:
        raise ReplayMismatchError(
            path, f"format {manifest.format!r} v{manifest.format_version}; this dg-replay reads {SNAPSHOT_FORMAT!r} v1"
        )
    index_path = directory / manifest.index_file
    if index_path.resolve().parent != directory.resolve():
        raise ReplayFileError(index_path, f"index file named by {path.name} links to outside the snapshot folder")
    try:  # a writer's next save deletes this index once its new manifest is in place: at any moment here
        size = index_path.stat().st_size
        if size != manifest.index_bytes:
            raise ReplayFileError(index_path, f"index file has {size} bytes, {path.name} says {manifest.index_bytes}")
        if verify and file_digest(index_path) != manifest.index_blake2b:
            raise ReplayFileError(index_path, f"index file checksum does not match {path.name} (corrupted)")
    except FileNotFoundError:
        raise ReplayFileError(index_path, f"index file named by {path.name} is missing") from None
    return manifest


def encoder_named(storage: SQLiteStorage) -> Encoder:
    """The encoder recorded in ``storage``, when dg-replay can build it by name (hashing, offline MiniLM)."""
    name = storage.meta("encoder")
    if name is None:
        raise ConfigError(f"{storage.path}: no encoder recorded yet; pass encoder=")
    if name.startswith("hashing-") and name.removeprefix("hashing-").isdigit():
        return HashingEncoder(int(name.removeprefix("hashing-")))
    if name == MINILM_NAME:
        return CachedEncoder(minilm_encoder())
    raise ConfigError(f"{storage.path}: built with encoder {name!r}; pass encoder= to open it")


def _named_index(folder: Path) -> str | None:
    """The index file the manifest names right now, or ``None`` when it cannot be read."""
    try:
        return read_manifest(folder, verify=False).index_file
    except ReplayFileError:
        return None


def open_snapshot(
    folder: Path, encoder: Encoder, *, read_only: bool, verify: bool
) -> tuple[SnapshotManifest | None, USearchIndex | None]:
    """The manifest and index in ``folder`` (memory-mapped if ``read_only``), or ``(None, None)`` if never saved."""
    if not (folder / MANIFEST_NAME).exists():
        return None, None  # never saved: a writer rebuilds the index from storage, a reader searches exactly
    for attempt in range(5):
        named_before = _named_index(folder)
        try:
            manifest = read_manifest(folder, verify=verify)
            if manifest.encoder != encoder.name or manifest.index_config.dim != encoder.dim:
                raise ReplayMismatchError(
                    folder / MANIFEST_NAME,
                    f"snapshot made with encoder {manifest.encoder!r} (dim {manifest.index_config.dim}), "
                    f"not {encoder.name!r} (dim {encoder.dim})",
                )
            path = folder / manifest.index_file
            try:
                if read_only:
                    return manifest, USearchIndex.view(path, manifest.index_config)
                return manifest, USearchIndex.load(path, manifest.index_config)
            except (OSError, RuntimeError) as error:
                if path.is_file():
                    raise
                raise ReplayFileError(path, f"index file named by {MANIFEST_NAME} is missing") from error
        except ReplayMismatchError:
            raise
        except ReplayFileError:
            # A writer may have replaced the snapshot (and deleted the old index) while we were opening it.
            if attempt == 4 or _named_index(folder) == named_before:
                raise
    raise AssertionError("unreachable")
