"""``doorface-convert mtcnn``: source weights → Keras → checks → full-integer int8 TFLite + manifest + cards.

Calibration uses real data that no evaluation touches: frames of ``data/video`` and ``train-faces`` crops at the
pyramid scales for P-Net, and the candidate crops that the float cascade produces on those same images for
R-Net and O-Net (what each stage really sees on a device). Every fourth calibration image is held out to
measure float-vs-int8 agreement per net.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
from tqdm import tqdm

from converters import datasets, manifest_io
from converters.build import mtcnn_keras as mk
from converters.fetch import sources
from converters.quantize import tflite_tools
from edge import interpreter as tfl
from edge import mtcnn as cascade

log = logging.getLogger(__name__)

# The source's input normalisation: pixel' = (pixel - 127.5) / 128, RGB.
PIXEL_MEAN = 127.5
PIXEL_STD = 128.0
VIDEO_STEP = 5
TRAIN_FACES_FOR_CALIBRATION = 160
HOLD_OUT_EVERY = 4
MAX_RNET_CROPS = 3000
MAX_ONET_CROPS = 1500
CALIBRATION_SEED = 0
INPUT_SIDE = {"rnet": cascade.RNET_INPUT_SIZE, "onet": cascade.ONET_INPUT_SIZE}
# P-Net runs one image (of any size); R-Net and O-Net a dynamic batch, all of a frame's crops in one invoke.
BATCH_SIZE = {"pnet": 1, "rnet": None, "onet": None}
DESCRIPTIONS = {
    "pnet": "MTCNN proposal net (12x12 window, stride 2, fully convolutional: any input size).",
    "rnet": "MTCNN refine net (24x24 crops): face score and box regression.",
    "onet": "MTCNN output net (48x48 crops): face score, box regression and 5 landmarks.",
}


def keras_runners(models: dict) -> tuple[Callable, Callable, Callable]:
    """Float Keras nets as cascade stage runners (uint8 in, float out), for calibration and checks."""

    def pnet(image):
        prob, offsets = models["pnet"](tflite_tools.normalise(image, PIXEL_MEAN, PIXEL_STD)[None], training=False)
        return np.asarray(prob)[0, ..., 1], np.asarray(offsets)[0]

    def crop_runner(name, widths):
        def run(crops):
            if len(crops) == 0:
                return tuple(np.zeros((0,) if w == 2 else (0, w), np.float32) for w in widths)
            inputs = tflite_tools.normalise(crops, PIXEL_MEAN, PIXEL_STD)
            outs = [np.asarray(o) for o in models[name](inputs, training=False)]
            outs[0] = outs[0][:, 1]
            return tuple(outs)

        return run

    return pnet, crop_runner("rnet", (2, 4)), crop_runner("onet", (2, 4, 10))


@dataclass
class CalibrationSet:
    images: list  # RGB uint8 images the samples come from
    names: list  # their provenance (file:frame), for the manifest
    held_out: list  # bool per image

    def split(self, held: bool) -> list:
        return [im for im, h in zip(self.images, self.held_out) if h == held]


def calibration_images(shared: Optional[Path] = None) -> CalibrationSet:
    """Video frames and train-faces crops: the only images calibration and agreement ever see."""
    images, names = [], []
    video_dir = datasets.data_dir("video") if shared is None else Path(shared) / "data" / "video"
    for video, size in (("facenet_pytorch_video.mp4", (640, 480)), ("short_hamilton_clip.mp4", (640, 360))):
        for i, frame in enumerate(datasets.iter_video_frames(video_dir / video, size=size, step=VIDEO_STEP)):
            images.append(frame)
            names.append(f"video/{video}#{i * VIDEO_STEP}")
    faces = datasets.load_train_faces(None if shared is None else Path(shared) / "data" / "train-faces")
    rng = np.random.default_rng(CALIBRATION_SEED)
    picked = sorted(rng.choice(len(faces), size=min(TRAIN_FACES_FOR_CALIBRATION, len(faces)), replace=False))
    from edge.image_io import load_image

    for i in picked:
        images.append(load_image(faces[i].path))
        names.append(f"train-faces/{faces[i].path.parent.name}/{faces[i].path.name}")
    held_out = [i % HOLD_OUT_EVERY == HOLD_OUT_EVERY - 1 for i in range(len(images))]
    return CalibrationSet(images, names, held_out)


def pnet_samples(images: list) -> list[np.ndarray]:
    """Every pyramid level of every image, normalised, as P-Net sees them."""
    samples = []
    for image in images:
        levels = cascade.Pyramid.build(image).for_pnet()
        samples.extend(tflite_tools.normalise(level, PIXEL_MEAN, PIXEL_STD)[None] for _, level in levels)
    return samples


def crop_samples(images: list, runners, stage: str, limit: int,
                 params: cascade.CascadeParams = cascade.DEFAULT_PARAMS) -> np.ndarray:
    """The crops that the float cascade feeds R-Net (``stage='rnet'``) or O-Net (``'onet'``) on these images."""
    pnet, rnet, _ = runners
    crops = []
    for image in tqdm(images, desc=f"{stage} calibration crops", unit="img", leave=False):
        pyramid = cascade.Pyramid.build(image, params)
        candidates = cascade.propose(pyramid, pnet, params)
        if stage == "onet":
            candidates = cascade.refine(pyramid, candidates, rnet, params)
        if len(candidates):
            crops.append(pyramid.crops(candidates[:, :4], INPUT_SIDE[stage]))
    all_crops = np.concatenate(crops) if crops else np.zeros((0, INPUT_SIDE[stage], INPUT_SIDE[stage], 3), np.uint8)
    if len(all_crops) > limit:
        keep = np.sort(np.random.default_rng(CALIBRATION_SEED).choice(len(all_crops), size=limit, replace=False))
        all_crops = all_crops[keep]
    return all_crops


def run_tflite(content: bytes, sample: np.ndarray) -> list[np.ndarray]:
    """Outputs of a TFLite model on one normalised sample (1, h, w, 3), dequantized, ordered by head width."""
    interp = tflite_tools.allocated(content, input_shape=sample.shape)
    outputs = tflite_tools.run_once(interp, tfl.quantize(sample, tfl.input_specs(interp)[0]))
    return sorted(outputs, key=lambda out: out.shape[-1])


def agreement(float_model: bytes, int8_model: bytes, samples: list[np.ndarray]) -> dict:
    """Float vs int8 outputs on held-out samples: face probability and regression errors."""
    prob_err, reg_err, lm_err = [], [], []
    for sample in samples:
        f, q = run_tflite(float_model, sample), run_tflite(int8_model, sample)
        prob_err.append(np.abs(f[0][..., 1] - q[0][..., 1]).ravel())
        reg_err.append(np.abs(f[1] - q[1]).ravel())
        if len(f) > 2:
            lm_err.append(np.abs(f[2] - q[2]).ravel())
    result = {
        "held_out_samples": len(samples),
        "face_prob_max_abs_diff": float(np.max(np.concatenate(prob_err))),
        "face_prob_mean_abs_diff": float(np.mean(np.concatenate(prob_err))),
        "box_offsets_mean_abs_diff": float(np.mean(np.concatenate(reg_err))),
    }
    if lm_err:
        result["landmarks_mean_abs_diff"] = float(np.mean(np.concatenate(lm_err)))
    return result


def max_abs_diff(a: list, b: list) -> float:
    return float(max(np.abs(np.asarray(x) - np.asarray(y)).max() for x, y in zip(a, b)))


def convert(out_dir: Path, shared: Optional[Path] = None, cache: Optional[Path] = None) -> dict:
    """Build every MTCNN file in ``out_dir`` from nothing; returns the manifest entries written."""
    import tensorflow as tf

    out_dir.mkdir(parents=True, exist_ok=True)
    steps = tqdm(total=7, desc="mtcnn", unit="step")

    def step(label):
        steps.set_postfix_str(label)
        steps.update(1)

    package_dir = sources.extract_all(sources.MTCNN_PYPI, cache)
    weights = {n: mk.load_source_weights(package_dir / f"mtcnn/assets/weights/{n}.lz4") for n in mk.NETS}
    member_sha = {n: sources.sha256_file(package_dir / f"mtcnn/assets/weights/{n}.lz4") for n in mk.NETS}
    step("source fetched and verified")

    faithful = {n: mk.build(n, weights[n], "faithful", batch_size=None) for n in mk.NETS}
    calib = calibration_images(shared)
    runners = keras_runners(faithful)
    step(f"{len(calib.images)} calibration images")

    # Float checks: our Keras nets vs the source package's own nets, and the int8-friendly rewrite vs faithful.
    check_inputs = {
        "pnet": tflite_tools.normalise(calib.images[0], PIXEL_MEAN, PIXEL_STD)[None],
        "rnet": tflite_tools.normalise(crop_samples(calib.images[:3], runners, "rnet", 64), PIXEL_MEAN, PIXEL_STD),
        "onet": tflite_tools.normalise(crop_samples(calib.images[:3], runners, "onet", 64), PIXEL_MEAN, PIXEL_STD),
    }
    float_checks = {}
    for n in mk.NETS:
        x = check_inputs[n]
        ours = [np.asarray(t) for t in faithful[n](x)]
        src = [np.asarray(t) for t in mk.source_reference(n, weights[n], package_dir)(x)]
        src = [src[-1]] + src[:-1]  # the source returns (box, [landmarks,] prob); ours (prob, box, [landmarks])
        rewrite = [np.asarray(t) for t in mk.build(n, weights[n], "int8", batch_size=None)(x)]
        float_checks[n] = {
            "keras_vs_source_max_abs_diff": max_abs_diff(ours, src),
            "int8_friendly_rewrite_vs_keras_max_abs_diff": max_abs_diff(rewrite, ours),
            "check_samples": int(len(x)),
        }
        check = float_checks[n]
        tqdm.write(f"{n}: Keras vs source max|diff| = {check['keras_vs_source_max_abs_diff']:.3g}; "
                   f"ReLU rewrite vs Keras max|diff| = {check['int8_friendly_rewrite_vs_keras_max_abs_diff']:.3g}")
    step("float checks")

    calib_sets = {"pnet": (pnet_samples(calib.split(False)), pnet_samples(calib.split(True)))}
    for stage, limit in (("rnet", MAX_RNET_CROPS), ("onet", MAX_ONET_CROPS)):
        fit_crops = crop_samples(calib.split(False), runners, stage, limit)
        held_crops = crop_samples(calib.split(True), runners, stage, limit // 3)
        fit = tflite_tools.normalise(fit_crops, PIXEL_MEAN, PIXEL_STD)
        held = tflite_tools.normalise(held_crops, PIXEL_MEAN, PIXEL_STD)
        calib_sets[stage] = ([c[None] for c in fit], [c[None] for c in held])
    step("calibration samples")

    entries = {}
    for n in mk.NETS:
        fit, held = calib_sets[n]
        if not fit or not held:
            raise RuntimeError(f"{n}: no calibration samples were produced; check the shared data")
        int8_net = mk.build(n, weights[n], "int8", batch_size=BATCH_SIZE[n])
        float_net = mk.build(n, weights[n], "faithful", batch_size=BATCH_SIZE[n])
        started = time.perf_counter()
        bar = tqdm(total=len(fit), desc=f"{n} int8 calibration", unit="sample", leave=False)

        def representative(samples=fit, bar=bar):
            for s in samples:
                bar.update(1)
                yield [s]

        int8_bytes = tflite_tools.to_tflite(int8_net, representative)
        bar.close()
        float_bytes = tflite_tools.to_tflite(float_net)
        seconds = time.perf_counter() - started
        agree = agreement(float_bytes, int8_bytes, held[:: max(1, len(held) // 200)])
        for variant, content in (("int8", int8_bytes), ("float", float_bytes)):
            key = n if variant == "int8" else f"{n}_float"
            file_name = f"mtcnn_{n}_{variant}.tflite"
            if not content:
                raise RuntimeError(f"{file_name}: the converter produced an empty model")
            (out_dir / file_name).write_bytes(content)
            report = tflite_tools.inspect_model(content)
            interp = tfl.make_interpreter(content)
            in_spec = tfl.input_specs(interp)[0]
            shape = [-1 if d < 0 else int(d) for d in interp.get_input_details()[0]["shape_signature"]]
            entries[key] = {
                "file": file_name,
                "sha256": manifest_io.sha256_bytes(content),
                "size_bytes": len(content),
                "task": "face_detection_stage",
                "description": DESCRIPTIONS[n] + (" Full-integer int8." if variant == "int8" else
                                                  " Float32 reference (same nets, PReLU kept)."),
                "license": sources.MTCNN_PYPI.license,
                "input": {
                    "shape": shape,
                    "dtype": in_spec.dtype.name,
                    "channels": "RGB",
                    "mean": PIXEL_MEAN,
                    "std": PIXEL_STD,
                    "scale": in_spec.scale,
                    "zero_point": in_spec.zero_point,
                },
                "outputs": {"face_prob": "width 2 (not face, face; " + ("sigmoid of the logit difference, = softmax)"
                                                                         if variant == "int8" else "softmax)"),
                            "box_offsets": "width 4",
                            **({"landmarks": "width 10 (x1..x5, y1..y5)"} if n == "onet" else {})},
                "source": {**sources.MTCNN_PYPI.describe(), "member": f"mtcnn/assets/weights/{n}.lz4",
                           "member_sha256": member_sha[n]},
                "conversion": {
                    "tensorflow": tf.__version__,
                    "variant": ("PReLU rewritten as ReLU + convolutions, two-way softmax as a sigmoid (int8/XNNPACK "
                                "fast path, exact in float)"
                                if variant == "int8" else "faithful Keras rebuild"),
                    "quantization": "full integer, per-channel weights, int8 input/output" if variant == "int8"
                    else "none (float32)",
                    "ops": sorted(set(report.ops)),
                    "float_ops": sorted(set(report.float_ops)),
                    "edgetpu": "; ".join(tflite_tools.check_edgetpu(out_dir / file_name, report).problems)
                    or "compatible",
                },
                "calibration": {
                    "images": len(calib.split(False)),
                    "samples": len(fit),
                    "from": "data/video frames (every 5th) + 160 train-faces crops; never LFW, dlib-faces, "
                            "deepface-unit or group-photos",
                    "what": "pyramid levels" if n == "pnet" else "float-cascade candidate crops",
                } if variant == "int8" else {"images": 0, "samples": 0, "from": "none", "what": "none"},
                "agreement": {**float_checks[n], **({"int8_vs_float": agree} if variant == "int8" else {})},
            }
        tqdm.write(f"{n}: converted in {seconds:.0f}s; int8 vs float on {agree['held_out_samples']} held-out "
                   f"samples: face prob max|diff| {agree['face_prob_max_abs_diff']:.3f}, "
                   f"mean {agree['face_prob_mean_abs_diff']:.4f}")
    step("converted")

    manifest_io.update_manifest(out_dir, entries)
    step("manifest")
    manifest_io.write_cards(out_dir, sorted(entries))
    step("cards")
    steps.close()
    return entries
