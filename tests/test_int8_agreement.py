"""int8 finds what float finds, on a fixed 200-image subset of real photos (the issue's bounds)."""

from __future__ import annotations

import pytest

from converters.datasets import detection_eval_images, lfw_subset
from converters.evaluate.mtcnn import agreement, load_detectors

LFW_IMAGES_IN_SUBSET = 130  # + 64 deepface-unit + 6 group-photos = 200
SUBSET_SEED = 1
MIN_RECALL = 0.98
MAX_LANDMARK_ERROR = 0.03  # of the box size
# int8 adds a few faces that float scores just under O-Net's threshold (0.70-0.77 measured): a looser bound.
MIN_PRECISION = 0.95

pytestmark = pytest.mark.slow  # ~1-2 min: 200 images through both detectors (CI runs the slow tier)


@pytest.fixture(scope="module")
def subset(shared_data):
    images = lfw_subset(LFW_IMAGES_IN_SUBSET, seed=SUBSET_SEED) + detection_eval_images()
    assert len(images) == 200
    return images


def test_int8_recall_and_landmarks_match_float(subset):
    float_detector, int8_detector = load_detectors(num_threads=2)
    summary = agreement(subset, float_detector, int8_detector)
    assert summary["float_faces"] >= 200  # LFW images have at least one face each, group photos many
    assert summary["recall"] >= MIN_RECALL, summary["disagreements"]
    assert summary["landmark_error_mean"] <= MAX_LANDMARK_ERROR
    assert summary["precision"] >= MIN_PRECISION
