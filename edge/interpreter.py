"""TFLite interpreter factory and explicit (de)quantization, without TensorFlow.

``ai_edge_litert`` is preferred; ``tflite_runtime`` (what Raspberry Pi OS users often have) is the fallback.
XNNPACK is on by default in both. An EdgeTPU delegate is used only when asked for and present; otherwise one
warning says why and the model runs on the CPU. Which model runs where is decided before, in
:mod:`edge.accelerator`.

Quantized tensors are handled from their details (scale, zero point, dtype), widening to int32/int64 before any
subtraction so that int8/uint8 arithmetic never wraps.
"""

from __future__ import annotations

import ctypes
import importlib
import logging
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np

log = logging.getLogger(__name__)

EDGETPU_LIBRARY = "libedgetpu.so.1"
# Device strings follow pycoral: "cpu", "edgetpu" (any), "edgetpu:usb", "edgetpu:usb:N", "edgetpu:pci", ...
CPU = "cpu"


class InterpreterUnavailable(ImportError):
    """No TFLite interpreter package is installed."""


@dataclass(frozen=True)
class Backend:
    name: str
    interpreter_class: Any
    load_delegate: Any


@lru_cache(maxsize=1)
def backend() -> Backend:
    """The first TFLite interpreter package that imports: ai_edge_litert, else tflite_runtime."""
    errors = []
    for module_name in ("ai_edge_litert.interpreter", "tflite_runtime.interpreter"):
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            errors.append(f"{module_name}: {exc}")
            continue
        return Backend(module_name.split(".")[0], module.Interpreter, module.load_delegate)
    raise InterpreterUnavailable(
        "no TFLite interpreter found; install one with `pip install ai-edge-litert` "
        "(or `pip install tflite-runtime 'numpy<2'` on older Raspberry Pi OS). Tried: " + "; ".join(errors)
    )


def parse_device(device: str) -> Optional[dict]:
    """Delegate options for a device string, or None for the CPU. Raises ValueError on an unknown string."""
    device = (device or CPU).strip().lower()
    if device == CPU:
        return None
    if device == "edgetpu":
        return {}
    if device.startswith("edgetpu:"):
        spec = device.split(":", 1)[1]
        kind = spec.split(":")[0]
        if kind in ("usb", "pci") and (spec.count(":") == 0 or spec.split(":")[1].isdigit()):
            return {"device": spec}
    raise ValueError(
        f"unknown device {device!r}: use 'cpu', 'edgetpu', 'edgetpu:usb', 'edgetpu:usb:N' or 'edgetpu:pci'"
    )


class DelegateUnavailable(RuntimeError):
    """The EdgeTPU delegate cannot be loaded: its library is missing, or no accelerator answered."""


def load_delegate(device: str) -> Any:
    """The EdgeTPU delegate for ``device`` (``edgetpu``, ``edgetpu:usb``, ``edgetpu:usb:N``, ``edgetpu:pci``).

    Raises DelegateUnavailable saying what is missing; ValueError for a device string that is not an EdgeTPU's.
    """
    options = parse_device(device)
    if options is None:
        raise ValueError(f"{device!r} is not an EdgeTPU device")
    try:
        # Probe first: litert's Delegate object, half-built when the library is absent, fails again in __del__.
        ctypes.CDLL(EDGETPU_LIBRARY)
    except OSError as exc:
        raise DelegateUnavailable(f"the Coral runtime ({EDGETPU_LIBRARY}) is not installed: {exc}") from None
    try:
        return backend().load_delegate(EDGETPU_LIBRARY, options)
    except (OSError, ValueError, RuntimeError) as exc:
        raise DelegateUnavailable(f"{EDGETPU_LIBRARY} loaded, but no EdgeTPU answered for {device} "
                                  f"(plugged in? another process using it?): {exc}") from None


def _edgetpu_delegate(device: str) -> Optional[Any]:
    """The EdgeTPU delegate, or None after one warning that says what to install."""
    try:
        return load_delegate(device)
    except DelegateUnavailable as exc:
        log.warning(
            "EdgeTPU requested (%s) but not usable (%s); running on the CPU. Install the Coral runtime "
            "(`./install.sh --coral`), plug the accelerator in, and use *_edgetpu.tflite models.",
            device,
            exc,
        )
        return None


def make_interpreter(
    model: Union[str, Path, bytes],
    *,
    num_threads: int = 1,
    device: str = CPU,
) -> Any:
    """Create an interpreter for a model file or model bytes, tensors not yet allocated.

    ``device`` other than ``cpu`` asks for the EdgeTPU delegate; when the library or the device is absent the
    model runs on the CPU after one warning that says what to install.
    """
    if num_threads < 1:
        raise ValueError(f"num_threads must be >= 1, got {num_threads}")
    be = backend()
    options = parse_device(device)
    delegate = _edgetpu_delegate(device) if options is not None else None
    delegates = [delegate] if delegate is not None else []
    source = {"model_content": bytes(model)} if isinstance(model, (bytes, bytearray)) else {"model_path": str(model)}
    return be.interpreter_class(**source, num_threads=num_threads, experimental_delegates=delegates or None)


@dataclass(frozen=True)
class TensorSpec:
    """What a caller needs to feed or read one tensor: index, shape, dtype and affine quantization."""

    index: int
    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    scale: float
    zero_point: int

    @property
    def quantized(self) -> bool:
        return self.scale != 0.0 and np.issubdtype(self.dtype, np.integer)

    @classmethod
    def from_details(cls, details: dict) -> TensorSpec:
        scale, zero_point = details.get("quantization", (0.0, 0))
        return cls(
            index=int(details["index"]),
            name=str(details.get("name", "")),
            shape=tuple(int(d) for d in details["shape"]),
            dtype=np.dtype(details["dtype"]),
            scale=float(scale),
            zero_point=int(zero_point),
        )


def input_specs(interpreter: Any) -> list[TensorSpec]:
    return [TensorSpec.from_details(d) for d in interpreter.get_input_details()]


def output_specs(interpreter: Any) -> list[TensorSpec]:
    return [TensorSpec.from_details(d) for d in interpreter.get_output_details()]


def quantize(values: np.ndarray, spec: TensorSpec) -> np.ndarray:
    """Real values → the tensor's storage type (round to nearest, saturate)."""
    if not spec.quantized:
        return np.asarray(values, dtype=spec.dtype)
    info = np.iinfo(spec.dtype)
    q = np.round(np.asarray(values, dtype=np.float64) / spec.scale) + spec.zero_point
    return np.clip(q, info.min, info.max).astype(spec.dtype)


def dequantize(raw: np.ndarray, spec: TensorSpec) -> np.ndarray:
    """Tensor storage → float32 real values; integers are widened before the zero point is subtracted."""
    if not spec.quantized:
        return np.asarray(raw, dtype=np.float32)
    return ((np.asarray(raw).astype(np.int64) - spec.zero_point) * spec.scale).astype(np.float32)


def pixel_lut(spec: TensorSpec, mean: float, std: float) -> np.ndarray:
    """A 256-entry table mapping uint8 pixels straight to the input tensor's values: ``q((p - mean) / std)``.

    Normalising and quantizing a frame is then one fancy-indexing pass, exact for every pixel value.
    """
    return quantize((np.arange(256, dtype=np.float64) - mean) / std, spec)


def get_output(interpreter: Any, spec: TensorSpec) -> np.ndarray:
    return dequantize(interpreter.get_tensor(spec.index), spec)
