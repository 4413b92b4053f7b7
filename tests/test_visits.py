"""Back-to-back visitors at the same spot: every visit its own event, on the shipped models and real LFW faces.

The clips come from ``bench/door_clips.py`` (the visit-accuracy benchmark's): enrolled persons from 3 photos each,
their visits showing 4 other photos, strangers, one enrolled person back within ``tracker.visit_gap``, all at the
same spot with a short empty door between two visitors. The run is what ``doorface run`` does (``edge.runner``)
on the clip's mp4.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.bench_visits import run_clip
from bench.door_clips import RECOGNIZED, UNKNOWN, plan_clip, score_events
from edge.config import load_config
from edge.runner import load_models


@pytest.fixture(scope="module")
def models():
    return load_models(load_config(), threads=2)


def assert_one_event_per_visit(plan, events) -> None:
    score = score_events(plan, events)
    # The exact event list, in order: one per visit, the repeat visit none.
    assert [(kind, name) for _, kind, name in events] == plan.expected_events
    # ... and each event within the visit it is about.
    for outcome in score.outcomes:
        assert outcome.correct, (outcome.visit.name, outcome.visit.enrolled, outcome.visit.repeat, outcome.events)
    assert score.false_accepts == 0 and score.duplicates == 0 and score.stray == 0


@pytest.mark.parametrize("gap", [1.0, 0.3], ids=["1s-empty-door", "0.3s-empty-door"])
def test_back_to_back_visitors_each_get_their_own_event(tmp_path, shared_data, models, gap):
    """With 1 s between visitors the last track has ended (tracker.max_missing); with 0.3 s it has not, and the
    next visitor is told apart by the embedding re-check."""
    lfw = shared_data / "lfw"
    plan = plan_clip(lfw, seed=11, enrolled=4, strangers=4, repeat=True, gap_seconds=gap)
    visits = plan.visits
    assert len(visits) == 9 and sum(v.enrolled and not v.repeat for v in visits) == 4
    assert sum(not v.enrolled for v in visits) == 4
    repeat = next(v for v in visits if v.repeat)
    first = next(v for v in visits if v.person == repeat.person and not v.repeat)
    assert repeat.start - first.end < load_config().tracker.visit_gap
    enrolled_photos = {p for _, photos in plan.enrollment for p in photos}
    assert enrolled_photos.isdisjoint(p for v in visits for p in v.photos)  # recognized from other photos

    run = run_clip(plan, lfw, tmp_path, config=load_config(), models=models)

    assert_one_event_per_visit(plan, run.events)
    names = {name for _, kind, name in run.events if kind == RECOGNIZED}
    assert names == {name for name, _ in plan.enrollment}
    assert sum(kind == UNKNOWN for _, kind, _ in run.events) == 4
    assert run.tracker["same_visit"] >= 1  # the repeat visit was decided, and recognized as a repeat


def test_the_scorer_tells_each_kind_of_error(shared):
    plan = plan_clip(shared / "data" / "lfw", seed=0, enrolled=2, strangers=1, repeat=True)
    visits = plan.visits
    events = []
    right_one = False
    for v in visits:
        mid = (v.start + v.end) / 2
        if v.repeat:
            events.append((mid, RECOGNIZED, v.name))  # duplicate: the repeat visit is due no event
        elif v.enrolled and not right_one:
            events += [(mid, RECOGNIZED, v.name), (mid + 0.2, RECOGNIZED, v.name)]  # one right, one duplicate
            right_one = True
        elif v.enrolled:
            events.append((mid, UNKNOWN, None))  # an enrolled person announced as unknown; also missed
        else:
            events.append((mid, RECOGNIZED, "Somebody Else"))  # a stranger taken for someone: missed too
    events.append((plan.duration + 5.0, UNKNOWN, None))  # after every visit
    score = score_events(plan, events).as_dict()
    assert score == {"visits": 4, "expected_events": 3, "correct_visits": 0, "correct": 1, "missed": 2,
                     "false_accepts": 1, "false_unknowns": 1, "duplicates": 2, "stray": 1}
    assert score_events(plan, []).as_dict()["missed"] == 3
    perfect = [((v.start + v.end) / 2, *v.expected) for v in visits if v.expected]
    assert score_events(plan, perfect).correct_visits == 4


def test_a_clip_plan_needs_people(shared):
    with pytest.raises(ValueError, match="at least one visitor"):
        plan_clip(shared / "data" / "lfw", seed=0, enrolled=0, strangers=0)
    with pytest.raises(FileNotFoundError, match="LFW images"):
        plan_clip(Path("/nonexistent"), seed=0)
