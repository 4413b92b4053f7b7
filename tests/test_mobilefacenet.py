"""The shipped int8 MobileFaceNet: verified, fully int8, 192-D, and it tells train-faces identities apart.

TensorFlow-free: the model runs through ``edge.interpreter`` on faces aligned with ``edge.align`` using the manifest's
own template, as on a device.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pytest

from converters.build.mobilefacenet import split_faces
from converters.datasets import load_train_faces
from converters.quantize import tflite_tools
from edge import interpreter as tfl
from edge.align import align_face
from edge.image_io import load_image
from edge.manifest import Manifest

KEY = "mobilefacenet"
EMBEDDING_DIM = 192
IDENTITIES = 20
IDENTITY_SEED = 3
MIN_MARGIN = 0.2  # mean same-identity cosine minus mean different-identity cosine (measured ~0.55)
MIN_CLOSER_FRACTION = 0.8  # identities whose pair is closer than that face is, on average, to the others


@pytest.fixture(scope="module")
def entry():
    return Manifest.load().entry(KEY)


@pytest.fixture(scope="module")
def model(entry):
    interp = tfl.make_interpreter(entry.read_verified(), num_threads=2)
    interp.allocate_tensors()
    return interp


def embed(interp, entry, image: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """One face → its L2-normalised embedding, preprocessed exactly as the manifest says."""
    align = entry.fields["align"]
    chip = align_face(image, landmarks, np.asarray(align["template"]), tuple(align["size"]))
    if entry.input.channels == "BGR":
        chip = chip[..., ::-1]
    spec, out = tfl.input_specs(interp)[0], tfl.output_specs(interp)[0]
    values = (chip.astype(np.float32) - entry.input.mean) / entry.input.std
    interp.set_tensor(spec.index, tfl.quantize(values[None], spec))
    interp.invoke()
    vector = tfl.get_output(interp, out).reshape(-1)
    return vector / np.linalg.norm(vector)


def test_manifest_entry_verifies(entry):
    data = entry.read_verified()  # raises on a missing file or a sha256 mismatch
    assert len(data) == entry.fields["size_bytes"]
    assert entry.task == "face_embedding"
    assert entry.fields["embedding"] == {"dim": EMBEDDING_DIM, "metric": "cosine", "normalise": "l2 on host"}
    assert entry.fields["input"]["shape"] == [1, 112, 112, 3]
    assert np.asarray(entry.fields["align"]["template"]).shape == (5, 2)
    assert entry.fields["reference"]["cosine_mean"] >= 0.9999
    assert entry.fields["agreement"]["int8_vs_float_cosine_mean"] >= 0.99


def test_model_is_fully_int8(entry):
    report = tflite_tools.inspect_model(entry.path)
    assert report.fully_int8, report.float_ops
    assert "PRELU" not in report.ops  # rewritten: int8 PReLU runs on slow reference kernels
    assert report.output_dtypes == ("int8",)


def test_embedding_has_192_dimensions(model):
    (spec,) = tfl.input_specs(model)
    (out,) = tfl.output_specs(model)
    assert spec.shape == (1, 112, 112, 3) and spec.dtype == np.int8
    assert out.shape[-1] == EMBEDDING_DIM


def test_same_identity_is_closer_than_other_identities(model, entry, shared_data):
    faces = load_train_faces(shared_data / "train-faces")
    calibration = set(split_faces(len(faces)).calibration)
    by_identity = defaultdict(list)
    for i, face in enumerate(faces):
        if i not in calibration:
            by_identity[face.identity].append(face)
    eligible = sorted(k for k, v in by_identity.items() if len(v) >= 2)
    assert len(eligible) >= IDENTITIES
    picked = np.random.default_rng(IDENTITY_SEED).choice(len(eligible), size=IDENTITIES, replace=False)
    pairs = [by_identity[eligible[i]][:2] for i in sorted(picked)]
    first = np.stack([embed(model, entry, load_image(a.path), a.landmarks) for a, _ in pairs])
    second = np.stack([embed(model, entry, load_image(b.path), b.landmarks) for _, b in pairs])
    assert first.shape == (IDENTITIES, EMBEDDING_DIM)

    similarity = first @ second.T  # [i, j]: face 1 of identity i vs face 2 of identity j
    same = np.diag(similarity)
    others = similarity[~np.eye(IDENTITIES, dtype=bool)].reshape(IDENTITIES, IDENTITIES - 1)
    assert same.mean() - others.mean() >= MIN_MARGIN, (same.mean(), others.mean())
    assert np.mean(same > others.mean(axis=1)) >= MIN_CLOSER_FRACTION
