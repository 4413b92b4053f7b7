"""The on-disk event queue: order, bound, durability across reopen, one transaction per event, clear errors."""

from __future__ import annotations

import logging
import sqlite3

import pytest

from edge.outbox import Message, Outbox, OutboxError


def event(i: int, parts: int = 2) -> list[Message]:
    return [Message(f"doorface/door/part{p}", f"event {i} part {p}".encode(), qos=1, retain=p == 0)
            for p in range(parts)]


def test_messages_come_back_in_order_and_ack_removes_them(tmp_path):
    with Outbox.open(tmp_path / "q.sqlite", 100) as box:
        for i in range(3):
            box.put(event(i))
        assert len(box) == 6 and box.event_count() == 3
        pending = box.pending(100)
        assert [m.payload for _, m in pending] == [f"event {i} part {p}".encode() for i in range(3) for p in range(2)]
        assert pending[0][1] == Message("doorface/door/part0", b"event 0 part 0", qos=1, retain=True)
        ids = [i for i, _ in pending]
        assert ids == sorted(ids)
        assert [i for i, _ in box.pending(2)] == ids[:2]
        assert [i for i, _ in box.pending(100, after=ids[3])] == ids[4:]
        assert box.ack(ids[:3]) == 3
        assert box.ack(ids[0]) == 0  # already acked: ignored
        assert [i for i, _ in box.pending(100)] == ids[3:]
        assert len(box) == 3 and box.event_count() == 2


def test_bound_drops_the_oldest_whole_events(tmp_path, caplog):
    with Outbox.open(tmp_path / "q.sqlite", max_events=3) as box, caplog.at_level(logging.WARNING, "edge.outbox"):
        for i in range(3):
            assert box.put(event(i, parts=3)) == 0
        assert box.dropped == 0 and not caplog.records
        assert box.put(event(3, parts=3)) == 1
        assert box.put(event(4, parts=1)) == 1
        assert box.dropped == 2 and box.event_count() == 3
        payloads = [m.payload.decode() for _, m in box.pending(100)]
        assert payloads == [f"event {i} part {p}" for i in (2, 3) for p in range(3)] + ["event 4 part 0"]
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 2 and "dropped the 1 oldest undelivered events" in warnings[0]
        assert str(tmp_path / "q.sqlite") in warnings[0]


def test_queue_and_meta_survive_reopening(tmp_path):
    path = tmp_path / "sub" / "dir" / "q.sqlite"  # folders are created
    box = Outbox.open(path, 100)
    box.put(event(0))
    box.put(event(1))
    first_id = box.pending(1)[0][0]
    box.ack(first_id)
    box.set_meta("discovery_slugs", '["anna"]')
    box.close()
    with pytest.raises(OutboxError, match="closed"):
        len(box)
    with Outbox.open(path, 100) as again:
        assert [m.payload for _, m in again.pending(10)] == [b"event 0 part 1", b"event 1 part 0", b"event 1 part 1"]
        assert again.get_meta("discovery_slugs") == '["anna"]'
        assert again.get_meta("missing", "x") == "x"
        again.put(event(2))
        assert all(i > first_id for i, _ in again.pending(10))  # ids never go back, even after acks


def test_a_put_is_one_transaction(tmp_path):
    path = tmp_path / "q.sqlite"
    with Outbox.open(path, 100) as box:
        statements = []
        box._db.set_trace_callback(statements.append)
        box.put(event(0, parts=4))
        box._db.set_trace_callback(None)
        assert sum(s.startswith("BEGIN") for s in statements) == 1
        assert sum(s.startswith("COMMIT") for s in statements) == 1
        # A failure in the middle of an event leaves none of its messages behind.
        other = sqlite3.connect(path)
        other.execute("CREATE TRIGGER fail BEFORE INSERT ON messages WHEN NEW.topic = 'x/fail' "
                      "BEGIN SELECT RAISE(ABORT, 'disk full (simulated)'); END")
        other.commit()
        other.close()
        with pytest.raises(OutboxError, match="simulated"):
            box.put([Message("x/ok", b"1"), Message("x/ok", b"2"), Message("x/fail", b"3")])
        assert len(box) == 4 and box.event_count() == 1
        box.put([Message("x/ok", b"after")])  # the queue still works
        assert len(box) == 5


def test_corrupt_or_foreign_files_give_a_clear_error(tmp_path):
    corrupt = tmp_path / "outbox.sqlite"
    corrupt.write_bytes(b"this is not a database\n" * 200)
    with pytest.raises(OutboxError, match=r"outbox\.sqlite is corrupt or not an SQLite file.*delete it"):
        Outbox.open(corrupt, 100)
    foreign = tmp_path / "gallery.sqlite"
    db = sqlite3.connect(foreign)
    db.execute("CREATE TABLE persons (name TEXT)")
    db.commit()
    db.close()
    with pytest.raises(OutboxError, match=r"gallery\.sqlite is not a doorface event queue.*persons"):
        Outbox.open(foreign, 100)


def test_message_validation(tmp_path):
    with pytest.raises(ValueError, match="wildcards"):
        Message("doorface/#", b"x")
    with pytest.raises(TypeError, match="bytes"):
        Message("doorface/door", "text")
    with pytest.raises(ValueError, match="qos"):
        Message("doorface/door", b"x", qos=3)
    with pytest.raises(ValueError, match="max_events"):
        Outbox.open(tmp_path / "q.sqlite", 0)
    with Outbox.open(tmp_path / "q.sqlite", 10) as box:
        assert box.put([]) == 0 and len(box) == 0
        with pytest.raises(TypeError, match="expected Message"):
            box.put([("topic", b"x")])
