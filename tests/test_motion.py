"""Motion first (edge.motion): the search window from frame differences and followed faces, and the pipeline on
the real models with it: an idle door runs no detector, a face that appears is found and followed while it stands
still, and a door clip gives the events of searching every whole frame."""

from __future__ import annotations

from dataclasses import replace

import cv2
import numpy as np
import pytest
from conftest import REPO_ROOT

from edge import motion
from edge.config import MotionConfig, load_config
from edge.faces import Detections
from edge.image_io import load_image
from edge.runner import build_recognizer, load_models, open_gallery
from edge.sources import Frame, open_source

H, W = 480, 640


def noisy_door(rng: np.random.Generator) -> np.ndarray:
    base = np.full((H, W, 3), (96, 104, 110), dtype=np.float64)
    return np.clip(base + rng.normal(0, 4, size=base.shape), 0, 255).astype(np.uint8)


# ------------------------------------------------------------------------------------------------- pure logic


def test_moved_box_sees_a_change_and_not_the_noise():
    rng = np.random.default_rng(0)
    a, b = (motion.small_grey(noisy_door(rng), 160) for _ in range(2))
    assert motion.moved_box(a, b, threshold=15, min_area=0.002) is None  # sensor noise alone
    c = b.copy()
    c[30:60, 40:70] = 250  # something bright in the small copy
    assert motion.moved_box(b, c, threshold=15, min_area=0.002) == pytest.approx((40, 30, 70, 60), abs=3)
    assert motion.moved_box(b, c, threshold=15, min_area=0.5) is None  # too small a share of the frame


def test_moved_box_refuses_frames_of_different_sizes():
    with pytest.raises(ValueError, match="different sizes"):
        motion.moved_box(np.zeros((10, 10), np.uint8), np.zeros((10, 12), np.uint8), 15, 0.0)


@pytest.mark.parametrize("box", [(300, 200, 340, 250), (0, 0, 30, 30), (600, 440, 640, 480)])
def test_a_small_box_gets_a_half_frame_window_holding_it_grown(box):
    x1, y1, x2, y2 = motion.window_around(box, 20, (H, W, 3))
    assert (x2 - x1, y2 - y1) == (W // 2, H // 2)
    assert x1 >= 0 and y1 >= 0 and x2 <= W and y2 <= H
    assert x1 <= max(box[0] - 20, 0) and y1 <= max(box[1] - 20, 0)
    assert x2 >= min(box[2] + 20, W) and y2 >= min(box[3] + 20, H)


@pytest.mark.parametrize("box", [(100, 100, 500, 150), (100, 100, 150, 400)])
def test_a_box_longer_than_half_a_side_gets_the_whole_frame(box):
    assert motion.window_around(box, 10, (H, W, 3)) == (0, 0, W, H)


def test_the_gate_searches_all_first_then_only_where_needed():
    config = MotionConfig(full_frame_every=2.0)
    gate = motion.MotionGate(config)
    rng = np.random.default_rng(1)
    door = noisy_door(rng)
    assert gate.plan(door, 0.0, []).kind == motion.FULL  # nothing to compare with yet
    assert gate.plan(noisy_door(rng), 0.1, []) == motion.SearchArea(motion.IDLE, None)
    followed = gate.plan(noisy_door(rng), 0.2, [(500.0, 50.0, 560.0, 120.0)])  # a face followed, standing still
    assert followed.kind == motion.WINDOW
    x1, y1, x2, y2 = followed.box
    assert x1 <= 500 - config.pad and x2 >= 560 + config.pad and y1 <= 50 - config.pad and y2 >= 120
    moving = noisy_door(rng)
    moving[330:390, 50:110] = 255  # something moves in bottom left
    window = gate.plan(moving, 0.3, [])
    assert window.kind == motion.WINDOW and window.box[0] == 0 and window.box[3] == H
    assert gate.plan(noisy_door(rng), 2.05, []).kind == motion.FULL  # full_frame_every after the last full search
    assert gate.plan(noisy_door(rng), 2.1, []).kind == motion.IDLE
    assert gate.plan(noisy_door(rng), 0.5, []).kind == motion.FULL  # the clock stepped back


def test_a_gate_that_is_off_searches_the_whole_frame():
    gate = motion.MotionGate(MotionConfig(enabled=False))
    rng = np.random.default_rng(2)
    assert [gate.plan(noisy_door(rng), t, []).box for t in (0.0, 0.1)] == [(0, 0, W, H)] * 2


def test_shifted_detections_move_boxes_and_landmarks():
    d = Detections(np.array([[1, 2, 11, 22]]), np.array([0.9]), np.arange(10).reshape(1, 5, 2))
    s = d.shifted(100, 50)
    assert s.boxes.tolist() == [[101, 52, 111, 72]]
    assert s.landmarks[0, 0].tolist() == [100, 51] and s.scores.tolist() == d.scores.tolist()


# ------------------------------------------------------------------------------------ the real models, real faces


@pytest.fixture(scope="module")
def models():
    return load_models(load_config(), threads=2)


def _recognizer(tmp_path, models, **motion_keys):
    config = load_config()
    config = replace(config, motion=replace(config.motion, **motion_keys))
    with open_gallery(config, models.embedder.spec, path=tmp_path / "g.sqlite") as gallery:
        return build_recognizer(config, models, gallery)


def test_an_idle_door_runs_no_detector_and_a_face_that_appears_is_found_and_followed_standing_still(tmp_path, models):
    recognizer = _recognizer(tmp_path, models, full_frame_every=1.0)
    calls = []
    detector = recognizer.detector
    recognizer.detector = lambda image: calls.append(image.shape) or detector(image)
    rng = np.random.default_rng(3)
    door = [noisy_door(rng) for _ in range(10)]
    idle = [recognizer.process(Frame(image=img, index=i, timestamp=0.1 * i, source="t")) for i, img in
            enumerate(door)]
    assert calls == [(H, W, 3)] and all(r.faces == () for r in idle)  # one full search, then no detector at all
    assert recognizer.stats()["counts"]["search_idle"] == 9
    # A face appears between two frames and stays perfectly still: motion sees it once, at the frame it appears.
    portrait = cv2.resize(load_image(REPO_ROOT / "demo" / "lin-manuel-miranda.jpg"), (220, 191))
    scene = door[0].copy()
    scene[20:211, 400:620] = portrait
    found = [recognizer.process(Frame(image=scene, index=10 + i, timestamp=1.0 + 0.1 * i, source="t"))
             for i in range(12)]
    assert all(len(r.faces) == 1 for r in found)  # from its first frame, then followed (its track keeps a window)
    counts = recognizer.stats()["counts"]
    assert counts["search_window"] >= 10 and counts["search_idle"] == 9  # not a whole-frame search each time


def test_events_with_motion_first_are_those_of_whole_frame_searches(tmp_path, models, door_video):
    runs = {}
    for enabled in (True, False):
        recognizer = _recognizer(tmp_path / str(enabled), models, enabled=enabled)
        events = []
        with open_source(str(door_video), width=W, height=H) as source:
            for frame in source.frames():
                events += recognizer.process(frame).events
        events += recognizer.finish()
        runs[enabled] = [(e.kind, e.name, e.track_id) for e in events]
        if enabled:
            counts = recognizer.stats()["counts"]
            assert counts["search_idle"] > 0 and counts["search_window"] > 0  # the empty door between visits
    assert runs[True] == runs[False] and runs[True]
