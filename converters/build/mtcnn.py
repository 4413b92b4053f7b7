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
from converters.build import distill, prelu
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
PRELU_FORMS = ("branches", "elementwise")
# P-Net runs one image (of any size); R-Net and O-Net a dynamic batch, all of a frame's crops in one invoke.
BATCH_SIZE = {"pnet": 1, "rnet": None, "onet": None}
# The elementwise form only (prelu_form='elementwise'). Channel equalisation (mk.equalised) before fine-tuning,
# per net, chosen on the held-out calibration samples:
# face-probability / box mean |int8 - float| after post-training quantization, P-Net 0.0081 / 0.0115 at 0.5 and
# 0.0096 / 0.0120 at 1; R-Net 0.0171 / 0.0098 at 1 and 0.0169 / 0.0123 at 0.5; O-Net 0.0094 / 0.0041 at 1 and
# 0.0092 / 0.0044 at 0.5.
EQUALISATION_STRENGTH = {"pnet": 0.5, "rnet": 1.0, "onet": 1.0}
# Quantization-aware distillation (converters.build.distill). Held-out face-probability / box mean |int8 - float|
# by epoch, P-Net: 0.0081 / 0.0115, 0.0076 / 0.0097, 0.0074 / 0.0096, 0.0076 / 0.0096; R-Net: 0.0171 / 0.0098 →
# 0.0157 / 0.0097 at 3; O-Net: 0.0094 / 0.0041 → 0.0092 / 0.0038 at 3.
FINE_TUNE = distill.Schedule(epochs=3, batch=64, learning_rate=1e-5)
# P-Net trains on square patches of its calibration pyramid levels (fully convolutional: a patch's outputs are the
# level's outputs there), so that a training batch has one shape.
PNET_PATCH = 48
PNET_PATCHES_PER_LEVEL = 24
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


def crop_samples(images: list, runners, stage: str, limit: Optional[int],
                 params: cascade.CascadeParams = cascade.DEFAULT_PARAMS) -> np.ndarray:
    """The crops that the float cascade feeds R-Net (``stage='rnet'``) or O-Net (``'onet'``) on these images, at
    most ``limit`` of them (a seeded sample), all when None."""
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
    return all_crops[seeded_subset(len(all_crops), limit)]


def seeded_subset(count: int, limit: Optional[int]) -> np.ndarray:
    """Indices, in order, of a seeded sample of at most ``limit`` of ``count`` items (all of them when None)."""
    if limit is None or count <= limit:
        return np.arange(count)
    return np.sort(np.random.default_rng(CALIBRATION_SEED).choice(count, size=limit, replace=False))


@dataclass(frozen=True)
class TunedNet:
    """One net's int8 variant after equalisation and fine-tuning."""

    name: str
    equalised: list  # source-format weights (mk.equalised) that :func:`mk.build` takes
    weights: list  # the trained weights, in the int8 model's ``get_weights`` order
    losses: list  # distillation loss of each epoch

    def model(self, batch_size: Optional[int], input_hw: Optional[tuple[int, int]] = None):
        """The plain int8 Keras net with the trained weights, to convert."""
        net = mk.build_elementwise(self.name, self.equalised, batch_size=batch_size, input_hw=input_hw)
        net.set_weights(self.weights)
        return net


def pnet_patches(levels: list[np.ndarray], seed: int = CALIBRATION_SEED) -> np.ndarray:
    """Seeded square patches of P-Net's normalised pyramid levels (each (1, h, w, 3)), for training."""
    rng = np.random.default_rng(seed)
    patches = []
    for level in levels:
        h, w = level.shape[1:3]
        if h < PNET_PATCH or w < PNET_PATCH:
            continue
        for _ in range(PNET_PATCHES_PER_LEVEL):
            y, x = rng.integers(0, h - PNET_PATCH + 1), rng.integers(0, w - PNET_PATCH + 1)
            patches.append(level[0, y:y + PNET_PATCH, x:x + PNET_PATCH])
    return np.stack(patches)


def tuned_net(name: str, weights: list[np.ndarray], calibration: list[np.ndarray], train: np.ndarray) -> TunedNet:
    """``name``'s int8 variant: channels equalised over ``calibration`` (P-Net: pyramid levels; else single crops),
    then fine-tuned with int8 simulated towards the faithful net's outputs on ``train`` (see distill)."""
    batches = calibration if name == "pnet" else [np.concatenate(calibration[i:i + 256])
                                                   for i in range(0, len(calibration), 256)]
    ranges = mk.prelu_input_ranges(name, weights, batches)
    equal = mk.equalised(name, weights, [prelu.equalising_gains(r, EQUALISATION_STRENGTH[name]) for r in ranges])
    faithful = mk.build(name, weights, "faithful", batch_size=None)
    targets = [np.asarray(t) for t in faithful.predict(train, batch_size=256, verbose=0)]
    layers = distill.QuantLayers()
    model = mk.build_elementwise(name, equal, batch_size=None, layers=layers)
    bar = tqdm(total=FINE_TUNE.epochs, desc=f"{name} fine-tuning", unit="epoch", leave=False)
    losses = distill.fine_tune(model, layers, train, targets, batches, FINE_TUNE,
                               progress=lambda epoch, loss: (bar.update(1), bar.set_postfix_str(f"loss {loss:.2e}")))
    bar.close()
    return TunedNet(name, equal, model.get_weights(), losses)


def calibration_sets(fit_images: list, runners,
                     params: cascade.CascadeParams = cascade.DEFAULT_PARAMS) -> tuple[dict, dict]:
    """(calibration samples of every net, every candidate crop of R-Net and O-Net) from the calibration images
    ``fit_images``, normalised: P-Net calibrates on their pyramid levels, R-Net and O-Net on a seeded sample of the
    crops the float cascade cuts from them (fine-tuning trains on all of those)."""
    calibration = {"pnet": pnet_samples(fit_images)}
    all_crops = {}
    for stage, limit in (("rnet", MAX_RNET_CROPS), ("onet", MAX_ONET_CROPS)):
        crops = tflite_tools.normalise(crop_samples(fit_images, runners, stage, None, params), PIXEL_MEAN, PIXEL_STD)
        if len(crops) == 0:
            raise RuntimeError(f"{stage}: the calibration images gave no candidate crops; check the shared data")
        calibration[stage] = [c[None] for c in crops[seeded_subset(len(crops), limit)]]
        all_crops[stage] = crops
    return calibration, all_crops


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


def convert(out_dir: Path, shared: Optional[Path] = None, cache: Optional[Path] = None,
            prelu_form: str = "branches") -> dict:
    """Build every MTCNN file in ``out_dir`` from nothing; returns the manifest entries written.

    ``prelu_form``: 'branches' (the shipped int8 form, :func:`mk.build`) or 'elementwise' (:func:`mk.build_elementwise`,
    equalised and fine-tuned: no layer computed twice, a little less agreement with float; minutes longer).
    """
    if prelu_form not in PRELU_FORMS:
        raise ValueError(f"prelu_form must be one of {PRELU_FORMS}, got {prelu_form!r}")
    elementwise = prelu_form == "elementwise"
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
        rewrite_net = mk.build_elementwise(n, weights[n], batch_size=None) if elementwise else \
            mk.build(n, weights[n], "int8", batch_size=None)
        rewrite = [np.asarray(t) for t in rewrite_net(x)]
        float_checks[n] = {
            "keras_vs_source_max_abs_diff": max_abs_diff(ours, src),
            "int8_friendly_rewrite_vs_keras_max_abs_diff": max_abs_diff(rewrite, ours),
            "check_samples": int(len(x)),
        }
        check = float_checks[n]
        tqdm.write(f"{n}: Keras vs source max|diff| = {check['keras_vs_source_max_abs_diff']:.3g}; "
                   f"int8 rewrite vs Keras max|diff| = "
                   f"{check['int8_friendly_rewrite_vs_keras_max_abs_diff']:.3g}")
    step("float checks")

    fit_sets, all_crops = calibration_sets(calib.split(False), runners)
    held_sets = {"pnet": pnet_samples(calib.split(True))}
    for stage, limit in (("rnet", MAX_RNET_CROPS), ("onet", MAX_ONET_CROPS)):
        held = tflite_tools.normalise(crop_samples(calib.split(True), runners, stage, limit // 3), PIXEL_MEAN,
                                      PIXEL_STD)
        held_sets[stage] = [c[None] for c in held]
    for n, held in held_sets.items():
        if not held:
            raise RuntimeError(f"{n}: no held-out samples were produced; check the shared data")
    tuned = {}
    if elementwise:
        train_sets = {"pnet": pnet_patches(fit_sets["pnet"]), **all_crops}
        tuned = {n: tuned_net(n, weights[n], fit_sets[n], train_sets[n]) for n in mk.NETS}
    step("calibration samples" + (", fine-tuning" if elementwise else ""))

    entries = {}
    for n in mk.NETS:
        fit, held = fit_sets[n], held_sets[n]
        batch = BATCH_SIZE[n]
        int8_net = tuned[n].model(batch) if elementwise else mk.build(n, weights[n], "int8", batch_size=batch)
        float_net = mk.build(n, weights[n], "faithful", batch_size=batch)
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
                    "variant": "faithful Keras rebuild" if variant == "float" else (
                        "PReLU as relu(y) + s·relu(-|a|·y) in 1x1 depthwise convs (the heads reading the last one's "
                        "two branches), two-way softmax as a sigmoid, channels equalised (strength "
                        f"{EQUALISATION_STRENGTH[n]}), fine-tuned with int8 simulated" if elementwise else
                        "PReLU rewritten as ReLU + convolutions, two-way softmax as a sigmoid (int8/XNNPACK fast path, "
                        "exact in float)"),
                    **({"fine_tune": {"epochs": FINE_TUNE.epochs, "batch": FINE_TUNE.batch,
                                      "learning_rate": FINE_TUNE.learning_rate,
                                      "towards": "the faithful float net's outputs",
                                      "samples": (f"{PNET_PATCH}x{PNET_PATCH} patches of the calibration pyramid "
                                                  "levels" if n == "pnet" else "every float-cascade candidate crop "
                                                  "of the calibration images")}}
                       if variant == "int8" and elementwise else {}),
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
                "agreement": {**float_checks[n], **({"int8_vs_float": agree} if variant == "int8" else {}),
                              **({"fine_tune_loss": tuned[n].losses} if variant == "int8" and elementwise else {})},
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
