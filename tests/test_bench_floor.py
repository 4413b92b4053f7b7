"""bench.bench_floor on 2 real frames at 1 thread, and bench.delegation on tiny int8 models built with TensorFlow.

The bench's JSON is checked for structure and sense, its P-Net multiply-adds against a count made here from the
network's architecture and from TensorFlow's own interpreter, and the delegation count against models whose answer
is known: an int8 PRELU stays outside XNNPACK (1 node), a conv + ReLU graph does not (0).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bench import bench_floor
from bench.delegation import delegation
from bench.floor_worker import import_edge
from bench.macs import macs_at
from edge.detector import RNET_MAX_BATCH
from edge.manifest import Manifest, ManifestError

pytestmark = pytest.mark.convert

WEIGHTED = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")


@pytest.fixture(scope="module")
def report(tmp_path_factory, shared):
    out = tmp_path_factory.mktemp("floor")
    assert bench_floor.main(["--frames", "1", "--threads", "1", "--min-face-size", "40", "--repeats", "1",
                             "--baseline", "HEAD", "--out", str(out), "--name", "floor"]) == 0
    assert (out / "floor.md").read_text(encoding="utf-8").startswith("#### ")
    assert (out / "floor.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return json.loads((out / "floor.json").read_text(encoding="utf-8"))


def test_the_report_has_every_stage_measured_beside_a_positive_floor(report):
    assert report["frames"] == 2 and report["frame_size"] == [640, 480]
    assert report["probe"]["macs"] == 112 * 112 * 64 * 9 * 64  # 3×3 SAME conv, 64 → 64 channels
    assert report["probe"]["gmacs_per_s"]["1"] > 0
    [setting] = report["settings"]
    assert (setting["min_face_size"], setting["threads"]) == (40, 1)
    current = setting["current"]
    assert set(current["stages"]) == set(bench_floor.ROWS)
    for row, stage in current["stages"].items():
        assert stage["ms"] > 0, row
        if row == "align":
            assert stage["floor_ms"] is None  # no multiply-adds
            continue
        assert stage["macs_per_frame"] > 0 and stage["floor_ms"] > 0, row
        assert stage["over_floor"] == pytest.approx(stage["ms"] / stage["floor_ms"])
        gmacs = report["probe"]["gmacs_per_s"]["1"]
        assert stage["floor_ms"] == pytest.approx(stage["macs_per_frame"] / (gmacs * 1e9) * 1e3)
    stages = current["stages"]
    assert stages["total"]["macs_per_frame"] == pytest.approx(
        sum(stages[s]["macs_per_frame"] for s in ("pnet", "rnet", "onet", "embed")))
    assert stages["detect"]["ms"] >= stages["pnet"]["ms"] + stages["rnet"]["ms"] + stages["onet"]["ms"] - 1e-6
    # The shared frames hold faces: each is embedded once; R-Net takes a frame's crops in one invoke when its batch
    # is dynamic (the shipped model; up to its cap), else one invoke per batch of its fixed size.
    assert current["faces_per_frame"] > 0
    assert current["invokes_per_frame"]["embed"] == pytest.approx(current["faces_per_frame"])
    batch = Manifest.load().entry("rnet").input.shape[0]
    crops = current["rnet_crops_per_frame"]
    assert crops > 1
    invokes = current["invokes_per_frame"]["rnet"]
    cap = RNET_MAX_BATCH if batch < 0 else batch
    assert 0 < invokes <= math.ceil(crops / cap) + 1 and invokes < crops


def test_the_baseline_runs_its_own_checkout_in_the_same_table(report):
    head = subprocess.run(["git", "-C", str(bench_floor.ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True, check=True).stdout.strip()
    assert report["codes"]["baseline"]["commit"] == head
    [setting] = report["settings"]
    current, baseline = setting["current"], setting["baseline"]
    assert Path(current["edge"]) == bench_floor.ROOT / "edge"
    assert Path(baseline["edge"]).name == "edge" and Path(baseline["edge"]).parent != bench_floor.ROOT
    assert not Path(baseline["edge"]).exists()  # the temporary worktree is gone
    for row in ("pnet", "embed", "total"):
        assert baseline["stages"][row]["ms"] > 0 and baseline["stages"][row]["floor_ms"] > 0
    assert {m["key"] for m in report["codes"]["baseline"]["models"]} >= {"pnet", "rnet", "onet"}
    assert current["allocations_per_frame"] >= 0 and baseline["allocations_per_frame"] >= 0


def _pnet_float_macs_by_hand(height: int, width: int) -> int:
    """MTCNN P-Net: 3×3 conv 3→10, 2×2/2 max-pool (same), 3×3 conv 10→16, 3×3 conv 16→32, 1×1 heads 32→2 and →4."""
    h1, w1 = height - 2, width - 2
    h2, w2 = math.ceil(h1 / 2), math.ceil(w1 / 2)
    h3, w3 = h2 - 2, w2 - 2
    h4, w4 = h3 - 2, w3 - 2
    return h1 * w1 * 10 * 27 + h3 * w3 * 16 * 90 + h4 * w4 * 32 * 144 + h4 * w4 * (2 + 4) * 32


def _macs_by_tensorflow(path, shape) -> int:
    """The graph's multiply-adds at ``shape`` on TensorFlow's own interpreter (not the edge backend)."""
    import tensorflow as tf

    # Without XNNPACK: a delegated graph's inner tensors keep their conversion-time shapes in the details.
    resolver = tf.lite.experimental.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    interp = tf.lite.Interpreter(model_path=str(path), experimental_op_resolver_type=resolver)
    interp.resize_tensor_input(interp.get_input_details()[0]["index"], list(shape))
    interp.allocate_tensors()
    shapes = {d["index"]: tuple(d["shape"]) for d in interp.get_tensor_details()}
    total = 0
    for op in interp._get_ops_details():
        if op["op_name"] not in WEIGHTED:
            continue
        out = shapes[op["outputs"][0]]
        weights = shapes[op["inputs"][1]]
        per_output = weights[1] * weights[2] * (weights[3] if op["op_name"] == "CONV_2D" else 1)
        if op["op_name"] == "FULLY_CONNECTED":
            per_output = weights[1]
        total += int(np.prod(out)) * per_output
    return total


def test_pnet_macs_match_independent_counts(report):
    manifest = Manifest.load(bench_floor.ROOT / "quantized_models")
    current = report["settings"][0]["current"]
    logged = current["invoke_shapes"]["pnet"]["shapes"]
    assert len(logged) >= 5  # the pyramid of a 640×480 frame at 40 px
    per_frame = sum(n * _macs_by_tensorflow(manifest.entry("pnet").path, shape) for shape, n in logged)
    assert current["stages"]["pnet"]["macs_per_frame"] == pytest.approx(per_frame / report["frames"])
    # One shape by hand, from the architecture: the float source has no rewritten layers.
    shape, _ = logged[0]
    assert macs_at(manifest.entry("pnet_float").read_verified(), tuple(shape)) == _pnet_float_macs_by_hand(*shape[1:3])
    [pnet] = [m for m in report["codes"]["current"]["models"] if m["key"] == "pnet"]
    hand = sum(n * _pnet_float_macs_by_hand(*s[1:3]) for s, n in logged) / report["frames"]
    assert pnet["float_macs"] == pytest.approx(hand)


def test_every_shipped_int8_model_has_a_delegation_count(report):
    models = {m["key"]: m for m in report["codes"]["current"]["models"]}
    assert {"pnet", "rnet", "onet", "mobilefacenet", "dlib_resnet"} <= set(models)
    for key, model in models.items():
        counts = model["delegation"]
        assert isinstance(counts["undelegated"], int) and 0 <= counts["undelegated"] <= counts["nodes"], key
        assert len(counts["undelegated_ops"]) == counts["undelegated"], key
        assert model["macs"] > 0 and model["batch"] >= 1, key
    assert models["dlib_resnet"]["int8_over_float"] == pytest.approx(1.0, abs=0.01)  # no rewritten layers


def test_an_unknown_embedder_fails_before_anything_is_measured(tmp_path):
    with pytest.raises(ManifestError, match="no_such_model"):
        bench_floor.main(["--embedder", "no_such_model", "--out", str(tmp_path)])
    assert not list(tmp_path.iterdir())


def test_the_worker_refuses_an_edge_imported_from_elsewhere(tmp_path):
    assert "edge" in sys.modules  # as in a worker that imported it too early: it would measure the wrong tree
    with pytest.raises(RuntimeError, match="before the code root"):
        import_edge(tmp_path)


# ------------------------------------------------------------------------------------------- the delegation


def _tiny_int8(activation: str, batch: int = 1) -> bytes:
    import tensorflow as tf

    inputs = tf.keras.Input((16, 16, 3), batch_size=batch)
    x = tf.keras.layers.Conv2D(8, 3)(inputs)
    x = tf.keras.layers.PReLU(shared_axes=[1, 2])(x) if activation == "prelu" else tf.keras.layers.ReLU()(x)
    model = tf.keras.Model(inputs, tf.keras.layers.Conv2D(4, 1)(x))
    rng = np.random.default_rng(0)
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: (
        [rng.uniform(-1, 1, (batch, 16, 16, 3)).astype(np.float32)] for _ in range(4))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    return converter.convert()


def test_an_int8_prelu_is_the_one_node_outside_xnnpack():
    result = delegation(_tiny_int8("prelu"))
    assert result.undelegated == 1 and result.outside == ("PRELU",)
    assert result.nodes == 3 and result.partitions == 2  # the convs on either side are delegated


def test_a_graph_of_delegated_ops_leaves_nothing_outside():
    result = delegation(_tiny_int8("relu"))
    assert result.undelegated == 0 and result.outside == () and result.partitions == 1
    assert result.to_dict() == {"nodes": 2, "partitions": 1, "undelegated": 0, "undelegated_ops": []}


def test_a_fixed_batch_is_counted_with_its_padding_and_shared_per_input(tmp_path):
    one, four = _tiny_int8("relu", batch=1), _tiny_int8("relu", batch=4)
    per_invoke = 14 * 14 * 8 * 27 + 14 * 14 * 4 * 8
    assert macs_at(one) == per_invoke and macs_at(four) == 4 * per_invoke
    path = tmp_path / "four.tflite"
    path.write_bytes(four)
    assert bench_floor._macs_per_item(path, None) == per_invoke
