"""Keras → TFLite (float or full-integer int8); the shared helpers that normalise pixels, run and time a converted
model; and checks on a converted model's ops and tensors.

Everything but :func:`to_tflite` reads the model through the TFLite interpreter only (no TensorFlow), so tests and
benches can run it on every shipped model.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

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


# ----------------------------------------------------------------------------------------- inputs and runs

InputEncoder = Callable[[tfl.TensorSpec], Callable[[np.ndarray], np.ndarray]]
"""Given a model's input spec, a function from one sample (no batch axis) to the input tensor's value."""


def normalise(pixels: np.ndarray, mean: float, std: float) -> np.ndarray:
    """uint8 pixels → a model's float32 input ``(pixels - mean) / std``.

    Every step is float32, mean and std included (a numpy float64 constant would otherwise promote the arithmetic
    under NumPy 2), so calibration sets and checks are the same bits in every converter and in the research code.
    """
    return ((np.asarray(pixels, np.float32) - np.float32(mean)) / np.float32(std)).astype(np.float32)


def normalised_input(spec: tfl.TensorSpec) -> Callable[[np.ndarray], np.ndarray]:
    """Samples already normalised (float) → the input tensor: a batch axis added, quantized as ``spec`` says."""
    return lambda sample: tfl.quantize(sample[None], spec)


def pixel_input(mean: float, std: float) -> InputEncoder:
    """uint8 pixel samples → the input tensor through the runtime's table ``q((p - mean) / std)`` (float64, as the
    device computes it, which can differ from quantizing :func:`normalise`'s float32 in the last step)."""

    def encoder(spec: tfl.TensorSpec) -> Callable[[np.ndarray], np.ndarray]:
        table = tfl.pixel_lut(spec, mean, std)
        return lambda pixels: table[pixels][None]

    return encoder


def allocated(model: bytes | Path, num_threads: int = 1, input_shape: Optional[tuple[int, ...]] = None) -> Any:
    """An interpreter ready to invoke; a resizable input (P-Net's) first resized to ``input_shape`` if it differs."""
    interp = tfl.make_interpreter(model, num_threads=num_threads)
    if input_shape is not None:
        spec = tfl.input_specs(interp)[0]
        if spec.shape != tuple(input_shape):
            interp.resize_tensor_input(spec.index, list(input_shape), strict=False)
    interp.allocate_tensors()
    return interp


def run_once(interp: Any, model_input: np.ndarray) -> list[np.ndarray]:
    """``model_input`` (already the input tensor's dtype and shape) through an allocated interpreter; every output
    dequantized, in the interpreter's output order."""
    interp.set_tensor(tfl.input_specs(interp)[0].index, model_input)
    interp.invoke()
    return [tfl.get_output(interp, spec) for spec in tfl.output_specs(interp)]


def run_batch1(content: bytes, inputs: np.ndarray, num_threads: int = 1,
               encoder: InputEncoder = normalised_input) -> np.ndarray:
    """A batch-1 model on ``inputs`` one at a time (by default already normalised, quantized as the input says);
    the first output dequantized, (N, width)."""
    interp = allocated(content, num_threads)
    encode = encoder(tfl.input_specs(interp)[0])
    results = np.zeros((len(inputs), tfl.output_specs(interp)[0].shape[-1]), np.float32)
    for i, x in enumerate(inputs):
        results[i] = run_once(interp, encode(x))[0].reshape(-1)
    return results


# ------------------------------------------------------------------------------------------------------ timing


def call_times_ms(call: Callable[[int], object], calls: int) -> np.ndarray:
    """Wall-clock milliseconds of ``call(i)`` for each i in ``range(calls)``; warming up is the caller's."""
    times = np.zeros(calls)
    for i in range(calls):
        started = time.perf_counter()
        call(i)
        times[i] = (time.perf_counter() - started) * 1000.0
    return times


def invoke_times_ms(content: bytes, sample: np.ndarray, invokes: int, warmup: int, num_threads: int = 1,
                    encoder: InputEncoder = normalised_input) -> np.ndarray:
    """Milliseconds of each of ``invokes`` ``invoke()`` calls on one fixed sample, after ``warmup`` untimed ones
    (the first invoke also plans the graph and packs weights)."""
    interp = allocated(content, num_threads)
    spec = tfl.input_specs(interp)[0]
    interp.set_tensor(spec.index, encoder(spec)(sample))
    for _ in range(warmup):
        interp.invoke()
    return call_times_ms(lambda _: interp.invoke(), invokes)


# ------------------------------------------------------------------------------------------------------ checks


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


EDGETPU_MAX_DIMS_ABOVE_ONE = 3
"""coral.ai, "Model requirements": tensors are 1-, 2- or 3-dimensional; a tensor with more dimensions may have a size
> 1 only in its 3 innermost ones (so (1, 24, 24, 3) maps and a batch of crops (16, 24, 24, 3) does not)."""


@dataclass(frozen=True)
class OpFallback:
    """The first op the EdgeTPU would not run: it and every op after it fall back to the CPU."""

    index: int
    """Position in execution order."""
    op: str
    reason: str

    def __str__(self) -> str:
        return f"op {self.index} {self.op}: {self.reason}"


@dataclass(frozen=True)
class EdgeTPUReport:
    compatible: bool
    problems: tuple[str, ...]
    compiler: str
    """What `edgetpu_compiler` said, or why it was not run."""
    first_fallback: Optional[OpFallback] = None
    """Where the one EdgeTPU partition ends; None when every op maps."""
    ops: int = 0
    """Ops in the model; those before ``first_fallback`` would run on the EdgeTPU."""

    @property
    def mapped_ops(self) -> int:
        return self.ops if self.first_fallback is None else self.first_fallback.index


def _tensor_problem(detail: dict, constant: bool) -> Optional[str]:
    """Why one tensor keeps its op off the EdgeTPU, or None."""
    name, shape = detail["name"], tuple(int(d) for d in detail.get("shape_signature", detail["shape"]))
    dtype = np.dtype(detail["dtype"])
    if dtype not in (np.int8, np.uint8) and not (constant and dtype == np.int32):
        kind = "constant" if constant else "activation"
        return f"{kind} tensor '{name}' is {dtype.name} (the EdgeTPU runs int8/uint8 only, int32 only for biases)"
    if any(d < 0 for d in shape):
        return f"tensor '{name}' {shape} has a dynamic shape (the EdgeTPU compiles one static shape)"
    # Weights (e.g. a conv's (out, h, w, in) filter) are laid out by the compiler: the rule is the activations'.
    if (not constant and len(shape) > EDGETPU_MAX_DIMS_ABOVE_ONE
            and any(d > 1 for d in shape[:-EDGETPU_MAX_DIMS_ABOVE_ONE])):
        above_one = sum(d > 1 for d in shape)
        return (f"tensor '{name}' {shape} has {above_one} dimensions > 1 (the EdgeTPU allows sizes > 1 only in the "
                f"{EDGETPU_MAX_DIMS_ABOVE_ONE} innermost)")
    return None


def edgetpu_walk(content: bytes) -> tuple[int, list[OpFallback]]:
    """Every op in execution order against the EdgeTPU's rules: the op count and each op that would not map,
    with the first reason found (op not on :data:`EDGETPU_OPS`, a non-int8 tensor, a dynamic shape, > 3
    dimensions > 1)."""
    be = tfl.backend()
    interp = be.interpreter_class(model_content=content)
    details = {d["index"]: d for d in interp.get_tensor_details()}
    ops = interp._get_ops_details()  # noqa: SLF001 - the only TF-free way to list ops
    produced = {int(i) for op in ops for i in op["outputs"]} | {d["index"] for d in interp.get_input_details()}
    failures = []
    for op in ops:
        name = op["op_name"]
        if name not in EDGETPU_OPS:
            failures.append(OpFallback(op["index"], name, "not an op the EdgeTPU compiler maps"))
            continue
        for i in [int(i) for i in list(op["inputs"]) + list(op["outputs"]) if i >= 0]:
            problem = _tensor_problem(details[i], constant=i not in produced)
            if problem:
                failures.append(OpFallback(op["index"], name, problem))
                break
    return len(ops), failures


def check_edgetpu(model_path: Path, report: Optional[ModelReport] = None) -> EdgeTPUReport:
    """Static EdgeTPU check: the first op that would fall back to the CPU (which ends the single EdgeTPU
    partition) and every distinct reason; ``edgetpu_compiler`` is run too when it is on PATH.

    ``report`` (the model's :func:`inspect_model`) adds a hint for a dynamic input."""
    content = Path(model_path).read_bytes()
    op_count, failures = edgetpu_walk(content)
    problems = [str(failures[0])] if failures else []
    if len(failures) > 1:
        problems.append(f"{len(failures) - 1} later ops would not map either (the CPU runs everything after op "
                        f"{failures[0].index} anyway)")
    if report is not None and report.dynamic_input:
        problems.append("dynamic input shape: compile one model per input size (`doorface-convert edgetpu`)")
    compiler = shutil.which("edgetpu_compiler")
    if compiler is None:
        compiler_note = "edgetpu_compiler not on PATH: static check only"
    else:
        with tempfile.TemporaryDirectory() as out:
            run = subprocess.run([compiler, "-s", "-o", out, str(model_path)], capture_output=True, text=True)
            compiler_note = (run.stdout + run.stderr).strip()[-2000:]
            if run.returncode != 0:
                problems.append("edgetpu_compiler failed")
    return EdgeTPUReport(not problems, tuple(problems), compiler_note, failures[0] if failures else None, op_count)
