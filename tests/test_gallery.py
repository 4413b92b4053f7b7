"""The SQLite gallery: persistence, names, integrity checks, refusing foreign files, surviving SIGKILL mid-write."""

from __future__ import annotations

import hashlib
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from edge.gallery import (
    APPLICATION_ID,
    MAX_NAME_LENGTH,
    Gallery,
    GalleryError,
    GalleryMismatchError,
    InvalidNameError,
    NameTakenError,
    PersonNotFound,
    validate_name,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
DIM = 128
KEY, SHA = "dlib_resnet", "ab" * 32
OTHER_KEY, OTHER_SHA = "mobilefacenet", "cd" * 32


def open_gallery(path: Path, **overrides) -> Gallery:
    kwargs = {"embedder_key": KEY, "embedder_sha256": SHA, "dim": DIM, "metric": "cosine", **overrides}
    return Gallery.open(path, **kwargs)


def unit_vectors(n: int, seed: int = 0, dim: int = DIM) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def path(tmp_path) -> Path:
    return tmp_path / "nested" / "folder" / "gallery.sqlite"


def test_create_add_and_reopen(path):
    alice, bob = unit_vectors(3, 1), unit_vectors(2, 2)
    with open_gallery(path) as gallery:
        assert path.is_file()  # parent folders created
        assert gallery.persons() == [] and len(gallery) == 0 and gallery.embeddings() == {}
        person = gallery.add("Alice", alice, ["a1.jpg", "a2.jpg", "a3.jpg"], [b"\xff\xd8jpeg1", None, b"\xff\xd8j3"])
        assert (person.name, person.embeddings) == ("Alice", 3)
        gallery.add("bob", bob[:1], ["video:door.mp4#10"])
        again = gallery.add("bob", bob[1:], ["video:door.mp4#20"])
        assert again.embeddings == 2 and again.updated >= again.created
        assert gallery.revision() == 3
    with open_gallery(path, create=False) as gallery:
        assert [(p.name, p.embeddings) for p in gallery.persons()] == [("Alice", 3), ("bob", 2)]  # case-insensitive
        stored = gallery.embeddings()
        assert list(stored) == ["Alice", "bob"]
        assert stored["Alice"].dtype == np.float32 and stored["Alice"].shape == (3, DIM)
        np.testing.assert_array_equal(stored["Alice"], alice)
        np.testing.assert_array_equal(stored["bob"], bob)
        assert gallery.thumbnails("Alice") == [("a1.jpg", b"\xff\xd8jpeg1"), ("a3.jpg", b"\xff\xd8j3")]
        assert gallery.sources("bob") == ["video:door.mp4#10", "video:door.mp4#20"]
        assert "Alice" in gallery and "Carol" not in gallery
        assert (gallery.path, gallery.embedder_key, gallery.embedder_sha256) == (path, KEY, SHA)


def test_file_format_wal_foreign_keys_and_ids(path):
    open_gallery(path).close()
    conn = sqlite3.connect(str(path))
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
        meta = dict(conn.execute("SELECT key, value FROM meta"))
        assert meta["embedder_key"] == KEY and meta["embedder_sha256"] == SHA
        assert meta["dim"] == str(DIM) and meta["metric"] == "cosine" and meta["schema_version"] == "1"
        fk = conn.execute("PRAGMA foreign_key_list(embeddings)").fetchall()
        assert any(row[2] == "persons" and row[6] == "CASCADE" for row in fk)
    finally:
        conn.close()


def test_unicode_names_are_kept_and_normalised(path):
    with open_gallery(path) as gallery:
        gallery.add("  Zoë Åström  ", unit_vectors(1, 1), ["z.jpg"])
        gallery.add("李雷", unit_vectors(1, 2), ["l.jpg"])
        decomposed = "Jose\u0301"  # "José" typed with a combining accent
        gallery.add(decomposed, unit_vectors(1, 3), ["j1.jpg"])
        gallery.add("Jos\u00e9", unit_vectors(1, 4), ["j2.jpg"])
        names = {p.name: p.embeddings for p in gallery.persons()}
        assert names == {"Zoë Åström": 1, "李雷": 1, "José": 2}
        assert gallery.person("Zoë Åström ").name == "Zoë Åström"


@pytest.mark.parametrize("bad", ["", "   ", "x" * (MAX_NAME_LENGTH + 1), "Anna\nBob", "tab\there", 42])
def test_invalid_names_are_refused_and_nothing_is_written(path, bad):
    with open_gallery(path) as gallery:
        with pytest.raises(InvalidNameError):
            gallery.add(bad, unit_vectors(1), ["a.jpg"])
        assert gallery.persons() == [] and gallery.revision() == 0
    assert validate_name("x" * MAX_NAME_LENGTH) == "x" * MAX_NAME_LENGTH


def test_bad_vectors_are_refused_and_nothing_is_written(path):
    with open_gallery(path) as gallery:
        gallery.add("Alice", unit_vectors(1), ["a.jpg"])
        with pytest.raises(ValueError, match=r"\(N >= 1, 128\)"):
            gallery.add("Alice", unit_vectors(2, dim=64), ["b.jpg", "c.jpg"])
        with pytest.raises(ValueError, match="shape"):
            gallery.add("Alice", np.zeros((0, DIM)), [])
        nan = unit_vectors(1)
        nan[0, 3] = np.nan
        with pytest.raises(ValueError, match="finite"):
            gallery.add("Alice", nan, ["n.jpg"])
        with pytest.raises(ValueError, match="source"):
            gallery.add("Alice", unit_vectors(2), ["only-one.jpg"])
        with pytest.raises(ValueError, match="thumbnails"):
            gallery.add("Carol", unit_vectors(2), ["c1.jpg", "c2.jpg"], [None])
        assert [(p.name, p.embeddings) for p in gallery.persons()] == [("Alice", 1)]


def test_rename_and_remove(path):
    with open_gallery(path) as gallery:
        gallery.add("Alice", unit_vectors(2, 1), ["a1", "a2"], [b"t1", b"t2"])
        gallery.add("Bob", unit_vectors(3, 2), ["b1", "b2", "b3"])
        renamed = gallery.rename("Alice", "Alicia")
        assert renamed.name == "Alicia" and renamed.embeddings == 2
        assert gallery.thumbnails("Alicia") == [("a1", b"t1"), ("a2", b"t2")]
        assert gallery.rename("Alicia", " Alicia ").name == "Alicia"  # same name: nothing to do
        with pytest.raises(NameTakenError, match="'Bob'.*already enrolled"):
            gallery.rename("Alicia", "Bob")
        with pytest.raises(PersonNotFound, match="did you mean 'Alicia'"):
            gallery.rename("Alice", "Carol")
        with pytest.raises(PersonNotFound, match="did you mean 'Bob'"):
            gallery.remove("bob")

        removed = gallery.remove("Bob")
        assert (removed.name, removed.embeddings) == ("Bob", 3)
        assert list(gallery.embeddings()) == ["Alicia"]
        with pytest.raises(PersonNotFound, match="enrolled: 'Alicia'"):
            gallery.thumbnails("Bob")
    conn = sqlite3.connect(str(path))
    try:  # the cascade removed Bob's rows, not only the person
        assert conn.execute("SELECT COUNT(*) FROM embeddings").fetchone()[0] == 2
        assert conn.execute("SELECT COUNT(*) FROM persons").fetchone()[0] == 1
    finally:
        conn.close()


def test_two_handles_see_each_others_writes(path):
    with open_gallery(path) as writer, open_gallery(path) as reader:
        before = reader.revision()
        writer.add("Alice", unit_vectors(1), ["a.jpg"])
        assert reader.revision() == before + 1
        assert [p.name for p in reader.persons()] == ["Alice"]


def test_missing_gallery_without_create(tmp_path):
    target = tmp_path / "none" / "gallery.sqlite"
    with pytest.raises(GalleryError, match=f"no gallery at {target}.*doorface enroll"):
        open_gallery(target, create=False)
    assert not target.exists() and not target.parent.exists()


def test_closed_gallery_says_so(path):
    gallery = open_gallery(path)
    gallery.close()
    gallery.close()
    with pytest.raises(GalleryError, match="closed"):
        gallery.persons()


def test_other_embedder_is_refused_and_the_file_left_untouched(path):
    with open_gallery(path) as gallery:
        gallery.add("Alice", unit_vectors(2), ["a1", "a2"])
    before = digest(path)
    with pytest.raises(GalleryMismatchError) as info:
        open_gallery(path, embedder_key=OTHER_KEY, embedder_sha256=OTHER_SHA, dim=192)
    message = str(info.value)
    for part in (str(path), KEY, SHA[:12], OTHER_KEY, OTHER_SHA[:12], "--gallery NEW",
                 f"set embedder.model back to {KEY}"):
        assert part in message
    assert digest(path) == before

    # Same key, other bytes (the model was re-converted): the message says so rather than "set it back".
    with pytest.raises(GalleryMismatchError, match="changed since the gallery was made"):
        open_gallery(path, embedder_sha256=OTHER_SHA)
    assert digest(path) == before
    with open_gallery(path) as gallery:  # still a working gallery
        assert gallery.embeddings()["Alice"].shape == (2, DIM)


@pytest.mark.parametrize("content", [
    os.urandom(4096),
    b"SQLite format 3\x00" + os.urandom(4080),
    b"name,embedding\nAlice,0.1\n",
])
def test_a_file_that_is_no_gallery_is_refused_and_left_untouched(tmp_path, content):
    target = tmp_path / "gallery.sqlite"
    target.write_bytes(content)
    with pytest.raises(GalleryError, match=str(target)) as info:
        open_gallery(target)
    assert not isinstance(info.value, GalleryMismatchError)
    assert "--gallery" in str(info.value)
    assert target.read_bytes() == content


def test_another_sqlite_database_is_refused_and_left_untouched(tmp_path):
    target = tmp_path / "outbox.sqlite"
    conn = sqlite3.connect(str(target))
    conn.execute("CREATE TABLE events (id INTEGER PRIMARY KEY, payload TEXT)")
    conn.execute("INSERT INTO events (payload) VALUES ('x')")
    conn.commit()
    conn.close()
    before = digest(target)
    with pytest.raises(GalleryError, match="not a doorface gallery.*events"):
        open_gallery(target)
    assert digest(target) == before


def test_a_folder_is_refused(tmp_path):
    with pytest.raises(GalleryError, match="not a regular file"):
        open_gallery(tmp_path)


def test_an_empty_file_becomes_a_gallery(tmp_path):
    target = tmp_path / "gallery.sqlite"
    target.touch()
    with pytest.raises(GalleryError, match="empty file"):
        open_gallery(target, create=False)
    with open_gallery(target) as gallery:
        gallery.add("Alice", unit_vectors(1), ["a.jpg"])
    with open_gallery(target, create=False) as gallery:
        assert len(gallery) == 1


_WRITER = textwrap.dedent("""
    import itertools, sys, time
    from contextlib import contextmanager
    import numpy as np
    from edge.gallery import Gallery
    path, key, sha = sys.argv[1:4]
    dim, rows, stall = map(int, sys.argv[4:7])
    write = Gallery._write

    @contextmanager
    def stalling_write(self):
        # Every row of the add is inserted, but the commit has not run yet: the worst moment to be killed.
        with write(self) as cursor:
            yield cursor
            if i == stall:
                print("inserted", i, flush=True)
                time.sleep(60)

    if stall >= 0:
        Gallery._write = stalling_write
    gallery = Gallery.open(path, embedder_key=key, embedder_sha256=sha, dim=dim, metric="cosine", create=False)
    vectors = np.random.default_rng(0).normal(size=(rows, dim)).astype(np.float32)
    for i in itertools.count():
        print("begin", i, flush=True)
        gallery.add(f"Person {i % 2}", vectors, [f"burst{i}/{j}" for j in range(rows)], [bytes(200)] * rows)
        print("done", i, flush=True)
""")


def _run_and_kill(path: Path, rows: int, stall: int, kill_after: str, delay: float) -> list[str]:
    """Start the writer, SIGKILL it ``delay`` s after it prints ``kill_after``; returns the lines it printed."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    child = subprocess.Popen([sys.executable, "-c", _WRITER, str(path), KEY, SHA, str(DIM), str(rows), str(stall)],
                             cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    try:
        while not lines or lines[-1] != kill_after:
            line = child.stdout.readline()
            assert line, f"the writer died early: {child.stderr.read()}"
            lines.append(line.strip())
        time.sleep(delay)
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        child.stdout.close()
        child.stderr.close()
    assert child.returncode == -signal.SIGKILL
    return lines


def _check_after_kill(path: Path, alice: np.ndarray) -> dict[str, int]:
    """Integrity, Alice intact, still writable; returns the embeddings per person."""
    with open_gallery(path, create=False) as gallery:
        conn = sqlite3.connect(str(path))
        try:
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
        finally:
            conn.close()
        stored = gallery.embeddings()
        np.testing.assert_array_equal(stored["Alice"], alice)
        assert gallery.thumbnails("Alice") == [(f"a{i}.jpg", b"thumb%d" % i) for i in range(len(alice))]
        counts = {name: len(v) for name, v in stored.items()}
        gallery.add("Bob", unit_vectors(1), ["b.jpg"])  # and it is writable again
    with open_gallery(path, create=False) as gallery:
        assert "Bob" in gallery and "Alice" in gallery
    return counts


@pytest.fixture
def alice_gallery(path) -> np.ndarray:
    alice = unit_vectors(4, 7)
    with open_gallery(path) as gallery:
        gallery.add("Alice", alice, [f"a{i}.jpg" for i in range(4)], [b"thumb%d" % i for i in range(4)])
    return alice


def test_sigkill_before_commit_leaves_the_gallery_as_before(path, alice_gallery):
    """Killed after every row of an add is inserted, before its commit: none of that add is kept."""
    rows, stall = 5000, 3
    lines = _run_and_kill(path, rows, stall, f"inserted {stall}", 0.0)
    assert [line for line in lines if line.startswith("done")] == [f"done {i}" for i in range(stall)]
    counts = _check_after_kill(path, alice_gallery)
    # adds 0 and 2 went to Person 0, add 1 to Person 1, the killed add 3 nowhere.
    assert counts == {"Alice": 4, "Person 0": 2 * rows, "Person 1": rows}


def test_sigkill_during_adds_keeps_whole_adds_only(path, alice_gallery):
    """Killed at an arbitrary moment of a loop of big adds (no instrumentation): whole adds or nothing."""
    rows = 20000  # ~0.4 s per add, most of it inside the transaction
    lines = _run_and_kill(path, rows, -1, "begin 2", 0.15)
    completed = sum(line.startswith("done") for line in lines)
    counts = _check_after_kill(path, alice_gallery)
    burst = sum(n for name, n in counts.items() if name != "Alice")
    assert burst % rows == 0
    assert burst // rows in (completed, completed + 1)


# --- changes the review page makes (one Gallery method each) ---------------------------------------------------------


def test_a_new_person_must_be_new_and_a_failed_change_inside_a_transaction_leaves_nothing(tmp_path):
    with open_gallery(tmp_path / "g.sqlite") as gallery:
        gallery.add("Anna", unit_vectors(2), ["a", "b"])
        revision = gallery.revision()
        with pytest.raises(NameTakenError, match="'Anna' is already enrolled"):
            gallery.add("Anna", unit_vectors(1, seed=1), ["c"], new_person=True)
        with pytest.raises(NameTakenError), gallery.transaction():
            gallery.add("Ben", unit_vectors(1, seed=2), ["d"], new_person=True)  # lands in the savepoint ...
            gallery.add("Anna", unit_vectors(1, seed=3), ["e"], new_person=True)  # ... and this undoes all
        assert [p.name for p in gallery.persons()] == ["Anna"] and gallery.revision() == revision
        assert gallery.person("Anna").embeddings == 2


def test_exclude_a_sample_merge_and_the_rows_that_follow_a_person(tmp_path):
    with open_gallery(tmp_path / "g.sqlite") as gallery:
        gallery.add("Anna", unit_vectors(3), ["a1", "a2", "a3"], [b"\xff\xd8a", None, None])
        gallery.add("Ann", unit_vectors(2, seed=1), ["b1", "b2"])
        gallery.exclude("Ann", unit_vectors(1, seed=2), ["visit:x"])
        with gallery.transaction() as cur:  # another module's table that refers to persons (as the visit log does)
            cur.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, person_id INTEGER REFERENCES persons(id) "
                        "ON DELETE CASCADE)")
            cur.execute("INSERT INTO notes (person_id) VALUES (?)", (gallery.person("Ann").id,))
        first = gallery.samples("Anna")[0]
        assert gallery.sample_thumbnail(first.id) == b"\xff\xd8a"
        gallery.exclude_sample("Anna", first.id)
        assert [s.source for s in gallery.samples("Anna")] == ["a2", "a3"]
        assert len(gallery.exclusions()["Anna"]) == 1
        with pytest.raises(GalleryError, match="has no enrolled face"):
            gallery.exclude_sample("Anna", first.id)
        with pytest.raises(InvalidNameError, match="into itself"):
            gallery.merge("Anna", "Anna")
        merged = gallery.merge("Ann", "Anna")
        assert "Ann" not in gallery and merged.embeddings == 4 and len(gallery.exclusions()["Anna"]) == 2
        assert gallery.read("SELECT person_id FROM notes") == [(merged.id,)]
        gallery.remove("Anna")
        assert gallery.read("SELECT COUNT(*) FROM notes") == [(0,)] and gallery.exclusions() == {}


def test_a_gallery_made_before_exclusions_gets_the_table_on_open(tmp_path):
    path = tmp_path / "old.sqlite"
    with open_gallery(path) as gallery:
        gallery.add("Anna", unit_vectors(1), ["a"])
    with sqlite3.connect(path) as conn:
        conn.execute("DROP TABLE exclusions")
    with open_gallery(path) as gallery:
        assert gallery.exclusions() == {} and gallery.person("Anna").embeddings == 1
