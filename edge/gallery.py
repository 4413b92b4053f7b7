"""The gallery of enrolled persons: one SQLite file holding names, face embeddings and small face thumbnails.

Embeddings are only comparable when they come from the same model bytes, so the file records the embedder it was
made with (manifest key, sha256, dimension, metric) and refuses to open with any other; it is never modified in that
case, because converting embeddings between models is impossible and silently mixing them would make every match
meaningless.

Durability: WAL journal with ``synchronous=FULL`` and every write in a single transaction, so a process killed
mid-enrollment (SIGKILL, power cut) leaves the gallery exactly as it was before that enrollment. Enrollments are
rare and tiny, so the extra fsync costs nothing that matters. The runtime may read the gallery while the CLI writes
to it: WAL readers never block the writer, and a busy timeout covers writer/writer overlaps.

Schema (``PRAGMA user_version`` = :data:`SCHEMA_VERSION`, ``PRAGMA application_id`` = :data:`APPLICATION_ID`)::

    meta        key TEXT PRIMARY KEY, value TEXT     schema_version, embedder_key, embedder_sha256, dim, metric,
                                                     created, revision (bumped by every write)
    persons     id, name UNIQUE, created, updated    name: display name, NFC-normalised, any script
    embeddings  id, person_id → persons ON DELETE CASCADE, vector BLOB (little-endian float32 × dim),
                source TEXT (photo path or "video:<file>#<frame>"), created, thumbnail BLOB NULL (JPEG)
    exclusions  the same columns as embeddings: faces marked "not this person" (a wrong match corrected); the
                matcher never names the person for a face closer to one of these than to the person's own faces

Other modules may keep their own tables in the same file (the visit log, :mod:`edge.visits`) through
:meth:`Gallery.transaction` and :meth:`Gallery.read`; a foreign key to ``persons(id)`` makes their rows follow a
person through :meth:`Gallery.merge` and go with them on :meth:`Gallery.remove`.
"""

from __future__ import annotations

import difflib
import logging
import os
import sqlite3
import time
import unicodedata
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Sequence, Union

import numpy as np

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
# "DrFc": lets `file` and sqlite tools tell a gallery from other SQLite files.
APPLICATION_ID = 0x44724663
MAX_NAME_LENGTH = 64
BUSY_TIMEOUT_S = 10.0
_SQLITE_MAGIC = b"SQLite format 3\x00"
_VECTOR_DTYPE = np.dtype("<f4")
_META_KEYS = ("schema_version", "embedder_key", "embedder_sha256", "dim", "metric", "created")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS persons (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    created REAL NOT NULL,
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS embeddings (
    id INTEGER PRIMARY KEY,
    person_id INTEGER NOT NULL REFERENCES persons(id) ON DELETE CASCADE,
    vector BLOB NOT NULL,
    source TEXT NOT NULL,
    created REAL NOT NULL,
    thumbnail BLOB
);
CREATE INDEX IF NOT EXISTS embeddings_person ON embeddings(person_id);
CREATE TABLE IF NOT EXISTS exclusions (
    id INTEGER PRIMARY KEY,
    person_id INTEGER NOT NULL REFERENCES persons(id) ON DELETE CASCADE,
    vector BLOB NOT NULL,
    source TEXT NOT NULL,
    created REAL NOT NULL,
    thumbnail BLOB
);
CREATE INDEX IF NOT EXISTS exclusions_person ON exclusions(person_id);
"""
# Tables added after schema version 1 shipped: created on open when missing (an older doorface ignores them).
_ADDED_TABLES = ("exclusions",)

PathLike = Union[str, "os.PathLike[str]"]


class GalleryError(RuntimeError):
    """The gallery file cannot be used (missing, unreadable, not a gallery, corrupt) or a request on it failed."""


class GalleryMismatchError(GalleryError):
    """The gallery was made with another embedder; its embeddings cannot be compared with this one's."""


class PersonNotFound(GalleryError):
    """No enrolled person has that name."""


class InvalidNameError(GalleryError):
    """A person name that is empty, too long or holds control characters."""


class NameTakenError(GalleryError):
    """Renaming onto (or creating) a name another enrolled person already has."""


class SampleNotFound(GalleryError):
    """No enrolled face (sample) has that id, or it belongs to another person."""


@dataclass(frozen=True)
class Person:
    id: int
    name: str
    embeddings: int
    created: float
    updated: float


@dataclass(frozen=True)
class Sample:
    """One enrolled face of a person: where it came from and whether a thumbnail was kept."""

    id: int
    person: str
    source: str
    created: float
    has_thumbnail: bool


@dataclass(frozen=True)
class StoredFace:
    """One stored embedding of a person with its vector and thumbnail bytes (what the household sync shares)."""

    id: int
    vector: np.ndarray
    source: str
    thumbnail: Optional[bytes]


def validate_name(name: str) -> str:
    """The canonical form of a display name (stripped, Unicode NFC), or :class:`InvalidNameError`.

    NFC so that "José" typed on two keyboards (precomposed or combining accent) is one person, not two.
    """
    if not isinstance(name, str):
        raise InvalidNameError(f"a person name must be text, got {type(name).__name__}")
    clean = unicodedata.normalize("NFC", name).strip()
    if not clean:
        raise InvalidNameError("a person name must not be empty; give the name to show, e.g. \"Anna\"")
    if len(clean) > MAX_NAME_LENGTH:
        raise InvalidNameError(f"person name {clean[:20]!r}… is {len(clean)} characters; "
                               f"use at most {MAX_NAME_LENGTH}")
    bad = [c for c in clean if unicodedata.category(c) == "Cc"]
    if bad:
        raise InvalidNameError(f"person name {clean!r} holds control characters ({', '.join(map(repr, bad))}); "
                               "use a name on one line without tabs")
    return clean


def _short(sha256: str) -> str:
    return (sha256 or "?")[:12]


class Gallery:
    """An open gallery file. Use :meth:`open`; close it (or use it as a context manager) when done."""

    def __init__(self, path: Path, connection: sqlite3.Connection, meta: dict[str, str]):
        self._path = path
        self._conn: Optional[sqlite3.Connection] = connection
        self._meta = meta
        self._depth = 0  # savepoints open inside transaction()

    # --- opening -------------------------------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        path: PathLike,
        *,
        embedder_key: str,
        embedder_sha256: str,
        dim: int,
        metric: str,
        create: bool = True,
    ) -> Gallery:
        """Open the gallery at ``path``, creating it (and its folder) if missing and ``create`` is true.

        Raises:
            GalleryError: missing with ``create=False``; not a regular file; not a doorface gallery; corrupt;
                made by a newer doorface; cannot be created or written (permissions, read-only disk).
            GalleryMismatchError: made with another embedder (the file is left untouched).
        """
        path = Path(path).expanduser()
        expected = {"embedder_key": str(embedder_key), "embedder_sha256": str(embedder_sha256).lower(),
                    "dim": str(int(dim)), "metric": str(metric)}
        if int(dim) <= 0:
            raise ValueError(f"embedding dim must be positive, got {dim}")
        exists = path.exists()
        if exists:
            _check_header(path)
        elif not create:
            raise GalleryError(f"no gallery at {path}; enroll someone first (doorface enroll --gallery {path} ...) "
                               "or point gallery.path at the existing file")
        else:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise GalleryError(f"cannot create the folder of gallery {path}: {exc.strerror or exc}; "
                                   "choose a writable location with --gallery or gallery.path") from None

        conn = _connect(path)
        try:
            meta = _read_meta(conn, path) if _has_content(path) else None
            if meta is None and not create:
                raise GalleryError(f"{path} is an empty file, not a gallery yet; enroll someone first "
                                   f"(doorface enroll --gallery {path} ...)")
            if meta is None:
                meta = _initialise(conn, path, expected)
            else:
                _check_meta(meta, expected, path)
                # Only after the checks: switching the journal mode writes to the file header.
                conn.execute("PRAGMA journal_mode=WAL")
                _add_missing_tables(conn)
        except sqlite3.Error as exc:
            conn.close()
            raise _db_error(path, exc) from None
        except BaseException:
            conn.close()
            raise
        logger.debug("opened gallery %s (%s, sha256 %s…)", path, meta["embedder_key"], _short(meta["embedder_sha256"]))
        return cls(path, conn, meta)

    # --- properties and lifetime ------------------------------------------------------------------------------------

    @property
    def path(self) -> Path:
        return self._path

    @property
    def embedder_key(self) -> str:
        return self._meta["embedder_key"]

    @property
    def embedder_sha256(self) -> str:
        return self._meta["embedder_sha256"]

    @property
    def dim(self) -> int:
        return int(self._meta["dim"])

    @property
    def metric(self) -> str:
        return self._meta["metric"]

    def require_embedder(self, key: str, sha256: str) -> None:
        """:class:`GalleryMismatchError` unless embeddings of model ``key`` / ``sha256`` are comparable with ours."""
        expected = {"embedder_key": key, "embedder_sha256": sha256.lower(), "dim": self._meta["dim"],
                    "metric": self._meta["metric"]}
        _check_meta(self._meta, expected, self._path)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> Gallery:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Gallery({str(self._path)!r}, embedder={self.embedder_key!r})"

    # --- reads ---------------------------------------------------------------------------------------------------

    def persons(self) -> list[Person]:
        """Every enrolled person with their embedding count, sorted by name (case-insensitively)."""
        rows = self._query(
            "SELECT p.id, p.name, COUNT(e.id), p.created, p.updated FROM persons p "
            "LEFT JOIN embeddings e ON e.person_id = p.id GROUP BY p.id"
        )
        people = [Person(int(i), str(n), int(k), float(c), float(u)) for i, n, k, c, u in rows]
        return sorted(people, key=lambda p: (p.name.casefold(), p.name))

    def person(self, name: str) -> Person:
        """One enrolled person, or :class:`PersonNotFound`."""
        clean = validate_name(name)
        rows = self._query(
            "SELECT p.id, p.name, COUNT(e.id), p.created, p.updated FROM persons p "
            "LEFT JOIN embeddings e ON e.person_id = p.id WHERE p.name = ? GROUP BY p.id", (clean,)
        )
        if not rows:
            raise self._not_found(clean)
        i, n, k, c, u = rows[0]
        return Person(int(i), str(n), int(k), float(c), float(u))

    def __contains__(self, name: object) -> bool:
        try:
            self.person(name)  # type: ignore[arg-type]
        except (PersonNotFound, InvalidNameError):
            return False
        return True

    def __len__(self) -> int:
        return int(self._query("SELECT COUNT(*) FROM persons")[0][0])

    def embeddings(self) -> dict[str, np.ndarray]:
        """name → (k, dim) float32 embeddings, in enrollment order; names sorted as in :meth:`persons`."""
        rows = self._query(
            "SELECT p.name, e.vector FROM embeddings e JOIN persons p ON p.id = e.person_id ORDER BY p.name, e.id"
        )
        grouped: dict[str, list[np.ndarray]] = {}
        for name, blob in rows:
            grouped.setdefault(str(name), []).append(self._vector(blob, name))
        return {name: np.stack(grouped[name]) for name in sorted(grouped, key=lambda n: (n.casefold(), n))}

    def thumbnails(self, name: str) -> list[tuple[str, bytes]]:
        """(source, JPEG bytes) of each of the person's embeddings that kept a thumbnail, in enrollment order."""
        person = self.person(name)
        rows = self._query(
            "SELECT source, thumbnail FROM embeddings WHERE person_id = ? AND thumbnail IS NOT NULL ORDER BY id",
            (person.id,),
        )
        return [(str(source), bytes(thumb)) for source, thumb in rows]

    def sources(self, name: str) -> list[str]:
        """Where each of the person's embeddings came from (photo path or video frame), in enrollment order."""
        person = self.person(name)
        return [str(s) for (s,) in self._query("SELECT source FROM embeddings WHERE person_id = ? ORDER BY id",
                                                (person.id,))]

    def faces(self, name: str) -> list[StoredFace]:
        """Each of the person's embeddings with its row id, vector, source and thumbnail, in enrollment order."""
        person = self.person(name)
        rows = self._query("SELECT id, vector, source, thumbnail FROM embeddings WHERE person_id = ? ORDER BY id",
                           (person.id,))
        return [StoredFace(int(i), self._vector(blob, person.name), str(source),
                           None if thumb is None else bytes(thumb)) for i, blob, source, thumb in rows]

    def samples(self, name: str) -> list[Sample]:
        """The person's enrolled faces, in enrollment order."""
        person = self.person(name)
        rows = self._query("SELECT id, source, created, thumbnail IS NOT NULL FROM embeddings WHERE person_id = ? "
                           "ORDER BY id", (person.id,))
        return [Sample(int(i), person.name, str(s), float(c), bool(t)) for i, s, c, t in rows]

    def sample_thumbnail(self, sample_id: int) -> bytes:
        """The JPEG thumbnail of one enrolled face, or :class:`SampleNotFound` (unknown id, or none kept)."""
        rows = self._query("SELECT thumbnail FROM embeddings WHERE id = ?", (int(sample_id),))
        if not rows or rows[0][0] is None:
            raise SampleNotFound(f"gallery {self._path} has no enrolled face {sample_id} with a thumbnail")
        return bytes(rows[0][0])

    def exclusions(self) -> dict[str, np.ndarray]:
        """name → (k, dim) float32 faces marked "not this person", for the persons that have any."""
        rows = self._query(
            "SELECT p.name, x.vector FROM exclusions x JOIN persons p ON p.id = x.person_id ORDER BY p.name, x.id"
        )
        grouped: dict[str, list[np.ndarray]] = {}
        for name, blob in rows:
            grouped.setdefault(str(name), []).append(self._vector(blob, name))
        return {name: np.stack(vectors) for name, vectors in grouped.items()}

    def revision(self) -> int:
        """A counter bumped by every write, from any process: poll it to know when to rebuild a matcher."""
        rows = self._query("SELECT value FROM meta WHERE key = 'revision'")
        return int(rows[0][0]) if rows else 0

    # --- writes --------------------------------------------------------------------------------------------------

    def add(
        self,
        name: str,
        vectors: np.ndarray,
        sources: Sequence[str],
        thumbnails: Optional[Sequence[Optional[bytes]]] = None,
        *,
        new_person: bool = False,
    ) -> Person:
        """Add embeddings (N, dim) to ``name``, creating the person if new; all or nothing, in one transaction.

        ``new_person=True``: the person must not exist yet (naming an unknown visitor), else :class:`NameTakenError`.

        Raises:
            InvalidNameError: see :func:`validate_name`.
            ValueError: vectors of the wrong shape, not finite or zero, or sources/thumbnails of another length.
        """
        clean = validate_name(name)
        rows = self._rows(vectors, sources, thumbnails)
        now = time.time()
        with self._write() as cur:
            if new_person and cur.execute("SELECT 1 FROM persons WHERE name = ?", (clean,)).fetchone():
                raise NameTakenError(f"{clean!r} is already enrolled in {self._path}; choose another name, or add "
                                     f"these faces to {clean!r} instead")
            cur.execute("INSERT INTO persons (name, created, updated) VALUES (?, ?, ?) "
                        "ON CONFLICT(name) DO UPDATE SET updated = excluded.updated", (clean, now, now))
            person_id = cur.execute("SELECT id FROM persons WHERE name = ?", (clean,)).fetchone()[0]
            cur.executemany(
                "INSERT INTO embeddings (person_id, vector, source, created, thumbnail) VALUES (?, ?, ?, ?, ?)",
                [(person_id, *row[:2], now, row[2]) for row in rows],
            )
        logger.info("gallery %s: added %d embedding(s) to %r", self._path, len(rows), clean)
        return self.person(clean)

    def exclude(self, name: str, vectors: np.ndarray, sources: Sequence[str],
                thumbnails: Optional[Sequence[Optional[bytes]]] = None) -> Person:
        """Mark faces (N, dim) as "not ``name``" (a wrong match corrected): the matcher will not name ``name`` for a
        face closer to one of these than to ``name``'s own faces, and sets aside ``name``'s enrolled faces that lie
        closer to them than to the rest of ``name``'s."""
        person = self.person(name)
        rows = self._rows(vectors, sources, thumbnails)
        with self._write() as cur:
            cur.executemany(
                "INSERT INTO exclusions (person_id, vector, source, created, thumbnail) VALUES (?, ?, ?, ?, ?)",
                [(person.id, *row[:2], time.time(), row[2]) for row in rows],
            )
            cur.execute("UPDATE persons SET updated = ? WHERE id = ?", (time.time(), person.id))
        logger.info("gallery %s: %d face(s) marked as not %r", self._path, len(rows), person.name)
        return self.person(person.name)

    def exclude_sample(self, name: str, sample_id: int) -> Person:
        """One of ``name``'s enrolled faces is someone else: it stops being theirs and becomes an exclusion."""
        person = self.person(name)
        with self._write() as cur:
            moved = cur.execute(
                "INSERT INTO exclusions (person_id, vector, source, created, thumbnail) "
                "SELECT person_id, vector, source, ?, thumbnail FROM embeddings WHERE id = ? AND person_id = ?",
                (time.time(), int(sample_id), person.id)).rowcount
            if not moved:
                raise SampleNotFound(f"{person.name!r} has no enrolled face {sample_id} in {self._path}; list them "
                                     f"with `doorface people samples {person.name!r}`")
            cur.execute("DELETE FROM embeddings WHERE id = ?", (int(sample_id),))
            cur.execute("UPDATE persons SET updated = ? WHERE id = ?", (time.time(), person.id))
        logger.info("gallery %s: face %d of %r excluded", self._path, sample_id, person.name)
        return self.person(person.name)

    def merge(self, source: str, target: str) -> Person:
        """``source`` and ``target`` are one person: ``source``'s faces, exclusions and every row of other tables
        that refers to them (their visits) move to ``target``, and ``source`` is removed."""
        src, dst = self.person(source), self.person(target)
        if src.id == dst.id:
            raise InvalidNameError(f"cannot merge {src.name!r} into itself; name two different people")
        with self._write() as cur:
            for table, column in _person_references(cur):
                cur.execute(f'UPDATE "{table}" SET "{column}" = ? WHERE "{column}" = ?', (dst.id, src.id))
            cur.execute("DELETE FROM persons WHERE id = ?", (src.id,))
            cur.execute("UPDATE persons SET updated = ? WHERE id = ?", (time.time(), dst.id))
        logger.info("gallery %s: merged %r into %r", self._path, src.name, dst.name)
        return self.person(dst.name)

    def rename(self, old: str, new: str) -> Person:
        """Rename a person, keeping their embeddings. :class:`NameTakenError` if ``new`` is someone else's."""
        old_clean, new_clean = validate_name(old), validate_name(new)
        person = self.person(old_clean)
        if new_clean == person.name:
            return person
        with self._write() as cur:
            taken = cur.execute("SELECT 1 FROM persons WHERE name = ?", (new_clean,)).fetchone()
            if taken:
                raise NameTakenError(f"cannot rename {old_clean!r} to {new_clean!r}: that name is already enrolled "
                                     f"in {self._path}; remove or rename that person first")
            cur.execute("UPDATE persons SET name = ?, updated = ? WHERE id = ?", (new_clean, time.time(), person.id))
        logger.info("gallery %s: renamed %r to %r", self._path, old_clean, new_clean)
        return self.person(new_clean)

    def remove(self, name: str) -> Person:
        """Remove a person and all their embeddings and thumbnails; returns the person as they were."""
        person = self.person(name)
        with self._write() as cur:
            cur.execute("DELETE FROM persons WHERE id = ?", (person.id,))
        logger.info("gallery %s: removed %r (%d embeddings)", self._path, person.name, person.embeddings)
        return person

    def remove_samples(self, name: str, sample_ids: Sequence[int]) -> Person:
        """Remove some of a person's embeddings (row ids from :meth:`samples`), in one transaction; ids that are
        not the person's are ignored. Removing every one of them removes the person (nobody without a face)."""
        person = self.person(name)
        ids = [int(i) for i in sample_ids]
        with self._write() as cur:
            cur.executemany("DELETE FROM embeddings WHERE id = ? AND person_id = ?", [(i, person.id) for i in ids])
            left = cur.execute("SELECT COUNT(*) FROM embeddings WHERE person_id = ?", (person.id,)).fetchone()[0]
            if left == 0:
                cur.execute("DELETE FROM persons WHERE id = ?", (person.id,))
            else:
                cur.execute("UPDATE persons SET updated = ? WHERE id = ?", (time.time(), person.id))
        logger.info("gallery %s: removed %d embedding(s) of %r", self._path, len(ids), person.name)
        return person if left == 0 else self.person(person.name)

    # --- the file's other tables --------------------------------------------------------------------------------------

    def read(self, sql: str, params: tuple = ()) -> list[tuple]:
        """Rows of a query on this file (for modules that keep their own tables here); errors as GalleryError."""
        return self._query(sql, params)

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Cursor]:
        """One write transaction on this file, for changes that must land together or not at all (naming a visitor
        group: the person's new faces and the visits they came from). Gallery methods called inside join it; only
        they bump :meth:`revision`. Nested uses are savepoints."""
        conn = self._connection()
        if conn.in_transaction:
            name = f"nested_{id(conn)}_{self._depth}"
            self._depth += 1
            try:
                conn.execute(f"SAVEPOINT {name}")
                try:
                    yield conn.cursor()
                except BaseException:
                    with suppress(sqlite3.Error):
                        conn.execute(f"ROLLBACK TO {name}")
                        conn.execute(f"RELEASE {name}")
                    raise
                conn.execute(f"RELEASE {name}")
            except sqlite3.Error as exc:
                raise _db_error(self._path, exc) from None
            finally:
                self._depth -= 1
            return
        try:
            # IMMEDIATE takes the write lock up front, so a concurrent writer waits instead of failing mid-way.
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise _db_error(self._path, exc) from None
        try:
            yield conn.cursor()
            conn.execute("COMMIT")
        except BaseException as exc:
            # The transaction may already be gone (e.g. the disk failed); the error re-raised below says why.
            with suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error):
                raise _db_error(self._path, exc) from None
            raise

    # --- internals -----------------------------------------------------------------------------------------------

    def _rows(self, vectors: np.ndarray, sources: Sequence[str],
              thumbnails: Optional[Sequence[Optional[bytes]]]) -> list[tuple]:
        """(vector bytes, source, thumbnail) rows, checked: see :meth:`add`."""
        vectors = np.asarray(vectors)
        if vectors.ndim == 1:
            vectors = vectors[None]
        if vectors.ndim != 2 or vectors.shape[1] != self.dim or len(vectors) == 0:
            raise ValueError(f"expected embeddings of shape (N >= 1, {self.dim}) for gallery {self._path} "
                             f"(embedder {self.embedder_key}), got {vectors.shape}")
        vectors = vectors.astype(_VECTOR_DTYPE)
        if not np.all(np.isfinite(vectors)) or np.any(np.linalg.norm(vectors, axis=1) == 0):
            raise ValueError("embeddings must be finite and non-zero")
        sources = list(sources)
        if len(sources) != len(vectors) or not all(isinstance(s, str) for s in sources):
            raise ValueError(f"expected {len(vectors)} source strings, one per embedding, got {len(sources)}")
        thumbs = [None] * len(vectors) if thumbnails is None else list(thumbnails)
        if len(thumbs) != len(vectors):
            raise ValueError(f"expected {len(vectors)} thumbnails (or None), got {len(thumbs)}")
        return [(v.tobytes(), s, None if t is None else sqlite3.Binary(bytes(t)))
                for v, s, t in zip(vectors, sources, thumbs)]

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise GalleryError(f"gallery {self._path} is closed; open it again with Gallery.open")
        return self._conn

    def _query(self, sql: str, params: tuple = ()) -> list[tuple]:
        try:
            return self._connection().execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise _db_error(self._path, exc) from None

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Cursor]:
        """A transaction (or a savepoint inside one) that changes who is enrolled: it bumps the revision."""
        with self.transaction() as cur:
            try:
                yield cur
                cur.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'revision'")
            except sqlite3.Error as exc:
                raise _db_error(self._path, exc) from None

    def _vector(self, blob: bytes, name: str) -> np.ndarray:
        if len(blob) != self.dim * _VECTOR_DTYPE.itemsize:
            raise GalleryError(f"gallery {self._path} is corrupt: an embedding of {name!r} has {len(blob)} bytes, "
                               f"expected {self.dim * _VECTOR_DTYPE.itemsize}; remove and re-enroll {name!r}")
        return np.frombuffer(blob, dtype=_VECTOR_DTYPE).astype(np.float32)

    def _not_found(self, name: str) -> PersonNotFound:
        names = [n for (n,) in self._query("SELECT name FROM persons")]
        folded = {n.casefold(): n for n in names}
        close = ([folded[name.casefold()]] if name.casefold() in folded
                 else difflib.get_close_matches(name, names, n=3, cutoff=0.6))
        hint = f"did you mean {', '.join(map(repr, close))}?" if close else (
            f"enrolled: {', '.join(map(repr, sorted(names)))}" if names else "the gallery is empty")
        return PersonNotFound(f"no person named {name!r} in gallery {self._path}; {hint}")


# --- module helpers --------------------------------------------------------------------------------------------------

_RECOVER = "restore it from a backup, or enroll into a new gallery (doorface enroll --gallery NEW ...)"


def _check_header(path: Path) -> None:
    """Reject what is plainly not an SQLite file before SQLite touches it."""
    if not path.is_file():
        raise GalleryError(f"gallery path {path} is not a regular file; point --gallery / gallery.path at a file")
    try:
        with open(path, "rb") as f:
            head = f.read(len(_SQLITE_MAGIC))
    except OSError as exc:
        raise GalleryError(f"cannot read gallery {path}: {exc.strerror or exc}; check its permissions") from None
    if head and head != _SQLITE_MAGIC:
        raise GalleryError(f"{path} is not a doorface gallery (not an SQLite database); it was left untouched. "
                           f"Pass another path with --gallery, or move that file away")


def _db_error(path: Path, exc: sqlite3.Error) -> GalleryError:
    """An SQLite error as a :class:`GalleryError` that says what to do."""
    text = str(exc)
    lowered = text.lower()
    if "not a database" in lowered or "malformed" in lowered or "corrupt" in lowered:
        return GalleryError(f"gallery {path} is corrupt or not a doorface gallery ({text}); it was left as it is. "
                            f"{_RECOVER[0].upper()}{_RECOVER[1:]}")
    if "readonly" in lowered or "read-only" in lowered:
        return GalleryError(f"gallery {path} cannot be written ({text}); the file and its folder must be writable "
                            "by this user (SQLite keeps -wal and -shm files beside it)")
    if "locked" in lowered or "busy" in lowered:
        return GalleryError(f"gallery {path} is locked by another process ({text}); wait for that enrollment to "
                            "finish and try again")
    if "unable to open" in lowered:
        return GalleryError(f"cannot open gallery {path} ({text}); check that its folder exists and is writable")
    if "disk" in lowered or "full" in lowered:
        return GalleryError(f"gallery {path}: {text}; the last change was not saved. Check free space, then try "
                            "again")
    return GalleryError(f"gallery {path}: {text}")


def _has_content(path: Path) -> bool:
    # SQLite treats an empty file as an empty database; e.g. a crash before the first commit leaves one.
    try:
        return path.stat().st_size > 0
    except OSError:
        return False


def _connect(path: Path) -> sqlite3.Connection:
    try:
        conn = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT_S, isolation_level=None)
    except sqlite3.Error as exc:
        raise _db_error(path, exc) from None
    try:
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA synchronous=FULL")
    except sqlite3.Error as exc:
        conn.close()
        raise _db_error(path, exc) from None
    return conn


def _add_missing_tables(conn: sqlite3.Connection) -> None:
    have = {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if all(table in have for table in _ADDED_TABLES):
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        for statement in filter(str.strip, _SCHEMA.split(";")):
            conn.execute(statement)  # all IF NOT EXISTS: only the missing ones are made
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _person_references(cur: sqlite3.Cursor) -> list[tuple[str, str]]:
    """(table, column) of every foreign key to persons(id) in the file, whichever module made the table."""
    tables = [name for (name,) in cur.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    found = []
    for table in tables:
        for row in cur.execute(f'PRAGMA foreign_key_list("{table}")').fetchall():
            if row[2] == "persons" and (row[4] in (None, "id")):
                found.append((table, str(row[3])))
    return found


def _read_meta(conn: sqlite3.Connection, path: Path) -> Optional[dict[str, str]]:
    """The meta table of an existing file; None for a database with no tables yet (an interrupted creation)."""
    tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if not tables:
        return None
    (app_id,) = conn.execute("PRAGMA application_id").fetchone()
    if "meta" not in tables or app_id not in (0, APPLICATION_ID):
        raise GalleryError(f"{path} is an SQLite database but not a doorface gallery (tables: "
                           f"{', '.join(sorted(tables))}); it was left untouched. Pass another path with --gallery")
    meta = {str(k): str(v) for k, v in conn.execute("SELECT key, value FROM meta")}
    missing = [k for k in _META_KEYS if k not in meta] + [t for t in ("persons", "embeddings") if t not in tables]
    if missing:
        raise GalleryError(f"gallery {path} is incomplete or damaged (missing {', '.join(missing)}); {_RECOVER}")
    try:
        version = int(meta["schema_version"])
    except ValueError:
        raise GalleryError(f"gallery {path} is damaged (schema_version {meta['schema_version']!r}); "
                           f"{_RECOVER}") from None
    if version > SCHEMA_VERSION:
        raise GalleryError(f"gallery {path} has schema version {version}, newer than this doorface's "
                           f"{SCHEMA_VERSION}; upgrade doorface (pip install -U doorface)")
    return meta


def _check_meta(meta: dict[str, str], expected: dict[str, str], path: Path) -> None:
    have_key, have_sha = meta["embedder_key"], meta["embedder_sha256"].lower()
    want_key, want_sha = expected["embedder_key"], expected["embedder_sha256"]
    if have_sha != want_sha or meta["dim"] != expected["dim"] or meta["metric"] != expected["metric"]:
        made = f"'{have_key}' (sha256 {_short(have_sha)}…)"
        now = f"'{want_key}' (sha256 {_short(want_sha)}…)"
        if have_key == want_key:
            fix = (f"re-enroll into a new gallery (doorface enroll --gallery NEW ...) or restore the model file "
                   f"of '{have_key}' the gallery was made with")
            what = f"model '{have_key}' changed since the gallery was made: made with {made}, now {now}"
        else:
            fix = (f"re-enroll into a new gallery (doorface enroll --gallery NEW ...) or set embedder.model back "
                   f"to {have_key}")
            what = f"it was made with embedder {made}, but embedder {now} is configured"
        raise GalleryMismatchError(f"gallery {path} cannot be used: {what}; embeddings of different models cannot "
                                   f"be compared. The file was left untouched; {fix}")
    if have_key != want_key:
        # Same bytes under another manifest key (a renamed entry): the embeddings are still comparable.
        logger.warning("gallery %s was made with embedder key %r; %r has the same model file (sha256 %s…)",
                       path, have_key, want_key, _short(want_sha))


def _initialise(conn: sqlite3.Connection, path: Path, expected: dict[str, str]) -> dict[str, str]:
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("BEGIN IMMEDIATE")
    try:
        # Another process may have created it between our size check and the lock: then check theirs instead.
        if conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table'").fetchone():
            conn.execute("ROLLBACK")
            meta = _read_meta(conn, path)
            if meta is None:  # pragma: no cover - tables vanished between two reads
                raise GalleryError(f"gallery {path} changed while opening it; try again")
            _check_meta(meta, expected, path)
            return meta
        # executescript() would COMMIT first; one statement at a time keeps the creation in this transaction.
        for statement in filter(str.strip, _SCHEMA.split(";")):
            conn.execute(statement)
        meta = {"schema_version": str(SCHEMA_VERSION), **expected, "created": repr(time.time()), "revision": "0"}
        conn.executemany("INSERT INTO meta (key, value) VALUES (?, ?)", meta.items())
        conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    logger.info("created gallery %s for embedder %s (sha256 %s…)", path, expected["embedder_key"],
                _short(expected["embedder_sha256"]))
    return meta
