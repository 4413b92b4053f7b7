"""Dataset loaders against the real ../shared data (skipped only where it is truly absent)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from converters.datasets import (
    BoxedImage,
    data_dir,
    detection_eval_images,
    iter_video_frames,
    lfw_images,
    lfw_subset,
    load_dlib_boxes,
    load_lfw_landmarks,
    load_train_faces,
    shared_root,
)

DLIB_HAND_BOXES = 43  # shared/README.md: 9 photos with 43 hand-drawn face boxes
LFW_IMAGE_COUNT = 7701
SAMPLE_LFW = (
    "Aaron_Eckhart/Aaron_Eckhart_0001.jpg",
    "George_W_Bush/George_W_Bush_0007.jpg",
    "Colin_Powell/Colin_Powell_0040.jpg",
)


def test_shared_root_matches_fixture(shared_data: Path) -> None:
    assert shared_root() / "data" == shared_data
    assert data_dir("lfw") == shared_data / "lfw"


def test_data_dir_missing_says_what_to_set(shared_data: Path) -> None:
    with pytest.raises(FileNotFoundError, match="DOORFACE_SHARED"):
        data_dir("no-such-dataset")


def test_dlib_boxes_count(shared_data: Path) -> None:
    folder = shared_data / "dlib-faces"
    images = load_dlib_boxes([folder / "training.xml", folder / "testing.xml"])
    assert len(images) == 9
    assert all(isinstance(im, BoxedImage) and im.path.is_file() for im in images)
    boxes = np.concatenate([im.boxes for im in images])
    ignore = np.concatenate([im.ignore for im in images])
    assert boxes.shape == (DLIB_HAND_BOXES, 4) and boxes.dtype == np.float32
    assert ignore.dtype == bool and int(ignore.sum()) == 0
    assert np.all(boxes[:, 2] > boxes[:, 0]) and np.all(boxes[:, 3] > boxes[:, 1])


def test_dlib_box_geometry_from_xml(shared_data: Path) -> None:
    first = load_dlib_boxes(shared_data / "dlib-faces" / "training.xml")[0]
    # <box top='90' left='194' width='37' height='37'/>
    assert first.path.name == "2007_007763.jpg"
    np.testing.assert_array_equal(first.boxes[0], [194, 90, 231, 127])


def test_dlib_ignore_attribute_and_missing_file(tmp_path: Path) -> None:
    xml = tmp_path / "t.xml"
    xml.write_text(
        "<dataset><images><image file='a.jpg'>"
        "<box top='1' left='2' width='3' height='4'/><box top='0' left='0' width='5' height='5' ignore='1'/>"
        "</image><image file='sub/b.jpg'/></images></dataset>"
    )
    a, b = load_dlib_boxes([xml])
    np.testing.assert_array_equal(a.boxes, [[2, 1, 5, 5], [0, 0, 5, 5]])
    np.testing.assert_array_equal(a.ignore, [False, True])
    assert a.path == tmp_path / "a.jpg" and b.path == tmp_path / "sub" / "b.jpg"
    assert b.boxes.shape == (0, 4) and b.ignore.shape == (0,)
    with pytest.raises(FileNotFoundError, match="missing.xml"):
        load_dlib_boxes([tmp_path / "missing.xml"])


def test_lfw_images_sorted_and_complete(shared_data: Path) -> None:
    images = lfw_images()
    assert len(images) == LFW_IMAGE_COUNT
    assert images == sorted(images)
    assert images == lfw_images(shared_data / "lfw")


def test_lfw_landmarks_cover_samples_and_eye_order(shared_data: Path) -> None:
    landmarks = load_lfw_landmarks()
    for key in SAMPLE_LFW:
        assert (shared_data / "lfw" / "images" / key).is_file()
        assert landmarks[key].shape == (5, 2) and landmarks[key].dtype == np.float32
    for path in lfw_subset(20, seed=3):
        assert f"{path.parent.name}/{path.name}" in landmarks
    points = np.stack(list(landmarks.values()))
    assert np.mean(points[:, 0, 0] < points[:, 1, 0]) > 0.95  # left eye is image-left
    assert np.mean(points[:, 2, 1] < points[:, 3, 1]) > 0.95  # nose above mouth
    assert np.all((points >= -50) & (points <= 300))  # 250x250 coordinates


def test_lfw_subset_deterministic(shared_data: Path) -> None:
    a = lfw_subset(50, seed=0)
    assert a == lfw_subset(50, seed=0)
    assert a == sorted(a) and len(set(a)) == 50
    assert set(a) <= set(lfw_images())
    assert a != lfw_subset(50, seed=1)
    with pytest.raises(ValueError, match="n="):
        lfw_subset(LFW_IMAGE_COUNT + 1)


def test_detection_eval_images(shared_data: Path) -> None:
    images = detection_eval_images()
    assert images == sorted(images)
    assert shared_data / "deepface-unit" / "couple.jpg" in images
    assert shared_data / "group-photos" / "sample1.jpg" in images
    assert all(p.suffix.lower() in {".jpg", ".jpeg", ".png"} for p in images)


def test_train_faces(shared_data: Path) -> None:
    faces = load_train_faces()
    assert len(faces) == 10114
    first = faces[0]
    assert first.path == shared_data / "train-faces" / "celeba_1" / "000023.jpg" and first.path.is_file()
    assert first.identity == "celeba_1"
    np.testing.assert_allclose(first.landmarks[0], [66.73, 70.14], rtol=1e-5)
    points = np.stack([f.landmarks for f in faces])
    assert points.shape == (10114, 5, 2) and points.dtype == np.float32
    assert np.mean(points[:, 0, 0] < points[:, 1, 0]) > 0.95


def test_video_frames(shared_data: Path) -> None:
    frames = list(iter_video_frames(shared_data / "video" / "facenet_pytorch_video.mp4", limit=3))
    assert len(frames) == 3
    for frame in frames:
        assert frame.shape == (480, 640, 3) and frame.dtype == np.uint8


def test_video_frames_step_and_size(shared_data: Path) -> None:
    path = shared_data / "video" / "short_hamilton_clip.mp4"
    frames = list(iter_video_frames(path, size=(320, 180), step=100))
    assert len(frames) == 3  # 275 frames → indices 0, 100, 200
    assert frames[0].shape == (180, 320, 3)


def test_video_missing_file_is_clear(tmp_path: Path) -> None:
    missing = tmp_path / "nope.mp4"
    with pytest.raises(FileNotFoundError, match="nope.mp4"):
        next(iter_video_frames(missing))


def test_video_unreadable_file_is_clear(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.mp4"
    bogus.write_bytes(b"not a video")
    with pytest.raises(ValueError, match="cannot open video"):
        next(iter_video_frames(bogus))
