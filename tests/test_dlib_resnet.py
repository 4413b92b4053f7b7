"""The shipped dlib ResNet embedder: manifest, int8 graph, dimension, identity separation; the converter's pure parts.

TF-free: the models run through the TFLite interpreter (``edge.embedder``) only.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pytest

from converters.build import dlib_resnet as dr
from converters.datasets import load_train_faces
from converters.quantize.tflite_tools import inspect_model
from edge.embedder import Embedder, distance
from edge.image_io import load_image
from edge.manifest import Manifest, default_models_dir

INT8_KEY, FLOAT_KEY = "dlib_resnet", "dlib_resnet_float"
ALLOWED_OPS = {"ADD", "CONV_2D", "FULLY_CONNECTED", "MAX_POOL_2D", "MEAN", "PAD"}
IDENTITIES = 20
IMAGES_PER_IDENTITY = 3
MIN_AGREEMENT = 0.99


@pytest.fixture(scope="module")
def manifest() -> Manifest:
    return Manifest.load(default_models_dir())


@pytest.mark.parametrize("key", [INT8_KEY, FLOAT_KEY])
def test_manifest_entry_verifies(manifest, key):
    entry = manifest.entry(key)
    assert entry.read_verified()
    assert entry.task == "face_embedding"
    assert entry.fields["family"] == "dlib_resnet"
    assert entry.fields["license"] == "CC0-1.0"
    assert entry.input.shape == (1, dr.CHIP_SIZE, dr.CHIP_SIZE, 3)
    assert (entry.input.mean, entry.input.std) == (dr.PIXEL_MEAN, dr.PIXEL_STD)
    assert entry.fields["align"]["size"] == [dr.CHIP_SIZE, dr.CHIP_SIZE]
    assert entry.fields["embedding"] == {"dim": 128, "metric": "cosine", "normalise": "l2 on host"}
    assert entry.fields["source"]["tarball_sha256"] == dr.FACE_API_NPM.tarball_sha256


def test_int8_model_is_fully_int8_with_plain_ops(manifest):
    entry = manifest.entry(INT8_KEY)
    report = inspect_model(entry.path)
    assert report.fully_int8
    assert set(report.ops) <= ALLOWED_OPS
    assert entry.fields["float_reference"] == FLOAT_KEY
    assert entry.fields["agreement"]["int8_vs_float_cosine_mean"] >= MIN_AGREEMENT


def test_float_reference_is_float(manifest):
    report = inspect_model(manifest.entry(FLOAT_KEY).path)
    assert report.input_dtype == "float32"
    assert set(report.ops) <= ALLOWED_OPS


def test_embedder_outputs_128_unit_vectors(manifest):
    embedder = Embedder.from_manifest(INT8_KEY, manifest)
    chips = np.random.default_rng(0).integers(0, 256, (2, dr.CHIP_SIZE, dr.CHIP_SIZE, 3), dtype=np.uint8)
    out = embedder.embed_chips(chips)
    assert out.shape == (2, 128)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)


@pytest.fixture(scope="module")
def identity_faces(shared_data) -> list[list]:
    """The first identities (sorted) with enough crops, a fixed number of crops each."""
    by_identity = defaultdict(list)
    for face in load_train_faces(shared_data / "train-faces"):
        by_identity[face.identity].append(face)
    chosen = [faces for _, faces in sorted(by_identity.items()) if len(faces) >= IMAGES_PER_IDENTITY]
    return [faces[:IMAGES_PER_IDENTITY] for faces in chosen[:IDENTITIES]]


@pytest.mark.parametrize("key", [INT8_KEY, FLOAT_KEY])
def test_same_identity_closer_than_different(manifest, identity_faces, key):
    embedder = Embedder.from_manifest(key, manifest)
    vectors, labels = [], []
    for label, faces in enumerate(identity_faces):
        for face in faces:
            vectors.append(embedder(load_image(face.path), face.landmarks)[0])
            labels.append(label)
    d = distance(np.stack(vectors), np.stack(vectors), embedder.spec.metric)
    labels = np.asarray(labels)
    same = labels[:, None] == labels[None, :]
    off_diagonal = ~np.eye(len(labels), dtype=bool)
    same_mean, different_mean = d[same & off_diagonal].mean(), d[~same].mean()
    assert same_mean < different_mean, (same_mean, different_mean)
    # Each identity: its own pairs closer, on average, than its pairs with everyone else.
    per_identity = [d[labels == i][:, labels == i][off_diagonal[: IMAGES_PER_IDENTITY, : IMAGES_PER_IDENTITY]].mean()
                    < d[labels == i][:, labels != i].mean() for i in range(len(identity_faces))]
    assert np.mean(per_identity) >= 0.9, per_identity


# ------------------------------------------------------------------------------------- converter, pure numpy


def test_template_eyes_and_mouth_follow_dlibs_mean_face(manifest):
    template = np.asarray(manifest.entry(INT8_KEY).fields["align"]["template"])
    expected = dr.eyes_and_mouth_template()
    np.testing.assert_allclose(template[[0, 1, 3, 4]], expected, atol=10 ** -dr.TEMPLATE_DECIMALS)
    # Mirror-symmetric, nose between dlib's nose tip and nose base (iBUG 30 and 33) in height.
    assert template[2, 0] == pytest.approx(template[:2, 0].mean(), abs=1e-3)
    tip_y, base_y = dr.to_chip(np.array([0.515625, 0.628106]))
    assert tip_y <= template[2, 1] <= base_y


def test_fold_affine_and_input_normalisation_are_exact():
    rng = np.random.default_rng(0)
    filters, bias = rng.normal(size=(7, 7, 3, 4)).astype(np.float32), rng.normal(size=4).astype(np.float32)
    scale, shift = rng.normal(size=4).astype(np.float32), rng.normal(size=4).astype(np.float32)
    patch = rng.integers(0, 256, (7, 7, 3)).astype(np.float64)
    source_input = (patch - np.asarray(dr.SOURCE_MEAN_RGB)) / dr.SOURCE_DIVISOR
    expected = (np.einsum("hwc,hwco->o", source_input, filters) + bias) * scale + shift
    w, b = dr.fold_input_normalisation(*dr.fold_affine(filters, bias, scale, shift))
    ours = np.einsum("hwc,hwco->o", (patch - dr.PIXEL_MEAN) / dr.PIXEL_STD, w) + b
    np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-4)


def test_shortcut_filters_average_and_pad_channels():
    x = np.random.default_rng(0).normal(size=(2, 2, 3))
    out = np.einsum("hwc,hwco->o", x, dr.shortcut_filters(3, 5))
    np.testing.assert_allclose(out, np.concatenate([x.mean(axis=(0, 1)), np.zeros(2)]), atol=1e-6)


def test_numpy_conv_matches_tf_same_padding():
    x = np.arange(5 * 5, dtype=np.float64).reshape(5, 5, 1)
    ones = np.ones((3, 3, 1, 1))
    same = dr._np_conv(x, ones, 1, "same")[..., 0]
    assert same.shape == (5, 5) and same[0, 0] == x[:2, :2].sum() and same[2, 2] == x[1:4, 1:4].sum()
    assert dr._np_conv(x, ones, 2, "valid").shape == (2, 2, 1)


@pytest.mark.slow
def test_float_model_matches_a_numpy_forward_pass_of_the_source_weights(manifest, identity_faces):
    """The shipped float model vs face-api's forward pass re-done in float64 from the pinned npm weights."""
    from converters.fetch.sources import SourceError

    try:
        weights = dr.decode_weights(dr.extract_source()[0])
    except SourceError as exc:
        pytest.skip(f"source not available: {exc}")
    face = identity_faces[0][0]
    embedder = Embedder.from_manifest(FLOAT_KEY, manifest)
    chip = embedder.align(load_image(face.path), face.landmarks)
    ours = dr.tflite_embeddings(manifest.entry(FLOAT_KEY).read_verified(), chip[None])[0]
    np.testing.assert_allclose(ours, dr.reference_forward(weights, chip), atol=1e-5)
