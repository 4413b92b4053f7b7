"""Golden tests: the shipped int8 MTCNN on real faces from ../shared, model integrity, interpreter plumbing."""

from __future__ import annotations

import logging
import shutil

import numpy as np
import pytest

from bench.delegation import delegation
from converters.datasets import load_lfw_landmarks
from converters.evaluate.metrics import centre_face_index, landmark_nme_interocular
from converters.quantize import tflite_tools
from edge import interpreter as tfl
from edge import mtcnn as cascade
from edge.detector import ONET_MAX_BATCH, RNET_MAX_BATCH, MtcnnDetector
from edge.faces import Detections
from edge.image_io import load_image, to_rgb
from edge.manifest import Manifest, ManifestError, ModelIntegrityError, default_models_dir

LFW_SAMPLES = ("Aaron_Eckhart/Aaron_Eckhart_0001.jpg", "Colin_Powell/Colin_Powell_0040.jpg",
               "George_W_Bush/George_W_Bush_0007.jpg")


@pytest.fixture(scope="module")
def detector() -> MtcnnDetector:
    return MtcnnDetector.from_manifest(num_threads=2)


def test_manifest_lists_int8_mtcnn_with_provenance():
    manifest = Manifest.load()
    for key in ("pnet", "rnet", "onet"):
        entry = manifest.entry(key)
        assert entry.input.dtype == "int8" and entry.input.channels == "RGB"
        assert entry.fields["source"]["package"] == "mtcnn" and entry.fields["source"]["version"] == "1.0.0"
        assert entry.fields["license"] == "MIT"
        assert entry.fields["calibration"]["samples"] > 100
        assert len(entry.read_verified()) == entry.fields["size_bytes"]
        assert (manifest.path.parent / "cards" / f"{key}.md").is_file()


INT8_KEYS = sorted(k for k, e in Manifest.load().models.items() if e.input.dtype in ("int8", "uint8"))


@pytest.mark.parametrize("key", INT8_KEYS)
def test_every_shipped_int8_model_has_no_float_op(key):
    """The parser check over every int8 model of the manifest (a float op would be a float island)."""
    entry = Manifest.load().entry(key)
    entry.read_verified()
    report = tflite_tools.inspect_model(entry.path)
    assert report.fully_int8, f"float ops in {key}: {report.float_ops}"
    assert "PRELU" not in report.ops  # int8 PReLU runs on reference kernels: the shipped models avoid it


@pytest.mark.parametrize("key", INT8_KEYS)
def test_every_shipped_int8_model_runs_wholly_inside_xnnpack(key):
    """No node left to TFLite's reference kernels (int8 PRELU and SOFTMAX were; LOGISTIC and the rest are not)."""
    entry = Manifest.load().entry(key)
    shape = (1, 120, 160, 3) if entry.input.shape[1] < 0 else None
    assert delegation(entry.read_verified(), shape).outside == ()


def test_crop_nets_take_a_frames_candidates_in_batches_with_the_outputs_of_one_by_one(detector, shared_data):
    """R-Net and O-Net have a dynamic batch: a frame's crops run in invokes of up to the cap, and each crop's outputs
    are those it gets alone (int8 XNNPACK computes every row of a batch the same way)."""
    image = load_image(shared_data / "group-photos" / "sample1.jpg")
    pyramid = cascade.Pyramid.build(image)
    candidates = cascade.propose(pyramid, detector.pnet, cascade.DEFAULT_PARAMS)
    for net, side, cap in ((detector.rnet, cascade.RNET_INPUT_SIZE, RNET_MAX_BATCH),
                           (detector.onet, cascade.ONET_INPUT_SIZE, ONET_MAX_BATCH)):
        assert net.bound.fixed_batch is None
        crops = pyramid.crops(candidates[:, :4], side)
        assert len(crops) > cap  # the group photo gives more candidates than one invoke takes
        batched = net(crops)
        assert net.bound.batch <= cap
        alone = [net(crops[i:i + 1]) for i in range(len(crops))]
        for k, column in enumerate(batched):
            np.testing.assert_array_equal(column, np.concatenate([one[k] for one in alone]))


def test_int8_models_listed():
    assert {"pnet", "rnet", "onet", "dlib_resnet"} <= set(INT8_KEYS)


def test_lfw_faces_found_with_accurate_landmarks(detector, shared_data):
    reference = load_lfw_landmarks(shared_data / "lfw" / "landmarks_5pt.txt")
    for rel in LFW_SAMPLES:
        image = load_image(shared_data / "lfw" / "images" / rel)
        result = detector(image)
        idx = centre_face_index(result.boxes, image.shape)
        assert idx is not None, f"no centre face in {rel}"
        assert result.scores[idx] > 0.9
        assert landmark_nme_interocular(result.landmarks[idx], reference[rel]) < 0.1


def test_group_photo_many_faces(detector, shared_data):
    result = detector(load_image(shared_data / "group-photos" / "sample1.jpg"))
    assert len(result) >= 3
    assert (np.diff(result.scores) <= 0).all()  # sorted by score
    eyes = result.landmarks[:, :2]
    assert (eyes[:, 0, 0] < eyes[:, 1, 0]).mean() > 0.9  # left eye is image-left


def test_no_face_in_a_blank_image(detector):
    result = detector(np.full((480, 640, 3), 127, np.uint8))
    assert isinstance(result, Detections) and len(result) == 0


@pytest.mark.parametrize("shape", [(0, 0, 3), (0, 10, 3), (10, 0, 3), (8, 8, 3)])
def test_degenerate_arrays_give_empty_result(detector, shape):
    result = detector(np.zeros(shape, np.uint8))
    assert len(result) == 0 and result.boxes.shape == (0, 4)


def test_grayscale_and_rgba_arrays_are_handled(detector, shared_data):
    rgb = load_image(shared_data / "lfw" / "images" / LFW_SAMPLES[0])
    gray = rgb.mean(axis=2).astype(np.uint8)
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])
    assert len(detector(to_rgb(gray))) >= 1
    assert len(detector(to_rgb(rgba))) == len(detector(rgb))


def test_huge_image_is_bounded_and_still_finds_the_face(detector, shared_data):
    face = load_image(shared_data / "lfw" / "images" / LFW_SAMPLES[0])
    import cv2

    canvas = np.full((10000, 10000, 3), 90, np.uint8)
    big = cv2.resize(face, (2000, 2000), interpolation=cv2.INTER_LINEAR)
    canvas[4000:6000, 4000:6000] = big
    result = detector(canvas)
    assert len(result) >= 1
    x1, y1, x2, y2 = result.boxes[0]
    assert 4000 < (x1 + x2) / 2 < 6000 and 4000 < (y1 + y2) / 2 < 6000


def _copy_models(tmp_path):
    target = tmp_path / "models"
    shutil.copytree(default_models_dir(), target)
    return target


def test_tampered_model_is_refused_with_how_to_restore(tmp_path):
    models = _copy_models(tmp_path)
    path = models / Manifest.load(models).entry("rnet").path.name
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ModelIntegrityError, match=r"rnet.*does not match the manifest.*git checkout"):
        MtcnnDetector.from_manifest(Manifest.load(models))


def test_missing_model_and_manifest_errors(tmp_path):
    models = _copy_models(tmp_path)
    (models / Manifest.load(models).entry("onet").path.name).unlink()
    with pytest.raises(ModelIntegrityError, match=r"onet.*is missing.*reinstall doorface.*doorface-convert"):
        MtcnnDetector.from_manifest(Manifest.load(models))
    with pytest.raises(ManifestError, match="not found"):
        Manifest.load(tmp_path / "nowhere")
    (models / "manifest.json").write_text("{not json")
    with pytest.raises(ManifestError, match="unreadable"):
        Manifest.load(models)


def test_edgetpu_absent_falls_back_to_cpu_with_one_warning(caplog):
    entry = Manifest.load().entry("onet")
    with caplog.at_level(logging.WARNING, logger="edge.interpreter"):
        interp = tfl.make_interpreter(entry.read_verified(), device="edgetpu:usb")
    interp.allocate_tensors()
    warnings = [r for r in caplog.records if "EdgeTPU" in r.getMessage()]
    assert len(warnings) == 1 and "running on the CPU" in warnings[0].getMessage()
    with pytest.raises(ValueError, match="unknown device"):
        tfl.make_interpreter(entry.read_verified(), device="gpu")


def test_detector_on_absent_edgetpu_warns_once_and_runs(caplog, shared_data):
    with caplog.at_level(logging.WARNING):
        detector = MtcnnDetector.from_manifest(device="edgetpu", num_threads=1)
        result = detector(load_image(shared_data / "group-photos" / "sample1.jpg"))  # builds ~10 P-Net interpreters
    assert len(result) >= 3
    assert len([r for r in caplog.records if "EdgeTPU" in r.getMessage()]) == 1


def test_quantize_widens_and_saturates():
    spec = tfl.TensorSpec(0, "x", (3,), np.dtype(np.int8), scale=0.5, zero_point=-100)
    raw = np.array([-128, 127, 0], np.int8)
    np.testing.assert_allclose(tfl.dequantize(raw, spec), [-14.0, 113.5, 50.0])  # no int8 wrap-around
    np.testing.assert_array_equal(tfl.quantize(np.array([-1000.0, 1000.0, 0.0]), spec), [-128, 127, -100])
    lut = tfl.pixel_lut(spec, mean=127.5, std=128.0)
    assert lut.dtype == np.int8 and lut.shape == (256,)


def test_no_interpreter_package_gives_an_actionable_error():
    import subprocess
    import sys

    code = (
        "import sys\n"
        "sys.modules['ai_edge_litert'] = None\n"
        "sys.modules['ai_edge_litert.interpreter'] = None\n"
        "sys.modules['tflite_runtime'] = None\n"
        "sys.modules['tflite_runtime.interpreter'] = None\n"
        "from edge.interpreter import backend, InterpreterUnavailable\n"
        "try:\n"
        "    backend()\n"
        "except InterpreterUnavailable as exc:\n"
        "    print(exc)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "pip install ai-edge-litert" in result.stdout and "tflite-runtime" in result.stdout


def test_backend_prefers_ai_edge_litert():
    assert tfl.backend().name == "ai_edge_litert"
