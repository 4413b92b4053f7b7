"""The visit log on a gallery filled by the real pipeline (tests/review_scene.py): grouping, naming, corrections,
retention, and what goes with a removed person; the CLI's `visits` / `visitors` / `people merge`."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from door_scene import doorface
from review_scene import KNOWN, STRANGER, build_visit_log

from edge.config import VisitsConfig, load_config
from edge.embedder import EmbedderSpec
from edge.events import Event
from edge.manifest import Manifest
from edge.matcher import Matcher
from edge.runner import open_gallery
from edge.visits import GroupNotFound, VisitLog, VisitNotFound, open_visit_log


@pytest.fixture(scope="module")
def logged(tmp_path_factory, shared_data):
    """(folder, config path) of a gallery whose visit log the real `doorface run` filled; copy before changing."""
    import os

    folder = tmp_path_factory.mktemp("visit-log")
    env = {**os.environ, "DOORFACE_HOME": str(folder / "home"), "TF_CPP_MIN_LOG_LEVEL": "2"}
    return folder, build_visit_log(folder, shared_data, env)


@pytest.fixture()
def gallery_copy(tmp_path, logged):
    """A private copy of the logged gallery and a config pointing at it."""
    folder, config = logged
    shutil.copy(folder / "gallery.sqlite", tmp_path / "gallery.sqlite")
    text = config.read_text().replace(str(folder / "gallery.sqlite"), str(tmp_path / "gallery.sqlite"))
    (tmp_path / "doorface.yaml").write_text(text)
    return tmp_path / "doorface.yaml"


def _open(config_path: Path, **visits):
    config = load_config(None, config_path)
    entry = Manifest.load(config.models_dir).entry(config.embedder.model)
    gallery = open_gallery(config, EmbedderSpec.from_entry(entry), create=False)
    log = open_visit_log(gallery, config, entry)
    if visits:
        log = VisitLog(gallery, threshold=log.threshold, metric=log.metric, settings=VisitsConfig(**visits))
    return gallery, log


def _stranger_group(log):
    groups = log.groups()
    biggest = max(groups, key=lambda g: g.visits)
    return biggest


def test_the_stranger_over_three_visits_is_one_group_and_every_visit_keeps_its_crop(logged, cli_env):
    folder, config = logged
    listed = doorface("visitors", "--json", "--config", str(config), env=cli_env)
    assert listed.returncode == 0, listed.stderr
    groups = json.loads(listed.stdout)["groups"]
    assert max(g["visits"] for g in groups) == 3  # the three visits of the stranger
    visits = json.loads(doorface("visits", "--json", "--config", str(config), env=cli_env).stdout)["visits"]
    assert [v["person"] for v in visits if v["kind"] == "recognized"] == [KNOWN]
    stranger = max(groups, key=lambda g: g["visits"])
    in_group = [v for v in visits if v["group"] == stranger["id"]]
    assert len(in_group) == 3 and all(v["has_crop"] for v in visits)
    assert stranger["first_seen"] == min(v["timestamp"] for v in in_group)
    assert stranger["last_seen"] == max(v["timestamp"] for v in in_group)
    gallery, log = _open(config)
    with gallery:
        crop = log.crop(in_group[0]["id"])
        assert crop[:2] == b"\xff\xd8" and len(crop) < 20_000  # a small JPEG
        rows = gallery.read("SELECT embedding FROM visits")
        assert all(len(blob) == 4 * gallery.dim for (blob,) in rows)
    # The human-readable list says the same.
    text = doorface("visitors", "--config", str(config), env=cli_env).stdout
    assert f"group {stranger['id']}: 3 visit(s)" in text


def test_events_carry_their_group_and_its_count(tmp_path, shared_data, cli_env):
    from review_scene import run_clip

    config = build_visit_log(tmp_path, shared_data, cli_env)
    events = run_clip(config, cli_env)  # the second run: the stranger's group grows from 3
    unknown = [e for e in events if e["event_type"] == "unknown"]
    recognized = [e for e in events if e["event_type"] == "recognized"]
    assert recognized and all(e["group"] is None and e["group_visits"] is None for e in recognized)
    counts = {}
    for e in unknown:
        assert isinstance(e["group"], int)
        counts.setdefault(e["group"], []).append(e["group_visits"])
    biggest = max(counts.values(), key=len)
    assert biggest == [4, 5, 6]  # the same stranger: one group id, counting on from the first run


def test_naming_a_group_enrolls_it_from_its_visits(gallery_copy, cli_env):
    gallery, log = _open(gallery_copy)
    with gallery:
        group = _stranger_group(log)
    named = doorface("visitors", "name", str(group.id), STRANGER, "--config", str(gallery_copy), env=cli_env)
    assert named.returncode == 0, named.stderr
    assert f"is now {STRANGER!r}: 3 face(s) enrolled" in named.stderr
    gallery, log = _open(gallery_copy)
    with gallery:
        assert [s.source.startswith("visit:") for s in gallery.samples(STRANGER)] == [True] * 3
        assert all(len(gallery.sample_thumbnail(s.id)) > 0 for s in gallery.samples(STRANGER))
        assert group.id not in [g.id for g in log.groups()]
        assert len(log.visits(person=STRANGER)) == 3
    again = doorface("visitors", "name", str(group.id), "Someone", "--config", str(gallery_copy), env=cli_env)
    assert again.returncode == 2 and f"no unknown-visitor group {group.id}" in again.stderr


def test_a_name_already_enrolled_or_an_unknown_group_changes_nothing(gallery_copy, cli_env):
    gallery, log = _open(gallery_copy)
    with gallery:
        group = _stranger_group(log)
        before = (gallery.revision(), [g.to_dict() for g in log.groups()])
    taken = doorface("visitors", "name", str(group.id), KNOWN, "--config", str(gallery_copy), env=cli_env)
    assert taken.returncode == 2 and "already enrolled" in taken.stderr
    missing = doorface("visitors", "add", "999", KNOWN, "--config", str(gallery_copy), env=cli_env)
    assert missing.returncode == 2 and "no unknown-visitor group 999" in missing.stderr
    nobody = doorface("visitors", "add", str(group.id), "Nobody", "--config", str(gallery_copy), env=cli_env)
    assert nobody.returncode == 2 and "no person named 'Nobody'" in nobody.stderr
    bad = doorface("visitors", "name", "first", "X", "--config", str(gallery_copy), env=cli_env)
    assert bad.returncode == 2 and "GROUP must be a number" in bad.stderr
    gallery, log = _open(gallery_copy)
    with gallery:
        assert (gallery.revision(), [g.to_dict() for g in log.groups()]) == before
        assert gallery.samples(KNOWN) and STRANGER not in gallery
        with pytest.raises(GroupNotFound):
            log.name_group(999, "X")
        with pytest.raises(VisitNotFound):
            log.not_person(999)


def test_not_this_person_excludes_the_face_and_the_matcher_stops_naming_it(gallery_copy, cli_env):
    gallery, log = _open(gallery_copy)
    with gallery:
        visit = log.visits(kind="recognized")[0]
        (blob,) = gallery.read("SELECT embedding FROM visits WHERE id = ?", (visit.id,))[0]
        face = np.frombuffer(blob, dtype="<f4")
        entry = Manifest.load(None).entry(gallery.embedder_key)
        assert Matcher.from_gallery(gallery, entry).match(face)[0].name == KNOWN
    marked = doorface("visits", "not-person", str(visit.id), "--config", str(gallery_copy), env=cli_env)
    assert marked.returncode == 0, marked.stderr
    assert f"is not {KNOWN!r}" in marked.stderr
    gallery, log = _open(gallery_copy)
    with gallery:
        after = log.visit(visit.id)
        assert after.person is None and after.not_person == KNOWN and after.group is not None
        assert len(gallery.exclusions()[KNOWN]) == 1
        match = Matcher.from_gallery(gallery, entry).match(face)[0]
        assert match.name is None and match.best == KNOWN  # still the nearest, no longer accepted
    again = doorface("visits", "not-person", str(visit.id), "--config", str(gallery_copy), env=cli_env)
    assert again.returncode == 2 and "only a visit named as a person" in again.stderr


def test_merge_moves_faces_and_visits_and_remove_deletes_them(gallery_copy, cli_env):
    gallery, log = _open(gallery_copy)
    with gallery:
        log.name_group(_stranger_group(log).id, "The postman")
    merged = doorface("people", "merge", "The postman", KNOWN, "--config", str(gallery_copy), env=cli_env)
    assert merged.returncode == 0, merged.stderr
    gallery, log = _open(gallery_copy)
    with gallery:
        assert "The postman" not in gallery
        assert len(log.visits(person=KNOWN)) == 4 and gallery.person(KNOWN).embeddings == 6
        total = len(log.visits())
    removed = doorface("people", "remove", KNOWN, "--config", str(gallery_copy), env=cli_env)
    assert removed.returncode == 0, removed.stderr
    gallery, log = _open(gallery_copy)
    with gallery:
        assert len(log.visits()) == total - 4
        assert gallery.read("SELECT COUNT(*) FROM visits WHERE person_id IS NOT NULL")[0][0] == 0


def test_retention_deletes_old_visits_then_the_oldest_beyond_the_size_and_empty_groups(gallery_copy):
    gallery, log = _open(gallery_copy)
    with gallery:
        visits = log.visits()
        newest = max(v.timestamp for v in visits)
        assert log.purge() == 0  # all within the default 7 days
        sizes = dict(gallery.read("SELECT id, length(embedding) + length(crop) FROM visits"))
        keep_two = (sizes[visits[0].id] + sizes[visits[1].id] + 1) / 1e6
        by_size = VisitLog(gallery, threshold=log.threshold, metric=log.metric,
                           settings=VisitsConfig(days=7, max_mb=keep_two), clock=lambda: newest)
        assert by_size.purge() == len(visits) - 2
        assert [v.id for v in by_size.visits()] == [visits[0].id, visits[1].id]  # the newest two kept
        kept_groups = {v.group for v in by_size.visits()} - {None}
        assert {g.id for g in by_size.groups()} == kept_groups
        assert gallery.read("SELECT COUNT(*) FROM visit_groups")[0][0] == len(kept_groups)
        later = VisitLog(gallery, threshold=log.threshold, metric=log.metric,
                         settings=VisitsConfig(days=1), clock=lambda: newest + 86400 + 1)
        assert later.purge() == 2 and later.visits() == [] and later.groups() == []


def test_grouping_stays_fast_with_thousands_of_visits(tmp_path, logged):
    """Incremental: each unknown visit is one product with the groups' means, whatever the history."""
    folder, config_path = logged
    config = load_config(None, config_path)
    entry = Manifest.load(None).entry(config.embedder.model)
    spec = EmbedderSpec.from_entry(entry)
    rng = np.random.default_rng(0)
    with open_gallery(config, spec, path=tmp_path / "many.sqlite") as gallery:
        log = open_visit_log(gallery, config, entry)
        people = rng.normal(size=(2000, spec.dim)).astype(np.float32)  # far apart: 2000 groups, the worst case
        now = time.time()
        units = people / np.linalg.norm(people, axis=1, keepdims=True)
        with gallery.transaction() as cur:  # the history, written at once; the timed records below are one each
            cur.executemany("INSERT INTO visit_groups (id, created, vector_sum) VALUES (?, ?, ?)",
                            [(i + 1, now, u.astype("<f4").tobytes()) for i, u in enumerate(units)])
            cur.executemany("INSERT INTO visits (event_id, camera, kind, timestamp, group_id, confidence, embedding, "
                            "crop) VALUES (?, 'door', 'unknown', ?, ?, 1.0, ?, ?)",
                            [(f"e{i}", now - 2000 + i, i + 1, u.astype("<f4").tobytes(), b"\xff\xd8" + bytes(2000))
                             for i, u in enumerate(units)])
        assert len(log.groups()) == 2000
        start = time.perf_counter()
        for i in range(20):
            event = log.record(Event("unknown", "door", None, 1.0, None, (0, 0, 1, 1), i, now, spec.key,
                                     embedding=people[i] + 0.05 * rng.normal(size=spec.dim).astype(np.float32)))
            assert event.group == i + 1 and event.group_visits == 2  # back: the group of its first visit
        assert (time.perf_counter() - start) / 20 < 0.25
