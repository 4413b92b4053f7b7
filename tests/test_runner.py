"""The runner's wiring on the real models: detect_every, and enrollments picked up while running."""

from __future__ import annotations

from dataclasses import replace

import pytest
from conftest import REPO_ROOT

from edge.config import load_config
from edge.enroll import enroll_photos
from edge.image_io import load_image
from edge.runner import GalleryWatcher, build_recognizer, load_models, open_gallery
from edge.sources import Frame


@pytest.fixture(scope="module")
def models():
    return load_models(load_config(), threads=2)


def portrait_frames(shared_data, count: int) -> list[Frame]:
    image = load_image(REPO_ROOT / "demo" / "lin-manuel-miranda.jpg")
    return [Frame(image=image, index=i, timestamp=100.0 + 0.1 * i, source="test") for i in range(count)]


def test_detection_every_k_frames(tmp_path, models, shared_data):
    config = load_config()
    config = replace(config, tracker=replace(config.tracker, detect_every=3))
    with open_gallery(config, models.embedder.spec, path=tmp_path / "g.sqlite") as gallery:
        recognizer = build_recognizer(config, models, gallery)
    results = [recognizer.process(f) for f in portrait_frames(shared_data, 9)]
    assert [r.detected for r in results] == [True, False, False] * 3
    assert all(len(r.faces) == 1 for r in results if r.detected)
    assert all(r.faces == () for r in results if not r.detected)
    assert recognizer.stats()["counts"]["detected_frames"] == 3


def test_enrollment_while_running_is_picked_up(tmp_path, models, shared_data):
    config = load_config()
    config = replace(config, gallery=replace(config.gallery, watch_interval=2.0))  # gallery.watch_interval
    path = tmp_path / "g.sqlite"
    now = [0.0]
    announced = []
    with open_gallery(config, models.embedder.spec, path=path) as gallery:
        recognizer = build_recognizer(config, models, gallery)
        watcher = GalleryWatcher(gallery, recognizer, models.manifest.entry(models.embedder.key), config,
                                 on_persons=announced.append, clock=lambda: now[0])
        frames = portrait_frames(shared_data, 12)
        first = [recognizer.process(f) for f in frames[:3]]
        assert all(face.match.name is None for r in first for face in r.faces if face.match is not None)
        # Another process (`doorface enroll`) adds him to the same file meanwhile.
        with open_gallery(config, models.embedder.spec, path=path) as other:
            report = enroll_photos(other, "Lin-Manuel Miranda", [REPO_ROOT / "demo" / "lin-manuel-miranda.jpg"],
                                   models.detector, models.embedder)
            assert report.enrolled == 1
        assert watcher() is False  # not yet time to look
        now[0] = 1.9
        assert watcher() is False
        now[0] = 2.1
        assert watcher() is True
        assert announced == [["Lin-Manuel Miranda"]]
        assert watcher() is False
        recognizer.tracker.finish()  # the visit so far was a stranger's; start a new one
        events = [e for f in frames[3:] for e in recognizer.process(
            Frame(f.image, f.index, f.timestamp + 100.0, f.source)).events]
    assert [e.name for e in events] == ["Lin-Manuel Miranda"]
    assert events[0].confidence > 0.5


def _shipped_int8_embedders() -> list[str]:
    from edge.manifest import Manifest

    manifest = Manifest.load()
    return [k for k, e in sorted(manifest.models.items())
            if e.task == "face_embedding" and e.input.dtype in ("int8", "uint8")]


@pytest.mark.parametrize("key", _shipped_int8_embedders())
def test_any_shipped_embedder_is_selected_by_name_and_recorded(tmp_path, key):
    """`embedder.model: <key>` runs that model end to end, and the gallery it enrolls into names it."""
    config = load_config()
    config = replace(config, embedder=replace(config.embedder, model=key))
    models = load_models(config, threads=2)
    assert models.embedder.key == key
    entry = models.manifest.entry(key)
    with open_gallery(config, models.embedder.spec, path=tmp_path / "g.sqlite") as gallery:
        report = enroll_photos(gallery, "Lin-Manuel Miranda", [REPO_ROOT / "demo" / "lin-manuel-miranda.jpg"],
                               models.detector, models.embedder)
        assert report.enrolled == 1
        assert (gallery.embedder_key, gallery.embedder_sha256) == (key, entry.sha256)
        assert gallery.dim == entry.fields["embedding"]["dim"]
        recognizer = build_recognizer(config, models, gallery)
        result = recognizer.process(portrait_frames(None, 1)[0])
    face, = result.faces
    assert face.match is not None and face.match.name == "Lin-Manuel Miranda"  # the enrolled photo itself
