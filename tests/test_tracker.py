"""Tracker and vote: one decision per visit, on plain boxes, embeddings and matches."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from edge.config import TrackerConfig
from edge.events import RECOGNIZED, UNKNOWN
from edge.matcher import Match
from edge.tracker import Tracker, greedy_pairs

# One detection frame per second in these tests: 3.5 s missing ends a track on the 4th missed frame.
CONFIG = TrackerConfig(iou_threshold=0.3, max_missing=3.5, min_votes=3, vote_fraction=0.6, unknown_after=5,
                       recheck_every=5.0, swap_frames=2, visit_gap=30.0)
MISSED_TO_END = 4
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


def test_greedy_pairs():
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
    for t in range(3, 3 + MISSED_TO_END):
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
    for t in range(4, 4 + MISSED_TO_END):
        events += step(tracker, float(t), [], [], []).decisions
    # Back 10 s later, somewhere else and with another embedding (so not re-identified): same visit.
    for t in range(14, 18):
        events += step(tracker, float(t), [[300, 10, 380, 100]], [unit(7)], [accepted("Ann")]).decisions
    assert [d.name for d in events] == ["Ann"]
    assert tracker.stats["same_visit"] == 1
    # Back after the gap: a new visit.
    for t in range(18, 18 + MISSED_TO_END):
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


def near(seed: int, noise: int, scale: float = 0.05) -> np.ndarray:
    """Another frame of the person ``unit(seed)``: the same embedding, a little off."""
    v = unit(seed) + scale * np.random.default_rng(1000 + noise).normal(size=DIM) / np.sqrt(DIM)
    return v / np.linalg.norm(v)


DOOR = [100, 100, 180, 190]  # everyone stands here


def visit(tracker: Tracker, start: float, person: int, match, frames: int = 6, box=DOOR):
    """``person`` at the door for ``frames`` detection frames from ``start``; the decisions and the track ids."""
    decisions, ids = [], set()
    for k in range(frames):
        boxes = np.asarray([box], dtype=float)
        assigned = tracker.assign(boxes)
        t = start + k
        wanted = tracker.wants_embedding(assigned[0], t)
        update = tracker.update(t, boxes, assigned, [near(person, int(t)) if wanted else None],
                                [match if wanted else None])
        decisions += update.decisions
        ids |= set(update.track_ids)
    return decisions, ids


def test_back_to_back_visitors_at_the_same_spot_each_get_their_own_event():
    tracker = Tracker(CONFIG, reid_distance=0.08)
    decisions = []
    t = 0.0
    for person, match in [(1, accepted("Ann")), (2, rejected()), (3, accepted("Bob")), (4, rejected()),
                          (5, rejected())]:
        got, _ = visit(tracker, t, person, match)
        decisions += got
        t += 6 + MISSED_TO_END  # the door is empty just long enough for the track to end
        for k in range(MISSED_TO_END):
            decisions += step(tracker, t - MISSED_TO_END + k, [], [], []).decisions
    assert [(d.kind, d.name) for d in decisions] == [(RECOGNIZED, "Ann"), (UNKNOWN, None), (RECOGNIZED, "Bob"),
                                                      (UNKNOWN, None), (UNKNOWN, None)]
    assert len({d.track_id for d in decisions}) == 5


def test_a_decided_track_is_embedded_again_only_now_and_then_and_after_a_miss():
    tracker = Tracker(CONFIG, reid_distance=0.08)
    wanted = []
    for t in range(12):
        boxes = np.asarray([DOOR], dtype=float)
        assigned = tracker.assign(boxes)
        wanted.append(tracker.wants_embedding(assigned[0], float(t)))
        e = near(1, t) if wanted[-1] else None
        tracker.update(float(t), boxes, assigned, [e], [accepted("Ann") if e is not None else None])
    # Decided at t=2; then every recheck_every (5 s) only.
    assert wanted == [True, True, True, False, False, False, False, True, False, False, False, False]
    step(tracker, 12.0, [], [], [])  # missed once: the face that comes back is checked at once
    assigned = tracker.assign(np.asarray([DOOR], dtype=float))
    assert assigned[0] is not None and tracker.wants_embedding(assigned[0], 13.0)
    assert tracker.stats["rechecks"] == 1


def test_a_person_swap_inside_a_decided_track_is_caught():
    """Ann is recognized; Bob steps in front of her at the same spot without a missed detection."""
    config = replace(CONFIG, recheck_every=2.0)
    tracker = Tracker(config, reid_distance=0.08)
    ann, ann_ids = visit(tracker, 0.0, 1, accepted("Ann"), frames=8)
    bob, bob_ids = visit(tracker, 8.0, 2, accepted("Bob"), frames=8)
    assert [d.name for d in ann + bob] == ["Ann", "Bob"]
    assert tracker.stats["swaps"] == 1 and ann[0].track_id != bob[0].track_id and len(ann_ids | bob_ids) == 2
    # Caught at the first re-check (t=8) plus swap_frames - 1 frames, then voted on afresh.
    assert bob[0].timestamp <= 8.0 + config.swap_frames - 1 + config.min_votes


def test_one_odd_embedding_does_not_split_a_track():
    tracker = Tracker(CONFIG, reid_distance=0.08)
    for t in range(10):
        e = unit(9) if t == 5 else near(1, t)  # one frame far off (motion blur, a hand before the face)
        step(tracker, float(t), [DOOR], [e], [accepted("Ann") if t != 5 else rejected()])
    assert tracker.stats["swaps"] == 0 and tracker.stats["tracks"] == 1


def test_a_stranger_back_within_the_visit_gap_is_the_same_visit_and_another_is_not():
    tracker = Tracker(CONFIG, reid_distance=0.08)
    decisions = []
    t = 0.0
    for person in (2, 2, 3):  # a stranger, the same stranger back 10 s later, then another stranger
        got, _ = visit(tracker, t, person, rejected())
        decisions += got
        for k in range(MISSED_TO_END):
            decisions += step(tracker, t + 6 + k, [], [], []).decisions
        t += 10
    assert [d.kind for d in decisions] == [UNKNOWN, UNKNOWN]
    assert decisions[1].timestamp >= 20  # the second stranger's, not the repeat's
    assert tracker.stats["same_visit"] == 1


def test_a_household_member_back_but_not_recognized_is_not_an_unknown_visitor():
    tracker = Tracker(CONFIG, reid_distance=0.08)
    first, _ = visit(tracker, 0.0, 1, accepted("Ann"))
    for k in range(MISSED_TO_END):
        step(tracker, 6.0 + k, [], [], [])
    back, _ = visit(tracker, 12.0, 1, rejected())  # she turned: no accepted match this time
    assert [d.name for d in first] == ["Ann"] and back == []


def test_a_glimpse_is_kept_and_continued_when_the_face_comes_back():
    """A stranger seen 3 frames (too few for 'unknown'), gone, then back: one track, one event."""
    tracker = Tracker(CONFIG, reid_distance=0.08)
    glimpse, first_ids = visit(tracker, 0.0, 2, rejected(), frames=3)
    for k in range(MISSED_TO_END):
        glimpse += step(tracker, 3.0 + k, [], [], []).decisions
    assert glimpse == [] and tracker.active == 0
    back, back_ids = visit(tracker, 10.0, 2, rejected(), frames=3, box=[400, 100, 480, 190])
    assert [d.kind for d in back] == [UNKNOWN] and back_ids == first_ids
    assert back[0].frames == CONFIG.unknown_after and back[0].timestamp == 11.0  # 3 + 2 embedded frames
    assert tracker.stats["resumed"] == 1


def test_a_recognized_track_whose_face_the_matcher_gives_to_another_person_is_split():
    """Bob looks like Ann to the track (embeddings within reid_distance) but the matcher accepts him as Bob."""
    config = replace(CONFIG, recheck_every=1.0)
    tracker = Tracker(config, reid_distance=0.08)
    decisions = []
    for t in range(12):
        match = accepted("Ann") if t < 6 else accepted("Bob")
        decisions += step(tracker, float(t), [DOOR], [near(1, t)], [match]).decisions
    assert [d.name for d in decisions] == ["Ann", "Bob"] and tracker.stats["swaps"] == 1


def test_two_strangers_alike_within_the_match_threshold_are_still_two_visits():
    """The same-visitor test is stricter than re-identification: a 1-in-N search must not swallow a visitor."""
    tracker = Tracker(CONFIG, reid_distance=0.6, visitor_distance=0.05)
    first, second = unit(2), unit(2) + 0.9 * unit(3)
    second /= np.linalg.norm(second)
    gap = float(1 - first @ second)
    assert 0.05 < gap < 0.6  # alike enough to be re-identified, not enough to be the same visitor
    decisions = []
    for t in range(6):
        decisions += step(tracker, float(t), [DOOR], [first], [rejected()]).decisions
    for t in range(6, 6 + MISSED_TO_END):
        decisions += step(tracker, float(t), [], [], []).decisions
    for t in range(20, 26):  # the lost-track pool is empty: the first one was decided
        decisions += step(tracker, float(t), [DOOR], [second], [rejected()]).decisions
    assert [d.kind for d in decisions] == [UNKNOWN, UNKNOWN] and tracker.stats["same_visit"] == 0


def test_a_visit_ends_visit_gap_after_the_last_sighting_and_says_who_left():
    tracker = Tracker(CONFIG, reid_distance=0.08)
    box = [100, 100, 180, 190]
    for t in range(5):
        assert step(tracker, float(t), [box], [unit(1)], [accepted("Ann")]).departed == ()
    stranger = [step(tracker, float(t), [[300, 100, 380, 190]], [unit(2)], [rejected()]) for t in range(5, 15)]
    assert all(u.departed == () for u in stranger)  # strangers have no presence to end
    empty = {t: step(tracker, float(t), [], [], []).departed for t in range(15, 40)}
    assert [t for t, gone in empty.items() if gone] == [35]  # first frame more than 30 s after 4.0
    assert empty[35] == (("Ann", 4.0),)
    assert tracker.end_visits() == ()  # already over


def test_the_visits_still_on_end_with_the_run():
    tracker = Tracker(CONFIG, reid_distance=0.08)
    for t in range(4):
        step(tracker, float(t), [[100, 100, 180, 190]], [unit(1)], [accepted("Ann")])
    assert tracker.end_visits() == (("Ann", 3.0),)
    assert tracker.end_visits() == ()
