"""Content-addressed embedding cache: one SQLite file outside DVC's outputs, shared by every run.

A key is the hash of (what was encoded: the audio file's bytes or the text) and (the encoder's
identity: model, weights hash, pooling, precision, ...), so an entry is valid wherever that pair
recurs: another experiment, a `dvc exp` temporary copy, a rerun after an interruption. Each batch
is committed in its own transaction (atomic: a killed run keeps every batch it finished and none
half-written), and each entry carries a checksum, so a damaged one is found and recomputed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import sqlite3
import time
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from mmser.tracking import repo_root

log = logging.getLogger(__name__)

CACHE_ENV = "MMSER_CACHE_DIR"
CACHE_FILE = "embeddings.sqlite"
# Part of every key: bump when the stored layout or what an identity means changes.
KEY_VERSION = 1
# Seconds a connection waits for another process's write before giving up ("database is locked").
BUSY_TIMEOUT_S = 120.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS embeddings (
    key TEXT PRIMARY KEY,      -- sha256 of (encoder identity, content hash, KEY_VERSION)
    shape TEXT NOT NULL,       -- JSON list, e.g. [3, 128]
    data BLOB NOT NULL,        -- float32, C order
    checksum TEXT NOT NULL,    -- sha256 of shape and data: detects a damaged entry
    created REAL NOT NULL
)
"""


def cache_dir() -> Path:
    """$MMSER_CACHE_DIR, else `<repo root>/.cache/mmser` (the real root also from `dvc exp` temp copies)."""
    return Path(os.environ.get(CACHE_ENV) or repo_root() / ".cache" / "mmser").expanduser()


def text_hash(text: str) -> str:
    """sha256 of a text's UTF-8 bytes."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def file_hash(path: str | Path) -> str:
    """sha256 of a file's bytes (what an audio entry is addressed by: renaming a file keeps its entry)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def entry_key(identity: dict, content_hash: str) -> str:
    """The cache key of one input under one encoder identity."""
    material = json.dumps({"identity": identity, "content": content_hash, "version": KEY_VERSION}, sort_keys=True)
    return hashlib.sha256(material.encode()).hexdigest()


def _enable_wal(db: sqlite3.Connection) -> None:
    """Put the file in WAL mode, retrying while another connection holds it.

    Switching the journal mode answers SQLITE_BUSY at once, without the connection's busy wait, when
    two processes open a new file together; every other statement waits through the timeout.
    """
    deadline = time.monotonic() + BUSY_TIMEOUT_S
    while True:
        try:
            db.execute("PRAGMA journal_mode=WAL").fetchone()
            return
        except sqlite3.OperationalError as err:
            if err.sqlite_errorcode & 0xFF != sqlite3.SQLITE_BUSY or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _is_damage(err: sqlite3.DatabaseError) -> bool:
    """Whether an error says the file itself is bad (not a database, corrupt), not merely busy."""
    code = getattr(err, "sqlite_errorcode", None)
    return code is not None and code & 0xFF in (sqlite3.SQLITE_NOTADB, sqlite3.SQLITE_CORRUPT)


def _checksum(shape: tuple[int, ...], data: bytes) -> str:
    return hashlib.sha256(json.dumps(list(shape)).encode() + b"\0" + data).hexdigest()


@dataclasses.dataclass
class CacheStats:
    """What one extraction found in the cache and what it computed."""

    requested: int = 0  # inputs asked for (utterances)
    unique: int = 0  # distinct keys among them (identical texts or files share one entry)
    hits: int = 0  # distinct keys found intact
    misses: int = 0  # distinct keys computed (absent or damaged)
    damaged: int = 0  # entries whose checksum failed (counted in misses too)

    def as_metrics(self, prefix: str = "cache_") -> dict[str, int]:
        """Flat metrics for MLflow and the stage's info JSON."""
        return {f"{prefix}{k}": v for k, v in dataclasses.asdict(self).items()}


class EmbeddingCache:
    """A key -> float32 array store in one SQLite file; safe for concurrent stages (WAL, busy timeout)."""

    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path is not None else cache_dir() / CACHE_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = self._open()
        except sqlite3.DatabaseError as err:  # not a database (truncated, overwritten): keep it aside, start anew
            if not _is_damage(err):  # e.g. "locked" past the timeout: another run's file, never to be moved
                raise
            aside = self.path.with_name(f"{self.path.name}.damaged-{int(time.time())}")
            log.warning("embedding cache %s is unreadable (%s); moved to %s, starting an empty one",
                        self.path, err, aside)
            os.replace(self.path, aside)
            self._db = self._open()

    def _open(self) -> sqlite3.Connection:
        # A writer waits up to BUSY_TIMEOUT_S for another's transaction (parallel `dvc exp` runs share the file).
        db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S)
        _enable_wal(db)  # readers never block the writer
        db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: a crash loses at most the last commit, never corrupts
        db.execute(_SCHEMA)
        db.execute("SELECT count(*) FROM embeddings").fetchone()
        db.commit()
        return db

    def close(self) -> None:
        """Close the connection (its WAL is checkpointed into the one file)."""
        self._db.close()

    def __enter__(self) -> "EmbeddingCache":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __len__(self) -> int:
        return self._db.execute("SELECT count(*) FROM embeddings").fetchone()[0]

    def get_many(self, keys: Iterable[str]) -> tuple[dict[str, np.ndarray], list[str]]:
        """(intact entries by key, keys whose entry is damaged); absent keys are in neither."""
        found: dict[str, np.ndarray] = {}
        damaged: list[str] = []
        keys = list(dict.fromkeys(keys))
        for start in range(0, len(keys), 500):  # SQLite caps the number of bound parameters
            chunk = keys[start:start + 500]
            rows = self._db.execute(
                f"SELECT key, shape, data, checksum FROM embeddings WHERE key IN ({','.join('?' * len(chunk))})",
                chunk)
            for key, shape_json, data, checksum in rows:
                try:
                    shape = tuple(json.loads(shape_json))
                    ok = _checksum(shape, data) == checksum and len(data) == 4 * int(np.prod(shape))
                except (ValueError, TypeError):
                    ok = False
                if ok:
                    found[key] = np.frombuffer(data, dtype=np.float32).reshape(shape).copy()
                else:
                    damaged.append(key)
        return found, damaged

    def put_many(self, items: Iterable[tuple[str, np.ndarray]]) -> None:
        """Store entries in one transaction: all of them or, if interrupted, none."""
        rows = []
        now = time.time()
        for key, array in items:
            array = np.ascontiguousarray(array, dtype=np.float32)
            data = array.tobytes()
            rows.append((key, json.dumps(list(array.shape)), data, _checksum(array.shape, data), now))
        with self._db:  # commits on success, rolls back on error
            self._db.executemany("INSERT OR REPLACE INTO embeddings VALUES (?, ?, ?, ?, ?)", rows)


def fetch_or_compute(cache: EmbeddingCache, keys: list[str],
                     compute: Callable[[list[str]], Iterator[tuple[list[str], list[np.ndarray]]]]
                     ) -> tuple[list[np.ndarray], CacheStats]:
    """Embeddings for `keys` in order: cached ones read, the rest computed by `compute` and stored batch by batch.

    `compute(missing_keys)` yields (keys, arrays) per batch, in any order; each batch is committed
    before the next one is computed, so an interrupted run resumes after its last finished batch.
    """
    unique = list(dict.fromkeys(keys))
    found, damaged = cache.get_many(unique)
    missing = [k for k in unique if k not in found]
    stats = CacheStats(requested=len(keys), unique=len(unique), hits=len(found), misses=len(missing),
                       damaged=len(damaged))
    if damaged:
        log.warning("embedding cache: %d damaged entries (checksum mismatch) are recomputed", len(damaged))
    log.info("embedding cache %s: %d inputs, %d distinct, %d hits, %d to compute", cache.path, stats.requested,
             stats.unique, stats.hits, stats.misses)
    if missing:
        wanted = set(missing)
        for batch_keys, arrays in compute(missing):
            if len(batch_keys) != len(arrays) or not set(batch_keys) <= wanted:
                raise RuntimeError("extraction returned results for keys it was not asked for")
            cache.put_many(zip(batch_keys, arrays))
            found.update(zip(batch_keys, (np.asarray(a, dtype=np.float32) for a in arrays)))
        absent = [k for k in missing if k not in found]
        if absent:
            raise RuntimeError(f"extraction skipped {len(absent)} inputs")
    return [found[k] for k in keys], stats


_RECORDS_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    key TEXT PRIMARY KEY,      -- entry_key of (producer identity, content hash), as for embeddings
    value TEXT NOT NULL,       -- JSON object, e.g. an ASR transcript and its language
    created REAL NOT NULL
)
"""


class RecordCache(EmbeddingCache):
    """Small JSON records (ASR transcripts) keyed like embeddings, in a sibling table of the same SQLite file."""

    def _open(self) -> sqlite3.Connection:
        db = super()._open()
        db.execute(_RECORDS_SCHEMA)
        db.commit()
        return db

    def get_records(self, keys: Iterable[str]) -> dict[str, dict]:
        """Intact records by key; absent or unreadable ones are left out (and recomputed by the caller)."""
        found: dict[str, dict] = {}
        keys = list(dict.fromkeys(keys))
        for start in range(0, len(keys), 500):
            chunk = keys[start:start + 500]
            for key, value in self._db.execute(
                    f"SELECT key, value FROM records WHERE key IN ({','.join('?' * len(chunk))})", chunk):
                try:
                    record = json.loads(value)
                except ValueError:
                    continue
                if isinstance(record, dict):
                    found[key] = record
        return found

    def put_records(self, items: Iterable[tuple[str, dict]]) -> None:
        """Store records in one transaction."""
        now = time.time()
        rows = [(key, json.dumps(record, sort_keys=True), now) for key, record in items]
        with self._db:
            self._db.executemany("INSERT OR REPLACE INTO records VALUES (?, ?, ?)", rows)
