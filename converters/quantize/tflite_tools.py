"""Keras → TFLite (float or full-integer int8), and checks on a converted model's ops and tensors.

The checks read the model through the TFLite interpreter only (no TensorFlow), so tests can run them on every
shipped model.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Optional

import numpy as np

from edge import interpreter as tfl

# Ops the EdgeTPU compiler maps (coral.ai "TensorFlow models on the Edge TPU", supported operations), int8/uint8 only.
EDGETPU_OPS = frozenset({
    "ADD", "AVERAGE_POOL_2D", "CONCATENATION", "CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "L2_NORMALIZATION",
    "LOGISTIC", "MAX_POOL_2D", "MEAN", "MINIMUM", "MAXIMUM", "MUL", "PACK", "PAD", "PRELU", "QUANTIZE", "DEQUANTIZE",
    "RELU", "RELU6", "RELU_N1_TO_1", "RESHAPE", "RESIZE_BILINEAR", "RESIZE_NEAREST_NEIGHBOR", "SOFTMAX", "SLICE",
    "SPACE_TO_DEPTH", "SQUEEZE", "STRIDED_SLICE", "SUB", "SUM", "SPLIT", "TANH", "TRANSPOSE", "TRANSPOSE_CONV",
    "HARD_SWISH", "LEAKY_RELU",
})
# Ops that do no arithmetic: a float tensor through them is no float island.
INTEGER_DTYPES = (np.int8, np.uint8, np.int16, np.int32, np.int64)


def to_tflite(model, representative: Optional[Callable[[], Iterable[list]]] = None) -> bytes:
    """Convert a Keras model; with ``representative`` data the result is full-integer int8 (int8 I/O)."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if representative is not None:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
    return converter.convert()


@dataclass(frozen=True)
class ModelReport:
    ops: tuple[str, ...]
    float_ops: tuple[str, ...] = field(default=())
    """Ops with a float32 input or output: float islands inside an int8 model."""
    dynamic_input: bool = False
    input_dtype: str = ""
    output_dtypes: tuple[str, ...] = ()

    @property
    def fully_int8(self) -> bool:
        return not self.float_ops and self.input_dtype in ("int8", "uint8")


def run_batch1(content: bytes, inputs: np.ndarray, num_threads: int = 1) -> np.ndarray:
    """A batch-1 model on already normalised inputs, one at a time (quantized as its input says); the outputs
    dequantized, (N, width)."""
    interp = tfl.make_interpreter(content, num_threads=num_threads)
    interp.allocate_tensors()
    spec, out = tfl.input_specs(interp)[0], tfl.output_specs(interp)[0]
    results = np.zeros((len(inputs), out.shape[-1]), np.float32)
    for i, x in enumerate(inputs):
        interp.set_tensor(spec.index, tfl.quantize(x[None], spec))
        interp.invoke()
        results[i] = tfl.get_output(interp, out).reshape(-1)
    return results


def inspect_model(model: bytes | str | Path) -> ModelReport:
    """Op names and float islands of a .tflite model, read through the interpreter (delegates off)."""
    content = Path(model).read_bytes() if isinstance(model, (str, Path)) else model
    be = tfl.backend()
    try:
        interp = be.interpreter_class(
            model_content=content, experimental_op_resolver_type=_builtin_ref_resolver(be)
        )
    except TypeError:
        interp = be.interpreter_class(model_content=content)
    dtypes = {d["index"]: np.dtype(d["dtype"]) for d in interp.get_tensor_details()}
    ops, float_ops = [], []
    for op in interp._get_ops_details():  # noqa: SLF001 - the only TF-free way to list ops
        name = op["op_name"]
        ops.append(name)
        tensors = [i for i in list(op["inputs"]) + list(op["outputs"]) if i >= 0]
        if any(dtypes.get(i) == np.float32 for i in tensors):
            float_ops.append(name)
    inp = interp.get_input_details()[0]
    return ModelReport(
        ops=tuple(ops),
        float_ops=tuple(float_ops),
        dynamic_input=bool(np.any(np.asarray(inp.get("shape_signature", inp["shape"])) < 0)),
        input_dtype=np.dtype(inp["dtype"]).name,
        output_dtypes=tuple(np.dtype(o["dtype"]).name for o in interp.get_output_details()),
    )


def _builtin_ref_resolver(be):
    resolver = getattr(be.interpreter_class, "OpResolverType", None)
    if resolver is None:
        raise TypeError("no op resolver choice")
    return resolver.BUILTIN_WITHOUT_DEFAULT_DELEGATES


@dataclass(frozen=True)
class EdgeTPUReport:
    compatible: bool
    problems: tuple[str, ...]
    compiler: str
    """What `edgetpu_compiler` said, or why it was not run."""


def check_edgetpu(model_path: Path, report: Optional[ModelReport] = None) -> EdgeTPUReport:
    """Static EdgeTPU compatibility from the parsed model; ``edgetpu_compiler`` is run too when it is on PATH."""
    report = report or inspect_model(model_path)
    problems = []
    unsupported = sorted(set(report.ops) - EDGETPU_OPS)
    if unsupported:
        problems.append(f"ops the EdgeTPU cannot map: {', '.join(unsupported)}")
    if report.float_ops:
        problems.append(f"float ops: {', '.join(sorted(set(report.float_ops)))}")
    if report.input_dtype not in ("int8", "uint8"):
        problems.append(f"input is {report.input_dtype}, not int8/uint8")
    if report.dynamic_input:
        problems.append("dynamic input shape: compile one model per input size (e.g. per P-Net pyramid level)")
    compiler = shutil.which("edgetpu_compiler")
    if compiler is None:
        compiler_note = "edgetpu_compiler not on PATH: static check only"
    else:
        with tempfile.TemporaryDirectory() as out:
            run = subprocess.run([compiler, "-s", "-o", out, str(model_path)], capture_output=True, text=True)
            compiler_note = (run.stdout + run.stderr).strip()[-2000:]
            if run.returncode != 0:
                problems.append("edgetpu_compiler failed")
    return EdgeTPUReport(not problems, tuple(problems), compiler_note)
