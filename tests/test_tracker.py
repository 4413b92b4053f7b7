"""Tracker and vote: one decision per visit, on plain boxes, embeddings and matches."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from edge.config import TrackerConfig
from edge.events import RECOGNIZED, UNKNOWN
from edge.matcher import Match
from edge.tracker import Tracker, greedy_pairs, iou_matrix

CONFIG = TrackerConfig(iou_threshold=0.3, max_missed=3, min_votes=3, vote_fraction=0.6, unknown_after=5,
                       visit_gap=30.0)
DIM = 8


def unit(seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=DIM)
    return v / np.linalg.norm(v)


def accepted(name: str, probability: float = 0.97, distance: float = 0.04) -> Match:
    return Match(name=name, distance=distance, second_distance=0.3, probability=probability, best=name)


def rejected(best: str = "Ann", probability: float = 0.05, distance: float = 0.2) -> Match:
    return Match(name=None, distance=distance, second_distance=0.3, probability=probability, best=best)


def step(tracker: Tracker, t: float, boxes, embeddings, matches):
    boxes = np.asarray(boxes, dtype=float).reshape(-1, 4)
    return tracker.update(t, boxes, tracker.assign(boxes), embeddings, matches)


def test_iou_and_greedy_pairs():
    a = np.array([[0, 0, 10, 10], [20, 20, 30, 30.0]])
    b = np.array([[0, 0, 10, 5], [100, 100, 110, 110.0]])
    m = iou_matrix(a, b)
    assert m[0, 0] == 0.5 and m[0, 1] == 0 and m[1, 0] == 0
    assert greedy_pairs(np.array([[0.9, 0.8], [0.85, 0.1]]), 0.3) == [(0, 0)]
    assert greedy_pairs(np.zeros((0, 2)), 0.3) == []


def test_one_recognized_event_per_visit_as_soon_as_the_vote_allows():
    tracker = Tracker(CONFIG, reid_distance=0.08)
    decisions = []
    for t in range(20):
        box = [100 + t, 100, 180 + t, 190]  # walking slowly to the right
        update = step(tracker, float(t), [box], [unit(1)], [accepted("Ann")])
        decisions += update.decisions
        if t == 2:
            assert [d.kind for d in update.decisions] == [RECOGNIZED]  # third vote: decided at once
    assert len(decisions) == 1
    d = decisions[0]
    assert d.name == "Ann" and d.frames == 3 and 0.96 < d.confidence < 0.98 and d.distance == 0.04
    assert tracker.stats["tracks"] == 1
    assert tracker.finish() == []


def test_a_stranger_gives_one_unknown_event_after_n_embedded_frames():
    tracker = Tracker(CONFIG, reid_distance=0.08)
    kinds = []
    for t in range(12):
        update = step(tracker, float(t), [[10, 10, 90, 100]], [unit(2)], [rejected(probability=0.1)])
        kinds += [(t, d.kind, d.confidence) for d in update.decisions]
    assert len(kinds) == 1
    t, kind, confidence = kinds[0]
    assert t == CONFIG.unknown_after - 1 and kind == UNKNOWN and abs(confidence - 0.9) < 1e-9


def test_one_lucky_frame_never_names_a_stranger():
    tracker = Tracker(CONFIG, reid_distance=0.08)
    matches = [accepted("Ann"), rejected(), rejected(), accepted("Ann"), rejected(), rejected()]
    decisions = []
    for t, match in enumerate(matches):
        decisions += step(tracker, float(t), [[10, 10, 90, 100]], [unit(3)], [match]).decisions
    assert [d.kind for d in decisions] == [UNKNOWN]


def test_faces_without_embedding_keep_the_track_alive_but_do_not_vote():
    tracker = Tracker(CONFIG, reid_distance=0.08)
    for t in range(10):
        assert step(tracker, float(t), [[10, 10, 90, 100]], [None], [None]).decisions == ()
    assert tracker.active == 1
    assert tracker.finish() == []  # never embedded: nothing to say
    assert tracker.stats["undecided"] == 1


def test_two_people_get_their_own_tracks_and_events():
    tracker = Tracker(CONFIG, reid_distance=0.08)
    names = set()
    for t in range(6):
        boxes = [[10, 10, 90, 100], [300, 10, 380, 100]]
        update = step(tracker, float(t), boxes, [unit(1), unit(2)], [accepted("Ann"), accepted("Bob")])
        assert len(set(update.track_ids)) == 2
        names |= {d.name for d in update.decisions}
    assert names == {"Ann", "Bob"}


def test_a_lost_track_is_decided_on_what_it_saw():
    config = replace(CONFIG, unknown_after=3, min_votes=2, vote_fraction=0.8)
    tracker = Tracker(config, reid_distance=0.08)
    for t, match in enumerate([accepted("Ann"), rejected(), accepted("Ann")]):
        # 2 votes of 3 frames: enough votes, not a large enough share; not yet an 'unknown' either.
        assert step(tracker, float(t), [[10, 10, 90, 100]], [unit(4)], [match]).decisions == ()
    decisions = []
    for t in range(3, 3 + config.max_missed + 1):
        decisions += step(tracker, float(t), [], [], []).decisions
    assert [d.kind for d in decisions] == [UNKNOWN]
    assert decisions[0].timestamp == 2.0  # when it was last seen, not when it was given up
    assert tracker.active == 0


def test_embedding_reidentifies_a_face_whose_box_jumped():
    tracker = Tracker(CONFIG, reid_distance=0.08)
    first = step(tracker, 0.0, [[10, 10, 90, 100]], [unit(5)], [rejected()])
    jumped = step(tracker, 1.0, [[400, 300, 480, 390]], [unit(5)], [rejected()])
    assert jumped.track_ids == first.track_ids
    other = step(tracker, 2.0, [[10, 10, 90, 100]], [unit(6)], [rejected()])
    assert other.track_ids != first.track_ids


def test_a_person_back_within_the_visit_gap_is_the_same_visit():
    tracker = Tracker(CONFIG, reid_distance=0.08)
    events = []
    for t in range(4):
        events += step(tracker, float(t), [[10, 10, 90, 100]], [unit(1)], [accepted("Ann")]).decisions
    for t in range(4, 4 + CONFIG.max_missed + 1):
        events += step(tracker, float(t), [], [], []).decisions
    # Back 10 s later, somewhere else and with another embedding (so not re-identified): same visit.
    for t in range(14, 18):
        events += step(tracker, float(t), [[300, 10, 380, 100]], [unit(7)], [accepted("Ann")]).decisions
    assert [d.name for d in events] == ["Ann"]
    assert tracker.stats["same_visit"] == 1
    # Back after the gap: a new visit.
    for t in range(18, 18 + CONFIG.max_missed + 1):
        step(tracker, float(t), [], [], [])
    for t in range(100, 104):
        events += step(tracker, float(t), [[300, 10, 380, 100]], [unit(8)], [accepted("Ann")]).decisions
    assert [d.name for d in events] == ["Ann", "Ann"]


def test_update_rejects_mismatched_lengths():
    tracker = Tracker(CONFIG, reid_distance=0.08)
    try:
        tracker.update(0.0, np.zeros((2, 4)), [None], [None, None], [None, None])
    except ValueError as exc:
        assert "one entry per face" in str(exc)
    else:
        raise AssertionError("expected ValueError")
