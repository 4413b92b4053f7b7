"""MTCNN on TFLite: stage runners over int8 (or float) interpreters, and the detector that wires them.

P-Net is fully convolutional and runs once per pyramid level. Re-allocating one interpreter for every level of
every frame would rebuild XNNPACK's packed weights each time, so each distinct input shape keeps its own
interpreter (a video has the same few shapes every frame). R-Net and O-Net run a frame's candidates in batches:
their batch is dynamic, and resizing it only re-plans activations (about 10 µs, measured), so the one interpreter
is resized to the frame's crop count, up to a cap that bounds its memory. A model with a fixed batch (an EdgeTPU
build) runs in chunks of that batch, the last one padded.

With an EdgeTPU (see :mod:`edge.accelerator`), a pyramid level whose shape has a compiled P-Net runs it on the
EdgeTPU and any other level the CPU model; R-Net and O-Net run their compiled variant when there is one.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from edge import interpreter as tfl
from edge.accelerator import Placement, place_models
from edge.faces import Detections
from edge.manifest import Manifest, ManifestError, ModelEntry
from edge.mtcnn import DEFAULT_PARAMS, CascadeParams, detect_faces

MTCNN_KEYS = ("pnet", "rnet", "onet")
# Enough for every pyramid level of a couple of frame sizes; each P-Net interpreter holds well under 1 MB.
PNET_SHAPE_CACHE = 48
# Most crops per R-Net / O-Net invoke with a dynamic batch. The interpreter's arena keeps the largest batch it ever
# ran (measured RSS growth: R-Net ~23 KB a crop, O-Net ~195 KB), and a CPU does the same work per crop at any batch
# (int8 XNNPACK: 0.6 ms an O-Net crop, batched or not), so a bounded batch costs no time and caps the arena at
# ~1.5 MB (R-Net, 64) and ~3 MB (O-Net, 16); a door frame's O-Net candidates usually fit in one invoke.
RNET_MAX_BATCH = 64
ONET_MAX_BATCH = 16

# Output heads are told apart by their width, which the architecture fixes.
FACE_PROB_WIDTH = 2
BOX_OFFSETS_WIDTH = 4
LANDMARKS_WIDTH = 10


class _Model:
    """One model's bytes, input normalisation and a factory for interpreters at a given input shape."""

    def __init__(self, entry: ModelEntry, num_threads: int, device: str):
        self.entry = entry
        self.content = entry.read_verified()
        self.num_threads = num_threads
        self.device = device

    def interpreter(self, shape: Optional[tuple[int, ...]] = None) -> Any:
        interp = tfl.make_interpreter(self.content, num_threads=self.num_threads, device=self.device)
        if shape is not None:
            spec = tfl.input_specs(interp)[0]
            if spec.shape != shape:
                interp.resize_tensor_input(spec.index, list(shape), strict=False)
        interp.allocate_tensors()
        return interp


class _Bound:
    """An allocated interpreter with its input lookup table and outputs keyed by head width."""

    def __init__(self, model: _Model, shape: Optional[tuple[int, ...]] = None):
        self.interpreter = model.interpreter(shape)
        self.input = tfl.input_specs(self.interpreter)[0]
        self.lut = tfl.pixel_lut(self.input, model.entry.input.mean, model.entry.input.std)
        self.outputs = {spec.shape[-1]: spec for spec in tfl.output_specs(self.interpreter)}
        signature = self.interpreter.get_input_details()[0]["shape_signature"]
        # None: the batch is dynamic; else the batch every invoke must fill.
        self.fixed_batch: Optional[int] = None if int(signature[0]) < 0 else int(signature[0])
        self.batch = int(self.input.shape[0])

    def run(self, pixels: np.ndarray) -> dict[int, np.ndarray]:
        """uint8 pixels of one input → dequantized outputs keyed by head width."""
        raw = self.run_quantized(self.lut[pixels][None])
        return {width: tfl.dequantize(raw[width][0], spec) for width, spec in self.outputs.items()}

    def run_quantized(self, batch: np.ndarray) -> dict[int, np.ndarray]:
        """A batch already in the tensor's storage type → raw (still quantized) outputs keyed by head width.

        A dynamic batch is resized to ``len(batch)`` first (only when it changes); a fixed one must be matched.
        """
        if len(batch) != self.batch:
            if self.fixed_batch is not None:
                raise ValueError(f"this model takes batches of exactly {self.fixed_batch}, got {len(batch)}")
            self.interpreter.resize_tensor_input(self.input.index, [len(batch), *self.input.shape[1:]],
                                                 strict=False)
            self.interpreter.allocate_tensors()
            self.batch = len(batch)
        self.interpreter.set_tensor(self.input.index, batch)
        self.interpreter.invoke()
        return {width: self.interpreter.get_tensor(spec.index) for width, spec in self.outputs.items()}


class PNet:
    """P-Net runner: ``(H, W, 3) uint8 → (prob (h, w), offsets (h, w, 4))``."""

    def __init__(self, model: _Model, compiled: tuple[_Model, ...] = ()):
        self.model = model
        self._bound: OrderedDict[tuple[int, int], _Bound] = OrderedDict()
        # EdgeTPU variants by the (h, w) they were compiled for: bound once, never evicted.
        self._compiled = {m.entry.input.shape[1:3]: _Bound(m) for m in compiled}

    def __call__(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        key = image.shape[:2]
        bound = self._compiled.get(key) or self._bound.get(key)
        if bound is None:
            bound = _Bound(self.model, (1, *key, 3))
            self._bound[key] = bound
            if len(self._bound) > PNET_SHAPE_CACHE:
                self._bound.popitem(last=False)
        elif key in self._bound:
            self._bound.move_to_end(key)
        out = bound.run(image)
        return out[FACE_PROB_WIDTH][..., 1], out[BOX_OFFSETS_WIDTH]


class CropNet:
    """R-Net / O-Net runner over a frame's crops: ``(n, s, s, 3) uint8 → (prob (n,), offsets (n, 4)[, (n, 10)])``.

    Crops go in invokes of up to ``max_batch`` (a dynamic batch); a model with a fixed batch takes them in chunks of
    it, the last one padded with its first crop (its outputs are dropped).
    """

    def __init__(self, model: _Model, widths: tuple[int, ...], max_batch: int):
        self.bound = _Bound(model)
        self.widths = widths
        self.chunk = self.bound.fixed_batch or max_batch
        missing = set(widths) - set(self.bound.outputs)
        if missing:
            raise ValueError(f"model '{model.entry.key}' lacks output heads of width {sorted(missing)}")

    def __call__(self, crops: np.ndarray) -> tuple[np.ndarray, ...]:
        specs = [self.bound.outputs[w] for w in self.widths]
        raw = [np.zeros((len(crops), w), dtype=spec.dtype) for w, spec in zip(self.widths, specs)]
        tensors = self.bound.lut[crops]
        for start in range(0, len(crops), self.chunk):
            part = tensors[start:start + self.chunk]
            count = len(part)
            if self.bound.fixed_batch is not None and count < self.chunk:
                part = np.concatenate([part, np.repeat(part[:1], self.chunk - count, axis=0)])
            out = self.bound.run_quantized(part)
            for column, width in zip(raw, self.widths):
                column[start:start + count] = out[width][:count]
        results = [tfl.dequantize(column, spec) for column, spec in zip(raw, specs)]
        results[0] = results[0][:, 1]  # face probability of the (not face, face) pair
        return tuple(results)


@dataclass
class MtcnnDetector:
    """Face detector: call with an RGB uint8 image, get :class:`Detections`."""

    pnet: PNet
    rnet: CropNet
    onet: CropNet
    params: CascadeParams = DEFAULT_PARAMS

    def __call__(self, image: np.ndarray) -> Detections:
        return detect_faces(image, self.pnet, self.rnet, self.onet, self.params)

    @classmethod
    def from_manifest(
        cls,
        manifest: Optional[Manifest] = None,
        *,
        num_threads: int = 1,
        device: str = tfl.CPU,
        params: CascadeParams = DEFAULT_PARAMS,
        keys: tuple[str, str, str] = MTCNN_KEYS,
        placement: Optional[Placement] = None,
    ) -> MtcnnDetector:
        """The cascade of the manifest's ``keys``; on ``device``, or as ``placement`` (made here if not given)
        says: each stage with EdgeTPU variants runs them, the others their CPU model."""
        manifest = manifest or Manifest.load()
        placement = placement or place_models(manifest, device, keys)
        cpu = [_Model(manifest.entry(k), num_threads, tfl.CPU) for k in keys]
        compiled = [tuple(_Model(v, num_threads, placement.device) for v in placement.variants_of(k)) for k in keys]
        for key, variants in zip(keys[1:], compiled[1:]):
            if len(variants) > 1:
                raise ManifestError(f"{manifest.path}: '{key}' has {len(variants)} EdgeTPU variants "
                                    f"({', '.join(v.entry.key for v in variants)}); it takes one (a fixed batch)")
        return cls(
            pnet=PNet(cpu[0], compiled[0]),
            rnet=CropNet(compiled[1][0] if compiled[1] else cpu[1], (FACE_PROB_WIDTH, BOX_OFFSETS_WIDTH),
                         RNET_MAX_BATCH),
            onet=CropNet(compiled[2][0] if compiled[2] else cpu[2],
                         (FACE_PROB_WIDTH, BOX_OFFSETS_WIDTH, LANDMARKS_WIDTH), ONET_MAX_BATCH),
            params=params,
        )
