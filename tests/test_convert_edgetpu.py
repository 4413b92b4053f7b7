"""The EdgeTPU checker (:func:`tflite_tools.check_edgetpu`) on the shipped models and on tiny TF-built models that
each break one rule, and ``doorface-convert edgetpu`` end to end for a small camera (this machine has no
``edgetpu_compiler``: the command must say so and compile nothing)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from converters.quantize import tflite_tools
from edge.config import load_config
from edge.manifest import Manifest

pytestmark = pytest.mark.convert
SMALL_CAMERA = (160, 120)  # width, height: four P-Net levels at pi4-coral's min_face_size 40
CALIBRATION_IMAGES = 16


def _tflite(tmp_path, name, build, int8=True, input_shape=(1, 8, 8, 3)):
    """A tiny Keras model ``build(inputs)`` as (int8 by default) TFLite in ``tmp_path``."""
    import keras

    inputs = keras.Input(input_shape[1:], batch_size=input_shape[0])
    model = keras.Model(inputs, build(inputs))
    rng = np.random.default_rng(0)
    static = [1 if d is None else d for d in input_shape]

    def representative():
        for _ in range(8):
            yield [rng.uniform(-1, 1, static).astype(np.float32)]

    path = tmp_path / f"{name}.tflite"
    path.write_bytes(tflite_tools.to_tflite(model, representative if int8 else None))
    return path


def test_shipped_int8_mtcnn_names_its_dynamic_inputs_and_the_embedder_maps_whole():
    manifest = Manifest.load()
    report = tflite_tools.check_edgetpu(manifest.entry("pnet").path)
    assert not report.compatible
    assert report.first_fallback.index == 0 and report.mapped_ops == 0
    assert "dynamic shape" in report.first_fallback.reason
    assert str(report.first_fallback).startswith("op 0 CONV_2D: tensor 'serving_default_image:0' (")
    for key in ("rnet", "onet"):  # a dynamic batch for the CPU; `doorface-convert edgetpu` fixes it (tested below)
        report = tflite_tools.check_edgetpu(manifest.entry(key).path)
        assert not report.compatible and report.first_fallback.index == 0
        assert "dynamic shape" in report.first_fallback.reason
    embedder = tflite_tools.check_edgetpu(manifest.entry(load_config("pi4-coral").embedder.model).path)
    assert embedder.compatible and embedder.first_fallback is None and embedder.mapped_ops == embedder.ops > 100


def test_float_model_falls_back_at_its_first_op(tmp_path):
    import keras

    path = _tflite(tmp_path, "float", lambda x: keras.layers.Conv2D(4, 3)(x), int8=False)
    report = tflite_tools.check_edgetpu(path)
    assert report.first_fallback.index == 0 and report.first_fallback.op == "CONV_2D"
    assert "is float32" in report.first_fallback.reason


def test_op_off_the_list_ends_the_partition_where_it_runs(tmp_path):
    import keras
    from keras import ops

    # CONV_2D maps; an int8 SQUARED_DIFFERENCE (not on the EdgeTPU's list) after it ends the one partition.
    path = _tflite(tmp_path, "offlist", lambda x: ops.square(keras.layers.Conv2D(4, 3)(x) - 0.5))
    report = tflite_tools.check_edgetpu(path)
    assert report.first_fallback is not None and report.first_fallback.index >= 1
    assert report.first_fallback.op not in tflite_tools.EDGETPU_OPS
    assert report.mapped_ops == report.first_fallback.index
    assert report.problems[0] == str(report.first_fallback)


def test_dynamic_shape_is_named(tmp_path):
    import keras

    path = _tflite(tmp_path, "dynamic", lambda x: keras.layers.Conv2D(4, 3)(x), input_shape=(None, 8, 8, 3))
    report = tflite_tools.check_edgetpu(path)
    assert report.first_fallback.index == 0 and "dynamic shape" in report.first_fallback.reason


def test_batch_of_crops_breaks_the_three_innermost_dimensions_rule(tmp_path):
    """Why R-Net/O-Net get batch 1: a (4, 24, 24, 3) input has 4 dimensions > 1; (1, 24, 24, 3) maps."""
    import keras

    def net(x):
        return keras.layers.Dense(2)(keras.layers.Flatten()(keras.layers.Conv2D(4, 3, strides=4)(x)))

    batched = tflite_tools.check_edgetpu(_tflite(tmp_path, "b4", net, input_shape=(4, 24, 24, 3)))
    assert batched.first_fallback.index == 0
    assert "(4, 24, 24, 3) has 4 dimensions > 1" in batched.first_fallback.reason
    single = tflite_tools.check_edgetpu(_tflite(tmp_path, "b1", net, input_shape=(1, 24, 24, 3)))
    assert single.compatible and single.mapped_ops == single.ops


@pytest.mark.skipif(shutil.which("edgetpu_compiler") is not None, reason="checks the no-compiler path")
def test_edgetpu_command_writes_static_models_of_the_runtime_pyramid_and_skips_compiling(tmp_path, capsys, shared_data):
    import cv2

    from converters import cli, datasets
    from converters.build import edgetpu
    from edge import interpreter as tfl
    from edge import mtcnn as cascade
    from edge.image_io import load_image

    out = tmp_path / "out"
    width, height = SMALL_CAMERA
    status = cli.main(["edgetpu", "--device-config", "device_configs/pi4-coral.yaml", "--width", str(width),
                       "--height", str(height), "--calibration-images", str(CALIBRATION_IMAGES), "--out", str(out)])
    printed = capsys.readouterr().out
    assert status == 0
    assert "edgetpu_compiler is not on PATH: checked only, nothing compiled" in printed
    assert not list(out.glob("*_edgetpu.*")) and not (out / "manifest.json").exists()

    # The runtime's own pyramid on a real frame of that size gives P-Net's shapes.
    config = load_config("pi4-coral")
    params = config.detector.cascade_params()
    frame = cv2.resize(load_image(datasets.load_train_faces()[0].path), (width, height))
    runtime_levels = [level.shape[:2] for _, level in cascade.Pyramid.build(frame, params).for_pnet()]
    assert runtime_levels == edgetpu.pnet_shapes(width, height, params) and len(runtime_levels) >= 3

    report = json.loads((out / edgetpu.REPORT_NAME).read_text())
    models = {m["key"]: m for m in report["models"]}
    assert [tuple(m["shape"][1:3]) for k, m in models.items() if k.startswith("pnet_")] == runtime_levels
    assert models["rnet_b1"]["shape"] == [1, 24, 24, 3] and models["onet_b1"]["shape"] == [1, 48, 48, 3]
    assert models[config.embedder.model]["shape"][0] == 1
    for m in report["models"]:
        path = out / m["file"]
        check = tflite_tools.check_edgetpu(path)
        assert check.compatible, (m["key"], check.problems)
        assert m["verdict"] == "maps whole" and m["mapped_ops"] == m["ops"] == check.ops
        interp = tfl.make_interpreter(path.read_bytes())
        assert all(d > 0 for d in interp.get_input_details()[0]["shape_signature"])
        assert all(d > 0 for t in interp.get_tensor_details() for d in t["shape_signature"])
        assert interp.get_input_details()[0]["dtype"] == np.int8


@pytest.mark.parametrize("args, message", [
    (["--device-config", "device_configs/no-such-device.yaml"], "no-such-device.yaml"),
    (["--device-config", "device_configs/pi4-coral.yaml", "--calibration-images", "0"],
     "calibration_images must be at least 1"),
])
def test_edgetpu_command_bad_input_is_one_clear_error_and_writes_nothing(tmp_path, capsys, args, message):
    from converters import cli

    out = tmp_path / "out"
    assert cli.main(["edgetpu", *args, "--out", str(out)]) == 1
    assert message in capsys.readouterr().err
    assert not out.exists()
