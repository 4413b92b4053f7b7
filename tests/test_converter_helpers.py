"""The converters' shared helpers: one pixel normalisation, running and timing a converted model, and the TFJS
weight reader. TensorFlow-free: the shipped models run through ``edge.interpreter``."""

from __future__ import annotations

import numpy as np
import pytest

from converters.build import prelu, tfjs
from converters.quantize import tflite_tools
from edge import interpreter as tfl
from edge.manifest import Manifest

PIXELS = np.arange(256, dtype=np.uint8)


@pytest.fixture(scope="module")
def manifest() -> Manifest:
    return Manifest.load()


@pytest.mark.parametrize(("mean", "std"), [(127.5, 128.0), (128.0, 255.0), (122.782, 255.0)])
def test_normalise_is_float32_arithmetic(mean, std) -> None:
    # What every converter computed before sharing it: the same bits keep the calibration sets and models the same.
    expected = ((PIXELS.astype(np.float32) - mean) / std).astype(np.float32)
    got = tflite_tools.normalise(PIXELS, mean, std)
    assert got.dtype == np.float32
    assert np.array_equal(got.view(np.uint32), expected.view(np.uint32))
    assert np.array_equal(tflite_tools.normalise(PIXELS, np.float64(mean), std), got)


def test_pixel_input_is_the_runtime_table(manifest) -> None:
    entry = manifest.entry("dlib_resnet")
    interp = tflite_tools.allocated(entry.read_verified())
    spec = tfl.input_specs(interp)[0]
    chip = np.random.default_rng(0).integers(0, 256, spec.shape[1:], dtype=np.uint8)
    encoded = tflite_tools.pixel_input(entry.input.mean, entry.input.std)(spec)(chip)
    assert encoded.shape == spec.shape and encoded.dtype == spec.dtype
    assert np.array_equal(encoded, tfl.pixel_lut(spec, entry.input.mean, entry.input.std)[chip][None])


def test_run_batch1_is_run_once_per_sample(manifest) -> None:
    entry = manifest.entry("mobilefacenet")
    content = entry.read_verified()
    chips = np.random.default_rng(1).integers(0, 256, (2, *entry.input.shape[1:]), dtype=np.uint8)
    inputs = tflite_tools.normalise(chips, entry.input.mean, entry.input.std)
    batch = tflite_tools.run_batch1(content, inputs)
    interp = tflite_tools.allocated(content)
    spec = tfl.input_specs(interp)[0]
    for x, row in zip(inputs, batch):
        assert np.array_equal(tflite_tools.run_once(interp, tfl.quantize(x[None], spec))[0].reshape(-1), row)


def test_allocated_resizes_a_fully_convolutional_input(manifest) -> None:
    content = manifest.entry("pnet").read_verified()
    interp = tflite_tools.allocated(content, input_shape=(1, 40, 30, 3))
    assert tfl.input_specs(interp)[0].shape == (1, 40, 30, 3)
    outputs = tflite_tools.run_once(interp, np.zeros((1, 40, 30, 3), tfl.input_specs(interp)[0].dtype))
    assert {o.shape[1:3] for o in outputs} == {(15, 10)}  # 12×12 windows, stride 2


def test_invoke_times_ms(manifest) -> None:
    entry = manifest.entry("rnet")
    sample = np.zeros(entry.input.shape[1:], np.float32)
    times = tflite_tools.invoke_times_ms(entry.read_verified(), sample, invokes=4, warmup=1)
    assert times.shape == (4,) and np.all(times > 0)
    calls = []
    assert tflite_tools.call_times_ms(calls.append, 3).shape == (3,) and calls == [0, 1, 2]


def _manifest(weights: list, paths=("shard1",)) -> list:
    return [{"paths": list(paths), "weights": weights}]


def test_tfjs_decode_weights_dequantizes() -> None:
    plain = np.array([[1.5, -2.0]], np.float32)
    stored = np.array([0, 1, 255], np.uint8)
    half = np.array([0.25, -3.0], np.float16)
    manifest = _manifest([
        {"name": "plain", "shape": [1, 2], "dtype": "float32"},
        {"name": "affine", "shape": [3], "dtype": "float32",
         "quantization": {"dtype": "uint8", "scale": 0.5, "min": -1.0}},
        {"name": "half", "shape": [2], "dtype": "float32", "quantization": {"dtype": "float16"}},
    ])
    weights = tfjs.decode_weights(manifest, {"shard1": plain.tobytes() + stored.tobytes() + half.tobytes()})
    np.testing.assert_array_equal(weights["plain"], plain)
    np.testing.assert_array_equal(weights["affine"], np.array([-1.0, -0.5, 126.5], np.float32))
    np.testing.assert_array_equal(weights["half"], half.astype(np.float32))
    assert all(w.dtype == np.float32 for w in weights.values())


def test_tfjs_decode_weights_rejects_bytes_no_weight_accounts_for() -> None:
    manifest = _manifest([{"name": "w", "shape": [1], "dtype": "float32"}])
    with pytest.raises(tfjs.GraphError, match="no weight accounts for"):
        tfjs.decode_weights(manifest, {"shard1": bytes(8)})
    with pytest.raises(tfjs.GraphError, match="missing"):
        tfjs.decode_weights(manifest, {})


def test_the_depthwise_prelu_identity_is_prelu_for_any_slope() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(0, 3, size=(5, 7, 6)).astype(np.float64)
    for alpha in (np.array([0.25, -0.5, 0.0, 1.0, 0.9, 0.01]), np.array([1.3, -0.2, 2.0, 0.5, 1.0, -1.5])):
        np.testing.assert_allclose(prelu.identity(x, alpha), prelu.reference(x, alpha), atol=1e-12)


def test_equalising_gains_stretch_towards_the_widest_channel_on_a_grid() -> None:
    gains = prelu.equalising_gains(np.array([8.0, 2.0, 1.0, 1e-6]), strength=1.0)
    np.testing.assert_allclose(gains[:3], [1.0, 4.0, 8.0])  # every live channel reaches the widest range
    assert gains[3] == 1.0  # a dead channel keeps its scale
    half = prelu.equalising_gains(np.array([8.0, 2.0]), strength=0.5)
    np.testing.assert_allclose(half, [1.0, 2.0])  # half-way in log space
    capped = prelu.equalising_gains(np.array([1.0, 1e-2]), strength=1.0, max_gain=16.0)
    assert capped[1] == 16.0
