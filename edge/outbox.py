"""A bounded on-disk queue of MQTT messages (SQLite, WAL) that survives broker outages and process restarts.

The publisher first *puts* an event's messages here in one transaction (so an event is queued whole or not at
all), then sends them and *acks* each one only when the broker confirmed it (PUBACK). Whatever was not acked is
still here after a crash, a power cut or a restart of ``doorface`` and is sent again: a duplicate is possible, a
loss is not.

The bound counts *events* (one :meth:`Outbox.put` call is one event): beyond it the oldest events are dropped as a
whole, never half an event. A small key/value ``meta`` table holds the publisher's own state (which persons have a
Home Assistant discovery config, so a removed person's entity can be deleted).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    batch INTEGER NOT NULL,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    qos INTEGER NOT NULL,
    retain INTEGER NOT NULL,
    queued_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_batch ON messages (batch);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
_TABLES = {"messages", "meta", "sqlite_sequence"}


class OutboxError(RuntimeError):
    """The queue file cannot be used (corrupt, not a doorface queue, or not writable)."""


@dataclass(frozen=True)
class Message:
    """One MQTT message: ``payload`` is bytes (JSON text is UTF-8 encoded; an empty payload deletes a retained
    message)."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = False
    queued_at: Optional[float] = field(default=None, compare=False)
    """When it was put in the queue (Unix seconds): set on the messages :meth:`Outbox.pending` reads back."""

    def __post_init__(self) -> None:
        if not self.topic or any(c in self.topic for c in "#+\0"):
            raise ValueError(f"a message topic must be non-empty and without wildcards, got {self.topic!r}")
        if not isinstance(self.payload, (bytes, bytearray)):
            raise TypeError(f"message payload must be bytes, got {type(self.payload).__name__}")
        if self.qos not in (0, 1, 2):
            raise ValueError(f"qos must be 0, 1 or 2, got {self.qos}")


class Outbox:
    """Thread-safe bounded FIFO of :class:`Message` in one SQLite file. Open with :meth:`open`; close when done."""

    def __init__(self, connection: sqlite3.Connection, path: Path, max_events: int) -> None:
        self._db = connection
        self._path = path
        self._max_events = max_events
        self._lock = threading.Lock()
        self._closed = False
        self.dropped = 0
        """Events dropped (oldest first) by this process because the queue was full."""

    @classmethod
    def open(cls, path: Union[str, Path], max_events: int = 10000) -> Outbox:
        """Open (creating it and its folder if needed) the queue at ``path`` holding at most ``max_events`` events.

        Raises :class:`OutboxError` naming the file when it is corrupt, not a doorface queue or not writable.
        """
        if max_events < 1:
            raise ValueError(f"max_events must be at least 1, got {max_events}")
        path = Path(path).expanduser()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutboxError(f"cannot create the folder of the event queue {path}: {exc.strerror}") from None
        try:
            db = sqlite3.connect(str(path), timeout=10.0, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise OutboxError(f"cannot open the event queue {path}: {exc}") from None
        try:
            cls._init_schema(db, path)
        except BaseException:
            db.close()
            raise
        outbox = cls(db, path, max_events)
        if len(outbox):
            log.info("event queue %s holds %d undelivered messages", path, len(outbox))
        return outbox

    @staticmethod
    def _init_schema(db: sqlite3.Connection, path: Path) -> None:
        remedy = "move it away or delete it to start with an empty queue (its undelivered events are then lost)"
        try:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if version > SCHEMA_VERSION:
                raise OutboxError(f"event queue {path} has schema version {version}, newer than this doorface "
                                  f"supports ({SCHEMA_VERSION}); upgrade doorface or {remedy}")
            if tables - _TABLES or (tables and version != SCHEMA_VERSION):
                raise OutboxError(f"{path} is not a doorface event queue (it holds tables "
                                  f"{', '.join(sorted(tables))}); {remedy}")
            db.execute("PRAGMA journal_mode = WAL")
            # FULL: a committed put survives a power cut, not only a crash (events are a few per minute).
            db.execute("PRAGMA synchronous = FULL")
            db.executescript(_SCHEMA)
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            db.execute("SELECT COUNT(*) FROM messages").fetchone()
        except sqlite3.DatabaseError as exc:
            raise OutboxError(f"event queue {path} is corrupt or not an SQLite file ({exc}); {remedy}") from None

    @property
    def path(self) -> Path:
        return self._path

    @property
    def max_events(self) -> int:
        return self._max_events

    def _execute(self, sql: str, params: Sequence = ()) -> sqlite3.Cursor:
        if self._closed:
            raise OutboxError(f"event queue {self._path} is closed")
        try:
            return self._db.execute(sql, params)
        except sqlite3.DatabaseError as exc:
            raise OutboxError(f"event queue {self._path}: {exc}") from None

    def _executemany(self, sql: str, rows: list) -> sqlite3.Cursor:
        try:
            return self._db.executemany(sql, rows)
        except sqlite3.DatabaseError as exc:
            raise OutboxError(f"event queue {self._path}: {exc}") from None

    def put(self, messages: Iterable[Message]) -> int:
        """Append one event's messages in ONE transaction; drop the oldest events beyond the bound.

        Returns the number of events dropped to make room (also added to :attr:`dropped` and logged).
        """
        messages = list(messages)
        if not messages:
            return 0
        for message in messages:
            if not isinstance(message, Message):
                raise TypeError(f"expected Message, got {type(message).__name__}")
        now = time.time()
        with self._lock:
            self._execute("BEGIN IMMEDIATE")
            try:
                batch = self._execute("SELECT COALESCE(MAX(batch), 0) + 1 FROM messages").fetchone()[0]
                self._executemany(
                    "INSERT INTO messages (batch, topic, payload, qos, retain, queued_at) VALUES (?, ?, ?, ?, ?, ?)",
                    [(batch, m.topic, bytes(m.payload), m.qos, int(m.retain), now) for m in messages],
                )
                events = self._execute("SELECT COUNT(DISTINCT batch) FROM messages").fetchone()[0]
                excess = events - self._max_events
                dropped_messages = 0
                if excess > 0:
                    dropped_messages = self._execute(
                        "DELETE FROM messages WHERE batch IN "
                        "(SELECT DISTINCT batch FROM messages ORDER BY batch LIMIT ?)", (excess,)).rowcount
                self._execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise
        if excess > 0:
            self.dropped += excess
            log.warning("event queue %s is full (%d events): dropped the %d oldest undelivered events "
                        "(%d messages; %d dropped since start)", self._path, self._max_events, excess,
                        dropped_messages, self.dropped)
            return excess
        return 0

    def pending(self, limit: int = 100, after: int = 0) -> list[tuple[int, Message]]:
        """Up to ``limit`` queued messages with an id above ``after``, oldest first, as ``(id, message)``."""
        with self._lock:
            rows = self._execute(
                "SELECT id, topic, payload, qos, retain, queued_at FROM messages WHERE id > ? ORDER BY id LIMIT ?",
                (after, limit)).fetchall()
        return [(row[0], Message(row[1], bytes(row[2]), row[3], bool(row[4]), row[5])) for row in rows]

    def ack(self, ids: Union[int, Iterable[int]]) -> int:
        """Remove delivered messages by id (unknown ids are ignored: dropped or already acked). Returns the count."""
        ids = [ids] if isinstance(ids, int) else list(ids)
        if not ids:
            return 0
        with self._lock:
            self._execute("BEGIN IMMEDIATE")
            try:
                removed = self._executemany("DELETE FROM messages WHERE id = ?", [(i,) for i in ids]).rowcount
                self._execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise
        return removed

    def __len__(self) -> int:
        """Queued (undelivered) messages."""
        with self._lock:
            return self._execute("SELECT COUNT(*) FROM messages").fetchone()[0]

    def event_count(self) -> int:
        """Queued events (puts) with at least one undelivered message."""
        with self._lock:
            return self._execute("SELECT COUNT(DISTINCT batch) FROM messages").fetchone()[0]

    def get_meta(self, key: str, default: Optional[str] = None) -> Optional[str]:
        with self._lock:
            row = self._execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return default if row is None else row[0]

    def set_meta(self, key: str, value: str) -> None:
        with self._lock:
            self._execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._db.close()

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Outbox({str(self._path)!r}, max_events={self._max_events})"
