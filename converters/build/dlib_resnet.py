"""``python -m converters.build.dlib_resnet``: dlib's face recognition ResNet → Keras → checks → int8 + float TFLite.

Source
    npm ``@vladmandic/face-api`` 1.7.15 (tarball pinned by sha256). It ships dlib's
    ``dlib_face_recognition_resnet_model_v1`` (CC0, 128-D, LFW 99.38% as published by dlib) as a TF.js weights
    manifest + one shard, each tensor stored as uint8 with a per-tensor (scale, min): these are the values this
    converter uses, i.e. face-api's model, not dlib's float32 ``.dat`` bit for bit. The architecture comes from
    face-api's ``src/faceRecognitionNet/`` (the compiled copy is ``dist/face-api.esm.js``):

    - input: 150×150 RGB, ``(pixel - [122.782, 117.001, 104.298]) / 255`` (face-api divides by 255; dlib's own
      ``input_rgb_image_sized<150>`` divides by 256, a 0.4% input scale that face-api does not follow);
    - ``conv32_down``: conv 7×7/2 'valid' + bias, scale/bias ("affine", dlib's frozen batch norm), ReLU;
      max-pool 3×3/2 'valid' (150 → 72 → 35);
    - residual blocks: conv 3×3 'same' → affine → ReLU → conv 3×3 'same' → affine, + input, ReLU. Down blocks
      (``*_down``) use a 3×3/2 'valid' first conv and add a 2×2/2 average pool of the input, channel-padded with
      zeros, to which the main branch is zero-padded at the bottom/right when it comes out one row/column
      smaller (dlib's ``add_prev`` of unequal sizes: 8 → 3 vs 4, 4 → 1 vs 2);
      order: 32 ×3, 64 down, 64 ×3, 128 down, 128 ×2, 256 down, 256 ×2, 256 down;
    - global average pool (2×2), fully connected 256 → 128 without bias; L2 normalisation is left to the host.

Rebuild (exact in float)
    Each affine is folded into its conv (``W·s``, ``b·s + t``). The per-channel input mean is folded into the bias
    of the first conv, which is 'valid' so no border sees the offset, leaving the runtime one scalar
    ``mean`` = 128 and ``std`` = 255. The down blocks' shortcut (2×2/2 average pool + zero channels) is one 2×2/2
    convolution with weights 0.25·[I | 0]. The one op outside CONV_2D / ADD (fused ReLU) / MAX_POOL_2D / MEAN /
    FULLY_CONNECTED is PAD, the zero row/column of the two down blocks whose branches differ in size.

Checks
    The Keras model is compared with (1) face-api itself, run in Node.js (the package's own ESM bundle with
    TF.js's CPU backend, weights decoded by ``tf.io.decodeWeights``) when ``node`` is on PATH, and (2) a
    float64 numpy forward pass written from the JS (unfolded affines, per-channel mean, concat-padding), on aligned
    train-faces chips; then float TFLite vs Keras, and int8 vs float (cosine) on 200 held-out chips.

Alignment template
    dlib aligns 150×150 chips with ``get_face_chip_details(shape, 150, 0.25)``: a similarity transform onto its
    mean face shape (``mean_face_shape_x/y`` in ``dlib/image_transforms/interpolation.h``, unit square), mapped to
    chip pixels as ``(padding + m) / (1 + 2·padding) · 150``. doorface's detector gives MTCNN's 5 points, so the
    template puts each where dlib's mean face has that point: eye centres = mean of the 6 contour points of each
    eye (iBUG 36-41, 42-47), mouth corners = points 48 and 54. MTCNN's nose point is not a point of the 68-point
    scheme (it sits between the tip, 30, and the base, 33), so its place is found by align averaging: each
    train-faces face (MTCNN 1.0.0 landmarks, LFW-disjoint) is mapped onto the 4 eye/mouth template points by a
    similarity transform and its nose lands somewhere; the template nose takes the mean height of those
    positions, on the mirror axis of the (symmetric) mean face. Result (150×150 chip, x right, y down): eyes
    (47.549, 46.599) and (100.476, 46.599), nose (74.013, 79.264), mouth (50.415, 103.023) and (97.61, 103.023);
    the nose lies between dlib's tip (76.6) and base (87.8). Verification is insensitive to that choice: with the
    nose at the tip or the base instead, same/different AUC on 320 unused train-faces crops moved by < 0.0001.

Calibration and agreement use aligned train-faces crops only (a seeded subset; never LFW).
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
from tqdm import tqdm

from converters import datasets, manifest_io
from converters.fetch import npm_sources
from converters.fetch.sources import sha256_file
from converters.quantize import tflite_tools
from edge import interpreter as tfl
from edge.align import align_face, similarity_transform
from edge.image_io import load_image

log = logging.getLogger(__name__)

FACE_API_NPM = npm_sources.NpmSource(
    package="@vladmandic/face-api",
    version="1.7.15",
    tarball_sha256="0d77fffeef362ef9c0939cf6c567f3a2e8e177f114fa257a3270cbd2e509b031",
    license="MIT",
    homepage="https://github.com/vladmandic/face-api",
)
WEIGHTS_MANIFEST = "model/face_recognition_model-weights_manifest.json"
ESM_BUNDLE = "dist/face-api.esm.js"
ARCHITECTURE_SOURCES = (
    "src/faceRecognitionNet/FaceRecognitionNet.ts",
    "src/faceRecognitionNet/convLayer.ts",
    "src/faceRecognitionNet/residualLayer.ts",
    "src/faceRecognitionNet/scaleLayer.ts",
)
MODEL_LICENSE = "CC0-1.0"

# face-api's normalisation (FaceRecognitionNet.forwardInput): RGB mean per channel, then / 255.
SOURCE_MEAN_RGB = (122.782, 117.001, 104.298)
SOURCE_DIVISOR = 255.0
# What the runtime applies, (pixel - PIXEL_MEAN) / PIXEL_STD; the per-channel rest is folded into the first conv.
PIXEL_MEAN = 128.0
PIXEL_STD = 255.0

CHIP_SIZE = 150
CHIP_PADDING = 0.25
EMBEDDING_DIM = 128
TEMPLATE_DECIMALS = 3
# dlib's mean face (interpolation.h, get_face_chip_details), unit square, the 68-point iBUG indices we need.
MEAN_FACE = {
    36: (0.121737, 0.216423), 37: (0.187122, 0.178758), 38: (0.265825, 0.179852),
    39: (0.334606, 0.231733), 40: (0.260918, 0.245099), 41: (0.182743, 0.244077),
    42: (0.645647, 0.231733), 43: (0.714428, 0.179852), 44: (0.793132, 0.178758),
    45: (0.858516, 0.216423), 46: (0.79751, 0.244077), 47: (0.719335, 0.245099),
    48: (0.254149, 0.780233), 54: (0.726104, 0.780233),
}
LEFT_EYE, RIGHT_EYE = tuple(range(36, 42)), tuple(range(42, 48))  # image-left / image-right
LEFT_MOUTH, RIGHT_MOUTH = 48, 54
EYES_AND_MOUTH = (0, 1, 3, 4)  # doorface landmark order: left eye, right eye, nose, left mouth, right mouth
NOSE = 2

CALIBRATION_SAMPLES = 500
AGREEMENT_SAMPLES = 200
SPLIT_SEED = 0
CHECK_SAMPLES = 8
LATENCY_INVOKES = 30
NODE_TIMEOUT_S = 600


@dataclass(frozen=True)
class Block:
    name: str
    down: bool  # stride-2 first conv + average-pooled, zero-channel shortcut


STEM = "conv32_down"
BLOCKS = (
    Block("conv32_1", False), Block("conv32_2", False), Block("conv32_3", False),
    Block("conv64_down", True), Block("conv64_1", False), Block("conv64_2", False), Block("conv64_3", False),
    Block("conv128_down", True), Block("conv128_1", False), Block("conv128_2", False),
    Block("conv256_down", True), Block("conv256_1", False), Block("conv256_2", False),
    Block("conv256_down_out", True),
)
FC = "fc"


# ------------------------------------------------------------------------------------------------------- weights


def extract_source(cache: Optional[Path] = None) -> tuple[Path, dict[str, str]]:
    """Extract the weights manifest, its shards, the ESM bundle and the architecture sources from the verified
    tarball; returns the manifest's path and ``{member: sha256}`` of everything read."""
    manifest_path = npm_sources.extract(FACE_API_NPM, WEIGHTS_MANIFEST, cache)
    shards = [p for group in json.loads(manifest_path.read_text(encoding="utf-8")) for p in group["paths"]]
    members = [WEIGHTS_MANIFEST, *(f"{Path(WEIGHTS_MANIFEST).parent.as_posix()}/{p}" for p in shards), ESM_BUNDLE,
               *ARCHITECTURE_SOURCES]
    files = {m: sha256_file(npm_sources.extract(FACE_API_NPM, m, cache)) for m in members}
    return manifest_path, files


def decode_weights(manifest_path: Path) -> dict[str, np.ndarray]:
    """A TF.js weights manifest + shards → name → float32 array, dequantized as TF.js does (``q·scale + min``)."""
    groups = json.loads(Path(manifest_path).read_text(encoding="utf-8"))
    weights: dict[str, np.ndarray] = {}
    for group in groups:
        data = b"".join((Path(manifest_path).parent / p).read_bytes() for p in group["paths"])
        offset = 0
        for spec in group["weights"]:
            shape, count = tuple(spec["shape"]), int(np.prod(spec["shape"], dtype=np.int64))
            quant = spec.get("quantization")
            if quant is None:
                if spec["dtype"] != "float32":
                    raise ValueError(f"{manifest_path}: {spec['name']} has dtype {spec['dtype']}; expected float32")
                values = np.frombuffer(data, "<f4", count, offset)
                offset += 4 * count
            elif quant.get("dtype") in ("uint8", "uint16") and "min" in quant:
                stored = np.dtype("<u1" if quant["dtype"] == "uint8" else "<u2")
                raw = np.frombuffer(data, stored, count, offset)
                offset += stored.itemsize * count
                values = raw.astype(np.float64) * float(quant["scale"]) + float(quant["min"])  # doubles, as JS
            else:
                raise ValueError(f"{manifest_path}: {spec['name']} uses quantization {quant}, which is not supported")
            weights[spec["name"]] = np.asarray(values, dtype=np.float32).reshape(shape)
        if offset != len(data):
            raise ValueError(f"{manifest_path}: {len(data) - offset} bytes of the shards are not described")
    return weights


def conv_params(weights: dict, prefix: str) -> tuple[np.ndarray, ...]:
    """(filters HWIO, bias, scale, shift) of one conv + affine layer."""
    try:
        return tuple(weights[f"{prefix}/{k}"] for k in ("conv/filters", "conv/bias", "scale/weights", "scale/biases"))
    except KeyError as exc:
        raise ValueError(f"source weights lack {exc}; the layer table does not match the weights manifest") from None


def fold_affine(filters, bias, scale, shift) -> tuple[np.ndarray, np.ndarray]:
    """conv(x) + bias, then · scale + shift  →  one conv (W·scale, bias·scale + shift), exact in real arithmetic."""
    filters, bias = np.asarray(filters, np.float64), np.asarray(bias, np.float64)
    scale, shift = np.asarray(scale, np.float64), np.asarray(shift, np.float64)
    return (filters * scale).astype(np.float32), (bias * scale + shift).astype(np.float32)


def fold_input_normalisation(filters: np.ndarray, bias: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Make a 'valid' first conv take ``(p - PIXEL_MEAN) / PIXEL_STD`` instead of ``(p - mean_c) / 255``.

    ``(p - mean_c) / 255 = (p - PIXEL_MEAN) / PIXEL_STD · (PIXEL_STD / 255) + (PIXEL_MEAN - mean_c) / 255``: the
    first term rescales the filters, the second is a constant input that adds ``Σ W·offset`` to every output.
    """
    filters = np.asarray(filters, np.float64)
    offset = (PIXEL_MEAN - np.asarray(SOURCE_MEAN_RGB, np.float64)) / SOURCE_DIVISOR
    new_bias = np.asarray(bias, np.float64) + np.einsum("hwco,c->o", filters, offset)
    return (filters * (PIXEL_STD / SOURCE_DIVISOR)).astype(np.float32), new_bias.astype(np.float32)


def shortcut_filters(channels_in: int, channels_out: int) -> np.ndarray:
    """2×2/2 conv = 2×2/2 average pool followed by zero channels up to ``channels_out`` (HWIO)."""
    w = np.zeros((2, 2, channels_in, channels_out), np.float32)
    w[:, :, np.arange(channels_in), np.arange(channels_in)] = 0.25
    return w


# --------------------------------------------------------------------------------------------------------- Keras


def build(weights: dict, batch_size: int = 1):
    """The folded Keras functional model: uint8-range input normalised as (p - 128) / 255 → 128-D embedding."""
    import keras
    from keras import layers as L

    def conv(tensor, prefix, stride, padding, relu, first=False):
        w, b = fold_affine(*conv_params(weights, prefix))
        if first:
            w, b = fold_input_normalisation(w, b)
        layer = L.Conv2D(w.shape[-1], w.shape[:2], strides=stride, padding=padding,
                         activation="relu" if relu else None, name=prefix.replace("/", "_"))
        out = layer(tensor)
        layer.set_weights([w, b])
        return out

    inputs = keras.Input((CHIP_SIZE, CHIP_SIZE, 3), batch_size=batch_size, name="image")
    x = conv(inputs, STEM, 2, "valid", relu=True, first=True)
    x = L.MaxPooling2D(3, 2, padding="valid", name="pool")(x)
    for block in BLOCKS:
        main = conv(x, f"{block.name}/conv1", 2 if block.down else 1, "valid" if block.down else "same", relu=True)
        main = conv(main, f"{block.name}/conv2", 1, "same", relu=False)
        shortcut = x
        if block.down:
            cin, cout = int(x.shape[-1]), int(main.shape[-1])
            layer = L.Conv2D(cout, 2, strides=2, padding="valid", use_bias=False, name=f"{block.name}_shortcut")
            shortcut = layer(x)
            layer.set_weights([shortcut_filters(cin, cout)])
            short_h, short_w = int(shortcut.shape[1]), int(shortcut.shape[2])
            pad_h, pad_w = short_h - int(main.shape[1]), short_w - int(main.shape[2])
            if pad_h < 0 or pad_w < 0:
                raise ValueError(f"{block.name}: main branch {main.shape} is larger than the shortcut {shortcut.shape}")
            if pad_h or pad_w:
                main = L.ZeroPadding2D(((0, pad_h), (0, pad_w)), name=f"{block.name}_pad")(main)
        x = L.ReLU(name=f"{block.name}_relu")(L.Add(name=f"{block.name}_add")([main, shortcut]))
    x = L.GlobalAveragePooling2D(name="mean")(x)
    fc = L.Dense(EMBEDDING_DIM, use_bias=False, name="fc")
    out = fc(x)
    fc.set_weights([weights[FC]])
    return keras.Model(inputs, out, name="dlib_resnet")


# --------------------------------------------------------------------------------------------- numpy reference


def _np_conv(x: np.ndarray, filters: np.ndarray, stride: int, padding: str) -> np.ndarray:
    kh, kw = filters.shape[:2]
    if padding == "same":  # TF 'same': the odd pixel of padding goes after
        pads = []
        for size, k in ((x.shape[0], kh), (x.shape[1], kw)):
            total = max((-(-size // stride) - 1) * stride + k - size, 0)
            pads.append((total // 2, total - total // 2))
        x = np.pad(x, (*pads, (0, 0)))
    windows = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(0, 1))[::stride, ::stride]
    return np.tensordot(windows, filters.astype(np.float64), axes=([2, 3, 4], [2, 0, 1]))


def _np_pool(x: np.ndarray, size: int, stride: int, reduce) -> np.ndarray:
    windows = np.lib.stride_tricks.sliding_window_view(x, (size, size), axis=(0, 1))[::stride, ::stride]
    return reduce(windows, axis=(-2, -1))


def reference_forward(weights: dict, chip: np.ndarray) -> np.ndarray:
    """face-api's FaceRecognitionNet.forwardInput, step for step, in float64 on one uint8 (150, 150, 3) chip."""

    def conv_layer(x, prefix, stride, padding, relu):
        filters, bias, scale, shift = conv_params(weights, prefix)
        out = (_np_conv(x, filters, stride, padding) + bias) * scale.astype(np.float64) + shift
        return np.maximum(out, 0.0) if relu else out

    x = (np.asarray(chip, np.float64) - np.asarray(SOURCE_MEAN_RGB)) / SOURCE_DIVISOR
    x = conv_layer(x, STEM, 2, "valid", relu=True)
    x = _np_pool(x, 3, 2, np.max)
    for block in BLOCKS:
        out = conv_layer(x, f"{block.name}/conv1", 2 if block.down else 1, "valid" if block.down else "same", True)
        out = conv_layer(out, f"{block.name}/conv2", 1, "same", False)
        if block.down:
            pooled = _np_pool(x, 2, 2, np.mean)
            canvas = np.zeros(pooled.shape[:2] + out.shape[2:])
            canvas[: out.shape[0], : out.shape[1]] = out  # the JS concatenates a zero row, then a zero column
            out = canvas
            x = np.concatenate([pooled, np.zeros(pooled.shape[:2] + (out.shape[2] - pooled.shape[2],))], axis=2)
        x = np.maximum(out + x, 0.0)
    return x.mean(axis=(0, 1)) @ weights[FC].astype(np.float64)


# --------------------------------------------------------------------------------------- face-api in Node.js

FACEAPI_REFERENCE_JS = r"""
// face-api's own FaceRecognitionNet (ESM bundle, TF.js CPU backend): descriptors of raw uint8 RGB 150x150 chips.
import fs from 'fs';
import path from 'path';
import { pathToFileURL } from 'url';

const [bundle, manifestPath, chipsPath, count, outPath] = process.argv.slice(2);
// The ESM bundle stubs node's 'util'; with node hidden, TF.js skips its node platform and uses the hooks below.
const versions = process.versions;
Object.defineProperty(process, 'versions', { value: {}, configurable: true, writable: true });
const faceapi = await import(pathToFileURL(bundle).href);
Object.defineProperty(process, 'versions', { value: versions, configurable: true, writable: true });
const tf = faceapi.tf;
tf.env().setPlatform('doorface-node', {
  fetch: () => { throw new Error('no fetch: weights are read from disk'); },
  now: () => performance.now(),
  encode: (text) => new TextEncoder().encode(text),
  decode: (bytes, encoding) => new TextDecoder(encoding).decode(bytes),
  isTypedArray: (a) => ArrayBuffer.isView(a) && !(a instanceof DataView),
  setTimeoutCustom: (fn, ms) => setTimeout(fn, ms),
});
await tf.setBackend('cpu');
await tf.ready();
class NoMedia {}
faceapi.env.setEnv({
  Canvas: NoMedia, CanvasRenderingContext2D: NoMedia, Image: NoMedia, ImageData: NoMedia, Video: NoMedia,
  createCanvasElement: () => { throw new Error('no canvas'); },
  createImageElement: () => { throw new Error('no image elements'); },
  fetch: () => { throw new Error('no fetch'); },
  readFile: () => { throw new Error('no readFile'); },
});
const groups = JSON.parse(fs.readFileSync(manifestPath, 'utf8'));
const specs = [];
const shards = [];
for (const group of groups) {
  specs.push(...group.weights);
  for (const p of group.paths) shards.push(fs.readFileSync(path.join(path.dirname(manifestPath), p)));
}
const all = Buffer.concat(shards);
const net = new faceapi.FaceRecognitionNet();
net.loadFromWeightMap(tf.io.decodeWeights(all.buffer.slice(all.byteOffset, all.byteOffset + all.byteLength), specs));
const raw = fs.readFileSync(chipsPath);
const n = Number(count);
const side = 150;
const out = new Float32Array(n * 128);
for (let i = 0; i < n; i += 1) {
  const pixels = Int32Array.from(raw.subarray(i * side * side * 3, (i + 1) * side * side * 3));
  const chip = tf.tensor3d(pixels, [side, side, 3], 'int32');
  out.set(await net.computeFaceDescriptor(chip), i * 128);
  chip.dispose();
}
fs.writeFileSync(outPath, Buffer.from(out.buffer));
console.log(`face-api ${faceapi.version} (tfjs ${tf.version_core}, ${tf.getBackend()} backend): ${n} descriptors`);
"""


@dataclass(frozen=True)
class NodeReference:
    descriptors: Optional[np.ndarray]
    note: str


def faceapi_reference(bundle: Path, weights_manifest: Path, chips: np.ndarray) -> NodeReference:
    """Descriptors from face-api itself under Node.js, or None (with the reason) when node cannot run it."""
    node = shutil.which("node")
    if node is None:
        return NodeReference(None, "not run: node is not on PATH")
    chips = np.ascontiguousarray(chips, dtype=np.uint8)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        shutil.copyfile(bundle, folder / "face-api.mjs")  # .mjs: an ES module on every node version
        (folder / "reference.mjs").write_text(FACEAPI_REFERENCE_JS, encoding="utf-8")
        chips.tofile(folder / "chips.bin")
        cmd = [node, str(folder / "reference.mjs"), str(folder / "face-api.mjs"), str(weights_manifest),
               str(folder / "chips.bin"), str(len(chips)), str(folder / "out.bin")]
        try:
            run = subprocess.run(cmd, capture_output=True, text=True, timeout=NODE_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            return NodeReference(None, f"not run: node took over {NODE_TIMEOUT_S}s")
        if run.returncode != 0 or not (folder / "out.bin").is_file():
            return NodeReference(None, f"not run: node failed ({run.stderr.strip()[-300:]})")
        out = np.fromfile(folder / "out.bin", dtype=np.float32).reshape(len(chips), EMBEDDING_DIM)
    return NodeReference(out, run.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------------------------------- alignment


def mean_face_point(indices) -> np.ndarray:
    return np.mean([MEAN_FACE[i] for i in np.atleast_1d(indices)], axis=0)


def to_chip(unit_points: np.ndarray, size: int = CHIP_SIZE, padding: float = CHIP_PADDING) -> np.ndarray:
    """dlib's get_face_chip_details mapping of mean-face points (unit square) into chip pixels."""
    return (padding + np.asarray(unit_points, np.float64)) / (2 * padding + 1) * size


def eyes_and_mouth_template() -> np.ndarray:
    """(4, 2) chip positions of the eye centres and mouth corners, image-left first, from dlib's mean face."""
    points = [mean_face_point(LEFT_EYE), mean_face_point(RIGHT_EYE),
              mean_face_point(LEFT_MOUTH), mean_face_point(RIGHT_MOUTH)]
    return to_chip(np.stack(points))


def averaged_nose(landmarks: np.ndarray, eyes_mouth: np.ndarray) -> np.ndarray:
    """Mean chip position of the MTCNN nose when each face's eyes and mouth corners are fitted onto ``eyes_mouth``."""
    noses = []
    for marks in np.asarray(landmarks, np.float64):
        matrix = similarity_transform(marks[list(EYES_AND_MOUTH)], eyes_mouth)
        noses.append(matrix @ np.append(marks[NOSE], 1.0))
    return np.mean(noses, axis=0)


def chip_template(landmarks: np.ndarray) -> np.ndarray:
    """The 5-point template (doorface order) in the 150×150 chip; ``landmarks`` (N, 5, 2) place the nose.

    The nose keeps its averaged height; across, it sits on the face's mirror axis (dlib's mean face is symmetric,
    a sideways mean is the data's pose bias).
    """
    eyes_mouth = eyes_and_mouth_template()
    nose = np.array([eyes_mouth[:2, 0].mean(), averaged_nose(landmarks, eyes_mouth)[1]])
    return np.round(np.insert(eyes_mouth, NOSE, nose, axis=0), TEMPLATE_DECIMALS)


def split_faces(faces: list) -> tuple[list, list]:
    """A seeded, disjoint (calibration, agreement) pair of train-faces subsets."""
    needed = CALIBRATION_SAMPLES + AGREEMENT_SAMPLES
    if len(faces) < needed:
        raise ValueError(f"need {needed} train-faces crops for calibration and agreement, found {len(faces)}")
    order = np.random.default_rng(SPLIT_SEED).permutation(len(faces))
    return ([faces[i] for i in order[:CALIBRATION_SAMPLES]],
            [faces[i] for i in order[CALIBRATION_SAMPLES:needed]])


def aligned_chips(faces: list, template: np.ndarray, desc: str) -> np.ndarray:
    chips = [align_face(load_image(f.path), f.landmarks, template, (CHIP_SIZE, CHIP_SIZE))
             for f in tqdm(faces, desc=desc, unit="face", leave=False)]
    return np.stack(chips)


# -------------------------------------------------------------------------------------------------- TFLite runs


def tflite_embeddings(content: bytes, chips: np.ndarray) -> np.ndarray:
    """Raw (not normalised) float outputs of a converted model on uint8 chips, input quantized via its LUT (as the
    runtime does)."""
    return tflite_tools.run_batch1(content, chips, encoder=tflite_tools.pixel_input(PIXEL_MEAN, PIXEL_STD))


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def latency_ms(content: bytes, chip: np.ndarray, invokes: int = LATENCY_INVOKES) -> float:
    """Median ms per invoke at 1 thread (after one warm-up)."""
    times = tflite_tools.invoke_times_ms(content, chip, invokes, warmup=1,
                                         encoder=tflite_tools.pixel_input(PIXEL_MEAN, PIXEL_STD))
    return float(np.median(times))


def max_abs_diff(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


# ------------------------------------------------------------------------------------------------------ convert


def _entry(path: Path, variant: str, common: dict, tf_version: str) -> dict:
    content = path.read_bytes()
    interp = tfl.make_interpreter(content)
    spec = tfl.input_specs(interp)[0]
    report = tflite_tools.inspect_model(content)
    int8 = variant == "int8"
    return {
        **common,
        "file": path.name,
        "sha256": manifest_io.sha256_bytes(content),
        "size_bytes": len(content),
        "description": "dlib face recognition ResNet (29 conv layers, 128-D, 150x150 RGB chips; dlib reports "
                       "99.38% on LFW), weights from face-api. "
                       + ("Full-integer int8." if int8 else "Float32 reference for the int8 model."),
        "input": {
            "shape": [int(d) for d in spec.shape],
            "dtype": spec.dtype.name,
            "channels": "RGB",
            "mean": PIXEL_MEAN,
            "std": PIXEL_STD,
            "scale": spec.scale,
            "zero_point": spec.zero_point,
        },
        "conversion": {
            "tensorflow": tf_version,
            "variant": "Keras rebuild; affine (scale/bias) layers and the per-channel input mean folded into the "
                       "convolutions; average-pool shortcuts as 2x2/2 convolutions",
            "quantization": "full integer, per-channel weights, int8 input/output" if int8 else "none (float32)",
            "ops": sorted(set(report.ops)),
            "float_ops": sorted(set(report.float_ops)),
            "edgetpu": "; ".join(tflite_tools.check_edgetpu(path, report).problems) or "compatible",
        },
    }


def convert(out_dir: Path, cache: Optional[Path] = None, shared: Optional[Path] = None) -> dict:
    """Build both dlib ResNet files in ``out_dir`` from the pinned source; returns the manifest entries written."""
    import tensorflow as tf

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    steps = tqdm(total=6, desc="dlib_resnet", unit="step")

    def step(label):
        steps.set_postfix_str(label)
        steps.update(1)

    manifest_path, files = extract_source(cache)
    weights = decode_weights(manifest_path)
    step("source fetched and verified")

    faces = datasets.load_train_faces(None if shared is None else Path(shared) / "data" / "train-faces")
    template = chip_template(np.stack([f.landmarks for f in faces]))
    calibration_faces, agreement_faces = split_faces(faces)
    calibration = aligned_chips(calibration_faces, template, "aligning calibration faces")
    held_out = aligned_chips(agreement_faces, template, "aligning agreement faces")
    step(f"template and {len(calibration) + len(held_out)} chips")

    model = build(weights, batch_size=None)
    check = held_out[:CHECK_SAMPLES]
    ours = np.asarray(model(tflite_tools.normalise(check, PIXEL_MEAN, PIXEL_STD), training=False))
    numpy_ref = np.stack([reference_forward(weights, c) for c in tqdm(check, desc="numpy reference", leave=False)])
    node_ref = faceapi_reference(npm_sources.extract(FACE_API_NPM, ESM_BUNDLE, cache), manifest_path, check)
    float_checks = {
        "check_samples": len(check),
        "keras_vs_numpy_reference_max_abs_diff": max_abs_diff(ours, numpy_ref),
        "keras_vs_faceapi_tfjs_max_abs_diff": (max_abs_diff(ours, node_ref.descriptors)
                                               if node_ref.descriptors is not None else node_ref.note),
        "reference_max_abs_value": float(np.max(np.abs(numpy_ref))),
    }
    tqdm.write(f"Keras vs numpy reference max|diff| = {float_checks['keras_vs_numpy_reference_max_abs_diff']:.3g}; "
               f"vs face-api in node: {float_checks['keras_vs_faceapi_tfjs_max_abs_diff']} ({node_ref.note}); "
               f"max|descriptor value| {float_checks['reference_max_abs_value']:.3g}")
    step("float checks")

    bar = tqdm(total=len(calibration), desc="int8 calibration", unit="chip", leave=False)

    def representative():
        for chip in calibration:
            bar.update(1)
            yield [tflite_tools.normalise(chip[None], PIXEL_MEAN, PIXEL_STD)]

    int8_bytes = tflite_tools.to_tflite(build(weights, batch_size=1), representative)
    bar.close()
    float_bytes = tflite_tools.to_tflite(build(weights, batch_size=1))
    for content, name in ((int8_bytes, "int8"), (float_bytes, "float")):
        if not content:
            raise RuntimeError(f"the converter produced an empty {name} model")
    step("converted")

    float_out = tflite_embeddings(float_bytes, held_out)
    int8_out = tflite_embeddings(int8_bytes, held_out)
    keras_held = np.asarray(model.predict(tflite_tools.normalise(held_out, PIXEL_MEAN, PIXEL_STD), batch_size=25,
                                          verbose=0))
    cos = cosine(int8_out, float_out)
    float_checks["tflite_float_vs_keras_max_abs_diff"] = max_abs_diff(float_out, keras_held)
    agreement = {
        "held_out_samples": len(held_out),
        "int8_vs_float_cosine_mean": float(np.mean(cos)),
        "int8_vs_float_cosine_min": float(np.min(cos)),
    }
    timings = {"float": latency_ms(float_bytes, held_out[0]), "int8": latency_ms(int8_bytes, held_out[0])}
    tqdm.write(f"int8 vs float cosine on {len(held_out)} held-out chips: "
               f"mean {agreement['int8_vs_float_cosine_mean']:.4f}, min {agreement['int8_vs_float_cosine_min']:.4f}; "
               f"TFLite float vs Keras max|diff| {float_checks['tflite_float_vs_keras_max_abs_diff']:.3g}")
    tqdm.write(f"1 thread, median of {LATENCY_INVOKES} invokes: float {timings['float']:.1f} ms, "
               f"int8 {timings['int8']:.1f} ms")
    step("agreement")

    common = {
        "task": "face_embedding",
        "family": "dlib_resnet",
        "license": MODEL_LICENSE,
        "align": {
            "template": template.tolist(),
            "size": [CHIP_SIZE, CHIP_SIZE],
            "padding": CHIP_PADDING,
            "method": "dlib get_face_chip_details mean face (padding 0.25): eye centres = mean of iBUG 36-41 / "
                      "42-47, mouth corners = 48 / 54; MTCNN nose = mean over train-faces after a similarity fit "
                      "of eyes and mouth",
        },
        "embedding": {"dim": EMBEDDING_DIM, "metric": "cosine", "normalise": "l2 on host"},
        "source": {**FACE_API_NPM.describe(), "model_license": MODEL_LICENSE,
                   "model": "dlib_face_recognition_resnet_model_v1 (weights stored as uint8 per tensor by face-api)",
                   "files": files},
        "thresholds": {},
    }
    int8_path, float_path = out_dir / "dlib_resnet_int8.tflite", out_dir / "dlib_resnet_float.tflite"
    int8_path.write_bytes(int8_bytes)
    float_path.write_bytes(float_bytes)
    entries = {
        "dlib_resnet": {
            **_entry(int8_path, "int8", common, tf.__version__),
            "float_reference": "dlib_resnet_float",
            "calibration": {
                "samples": len(calibration),
                "from": f"train-faces (CelebA, LFW-disjoint): {len(calibration)} crops, seed {SPLIT_SEED}, aligned "
                        "with the template; never LFW",
            },
            "agreement": {**float_checks, **agreement},
        },
        "dlib_resnet_float": {
            **_entry(float_path, "float", common, tf.__version__),
            "calibration": {"samples": 0, "from": "none"},
            "agreement": float_checks,
        },
    }
    manifest_io.update_manifest(out_dir, entries)
    manifest_io.write_cards(out_dir, sorted(entries))
    step("manifest and cards")
    steps.close()
    return entries


def main(argv: Optional[list] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m converters.build.dlib_resnet", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="output folder (e.g. quantized_models)")
    parser.add_argument("--cache", type=Path, default=None, help="download cache (default: $DOORFACE_CACHE)")
    parser.add_argument("--shared", type=Path, default=None,
                        help="the shared folder holding data/ (default: $DOORFACE_SHARED or ../shared)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    entries = convert(args.out, cache=args.cache, shared=args.shared)
    for key, entry in sorted(entries.items()):
        print(f"{key:<18} {entry['file']:<26} {entry['size_bytes']:>9,} B  sha256 {entry['sha256'][:16]}…")
    return 0


if __name__ == "__main__":
    sys.exit(main())
