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


def test_the_signed_branch_prelu_identity_is_prelu_for_any_slope() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(0, 3, size=(5, 7, 6)).astype(np.float64)
    for alpha in (np.array([0.25, -0.5, 0.0, 1.0, 0.9, 0.01]), np.array([1.3, -0.2, 2.0, 0.5, 1.0, -1.5])):
        np.testing.assert_allclose(prelu.signed_identity(x, alpha), prelu.reference(x, alpha), atol=1e-12)


def _random_source_weights(name: str, rng, std: float = 0.3) -> list[np.ndarray]:
    """Weights in the source's layout for ``name``; PReLU slopes of both signs and above 1."""
    from converters.build import mtcnn_keras as mk

    spec, shapes, channels, side = mk.SPECS[name], [], 3, mk.SPECS[name].input_shape[0]
    for layer in spec.body:
        if layer.kind == "conv":
            shapes += [(layer.kernel, layer.kernel, channels, layer.units), (layer.units,)]
            channels, side = layer.units, side and side - layer.kernel + 1
        elif layer.kind == "pool" and side:
            side = -(-side // layer.stride) if layer.padding == "same" else (side - layer.kernel) // layer.stride + 1
        elif layer.kind == "permute_flatten":
            channels = side * side * channels
        elif layer.kind == "dense":
            shapes += [(channels, layer.units), (layer.units,)]
            channels = layer.units
        elif layer.kind == "prelu":
            shapes.append(("slopes", channels))
    shapes += [s for head in spec.heads for s in (((1, 1, channels, head.units) if side is None else
                                                    (channels, head.units)), (head.units,))]
    flat = spec.body[-2].kind == "dense"
    weights = []
    for shape in shapes:
        if shape[0] == "slopes":
            slope_shape = (shape[1],) if flat and len(weights) == len(shapes) - 2 * len(spec.heads) - 1 else \
                (1, 1, shape[1])
            weights.append(rng.uniform(-1.5, 1.5, slope_shape).astype(np.float32))
        else:
            weights.append(rng.normal(0, std, shape).astype(np.float32))
    return weights


@pytest.mark.convert  # Keras, TensorFlow
def test_both_int8_mtcnn_forms_equal_the_faithful_net_in_float_equalised_or_not() -> None:
    """P-Net, R-Net and O-Net (dense PReLUs, flatten, heads that read the last PReLU's branches or a folded mix),
    in the shipped ReLU-branch form and in the elementwise one."""
    from converters.build import mtcnn_keras as mk

    rng = np.random.default_rng(2)
    for name in mk.NETS:
        weights = _random_source_weights(name, rng)
        spec = mk.SPECS[name]
        shape = (2, 20, 26, 3) if spec.input_shape[0] is None else (2, *spec.input_shape)
        x = rng.uniform(-1, 1, shape).astype(np.float32)
        faithful = [np.asarray(t) for t in mk.build(name, weights, "faithful", batch_size=None)(x)]
        slopes = [weights[i] for kind, i in mk._weight_slots(name) if kind == "prelu"]
        equalised = mk.equalised(name, weights, [rng.uniform(0.5, 4.0, w.size) for w in slopes])
        for net in (mk.build(name, weights, "int8", batch_size=None), mk.build_elementwise(name, weights, None),
                    mk.build_elementwise(name, equalised, None)):
            for ours, theirs in zip(net(x), faithful):
                np.testing.assert_allclose(np.asarray(ours), theirs, atol=2e-4, rtol=1e-4)


def _simulated_float_and_int8(simulated, layers, plain, rng, side: int, calibration_count: int, count: int):
    """Outputs (each a list of arrays) on ``count`` random pixel images of: the net built with distill's
    quantization points at the ranges seen on ``calibration_count`` others, the same net in float, and its int8
    TFLite conversion calibrated on those others."""
    from converters.build import distill

    def pixels(n):  # on the pixel grid, which the int8 input holds exactly
        return ((rng.integers(0, 256, (n, side, side, 3)) - 127.5) / 128).astype(np.float32)

    calibration = [pixels(1) for _ in range(calibration_count)]
    x = pixels(count)
    distill.observe_bounds(simulated, layers, calibration)
    content = tflite_tools.to_tflite(plain, lambda: ([c] for c in calibration))
    interp = tflite_tools.allocated(content, input_shape=x.shape)
    device = tflite_tools.run_once(interp, tfl.quantize(x, tfl.input_specs(interp)[0]))

    def as_list(out):
        return [np.asarray(o) for o in out] if isinstance(out, (list, tuple)) else [np.asarray(out)]

    return as_list(simulated(x)), as_list(plain(x)), list(device)


@pytest.mark.convert  # Keras, TensorFlow
def test_the_fine_tuning_simulation_is_nearer_the_int8_model_than_float_is() -> None:
    """distill's fake quantization at the converter's calibration ranges moves the net's outputs towards the int8
    TFLite model's (not onto them: fixed-point rescaling, int32 biases and single rounding differ; see distill)."""
    from converters.build import distill
    from converters.build import mtcnn_keras as mk

    rng = np.random.default_rng(3)
    weights = _random_source_weights("rnet", rng, std=0.09)
    layers = distill.QuantLayers()
    outputs = _simulated_float_and_int8(mk.build_elementwise("rnet", weights, None, layers=layers), layers,
                                        mk.build_elementwise("rnet", weights, None), rng, 24, 64, 32)
    sim_box, float_box, device_box = (next(a for a in out if a.shape[-1] == 4) for out in outputs)
    assert np.abs(sim_box - device_box).mean() < 0.85 * np.abs(float_box - device_box).mean()


@pytest.mark.convert  # Keras, TensorFlow
def test_the_mtcnn_converter_refuses_an_unknown_prelu_form_before_writing_anything(tmp_path) -> None:
    from converters.build import mtcnn

    with pytest.raises(ValueError, match=r"prelu_form must be one of \('branches', 'elementwise'\)"):
        mtcnn.convert(tmp_path / "out", prelu_form="maximum")
    assert not (tmp_path / "out").exists()


def _small_mobilefacenet_plan(rng, last: str = "c4"):
    """A plan with MobileFaceNet's layer kinds: a PReLU read by a depthwise conv, one read by a 1×1 conv, a residual
    ADD, slopes of both signs and above 1; flattened after the step named ``last``."""
    from converters.build import mobilefacenet_keras as mk

    def slopes(n):
        return rng.choice([-0.4, 0.1, 0.25, 1.3], n).astype(np.float32)

    def conv(name, src, cin, cout, k=3, stride=1, padding="same"):
        return mk.Step("conv", name, (src,), rng.normal(0, 0.3, (k, k, cin, cout)).astype(np.float32),
                       rng.normal(0, 0.1, cout).astype(np.float32), strides=stride, padding=padding)

    steps = (
        mk.Step("input", "image"),
        conv("c1", "image", 3, 8, stride=2), mk.Step("prelu", "p1", ("c1",), alpha=slopes(8)),
        mk.Step("depthwise", "d1", ("p1",), rng.normal(0, 0.3, (3, 3, 8, 1)).astype(np.float32),
                rng.normal(0, 0.1, 8).astype(np.float32)), mk.Step("prelu", "p2", ("d1",), alpha=slopes(8)),
        conv("c2", "p2", 8, 8, k=1), mk.Step("add", "sum", ("c2", "p1")),
        conv("c3", "sum", 8, 6, k=1), mk.Step("prelu", "p3", ("c3",), alpha=slopes(6)),
        conv("c4", "p3", 6, 4, k=56, padding="valid"),
    )
    steps = steps[:[s.name for s in steps].index(last) + 1] + (mk.Step("flatten", "out", (last,)),)
    return mk.Plan(steps, "out", 0, sum(s.kind == "prelu" for s in steps), True)


@pytest.mark.convert  # Keras, TensorFlow
def test_every_mobilefacenet_form_equals_the_faithful_net_in_float() -> None:
    """The int8-friendly MobileFaceNet forms (relu branches, equalised or not; depthwise and signed PReLU,
    equalised) compute the PReLU net."""
    from converters.build import mobilefacenet_keras as mk

    rng = np.random.default_rng(5)
    plan = _small_mobilefacenet_plan(rng)
    x = rng.uniform(-1, 1, (2, mk.INPUT_SIZE, mk.INPUT_SIZE, 3)).astype(np.float32)
    faithful = np.asarray(mk.build(plan, "faithful", batch_size=None)(x))
    ranges = mk.prelu_ranges(plan, x)
    equal_plan = mk.equalised_plan(plan, ranges, 1.0, 0.25)
    for variant, form_plan, scales in (("relu", plan, None), ("relu", plan, mk.equalisation(plan, ranges, 1.0, 0.25)),
                                       ("depthwise", equal_plan, None), ("signed", equal_plan, None)):
        ours = np.asarray(mk.build(form_plan, variant, batch_size=None, scales=scales)(x))
        np.testing.assert_allclose(ours, faithful, atol=2e-4 * np.abs(faithful).max(), err_msg=variant)


@pytest.mark.convert  # Keras, TensorFlow
def test_the_simulated_signed_mobilefacenet_is_nearer_its_int8_model_than_float_is() -> None:
    """The signed form built with distill's quantization points (what its fine-tuning trains) moves towards the
    int8 TFLite model's outputs, a conv, a depthwise conv and two signed PReLUs deep. Only that deep: further on,
    rounding that the simulation does differently from TFLite compounds (a value one level apart early is a
    different value later), and the simulated net is barely nearer its int8 model than float is."""
    from converters.build import distill
    from converters.build import mobilefacenet_keras as mk

    rng = np.random.default_rng(6)
    plan = _small_mobilefacenet_plan(rng, last="p2")
    layers = distill.QuantLayers()
    (sim,), (flt,), (device,) = _simulated_float_and_int8(
        mk.build(plan, "signed", batch_size=None, layers=layers), layers, mk.build(plan, "signed", batch_size=None),
        rng, mk.INPUT_SIZE, 32, 8)
    assert np.abs(sim - device).mean() < 0.75 * np.abs(flt - device).mean()
