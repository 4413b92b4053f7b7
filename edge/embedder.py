"""Face embedders on TFLite: align a detected face with the model's own template, embed, L2-normalise on the host.

One class serves every embedder: input size, channel order, normalisation, alignment template and metric all come
from the model's manifest entry (``task: face_embedding``), so adding a model is a manifest entry, not code.
L2 normalisation runs here, after dequantization, because an in-model normalisation leaves a float island in an
otherwise int8 graph.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from edge import interpreter as tfl
from edge.accelerator import Placement
from edge.align import align_face
from edge.manifest import Manifest, ManifestError, ModelEntry

EMBEDDING_TASK = "face_embedding"
NORM_EPSILON = 1e-12


@dataclass(frozen=True)
class EmbedderSpec:
    """What the manifest says about an embedder."""

    key: str
    sha256: str
    size: tuple[int, int]  # (w, h)
    channels: str  # "RGB" or "BGR"
    mean: float
    std: float
    template: np.ndarray  # (5, 2) in input pixels, detector landmark order
    dim: int
    metric: str

    @classmethod
    def from_entry(cls, entry: ModelEntry) -> EmbedderSpec:
        fields = entry.fields
        where = f"manifest model '{entry.key}'"
        if entry.task != EMBEDDING_TASK:
            raise ManifestError(f"{where} is a '{entry.task}', not a '{EMBEDDING_TASK}'")
        try:
            template = np.asarray(fields["align"]["template"], dtype=np.float64)
            size = tuple(int(v) for v in fields["align"].get("size") or fields["input"]["shape"][2:0:-1])
            embedding = fields["embedding"]
            spec = cls(entry.key, entry.sha256, size, entry.input.channels.upper(), entry.input.mean,
                       entry.input.std, template, int(embedding["dim"]), str(embedding.get("metric", "cosine")))
        except (KeyError, TypeError, ValueError) as exc:
            raise ManifestError(f"{where} lacks a valid align/embedding field: {exc!r}") from None
        if spec.template.shape != (5, 2):
            raise ManifestError(f"{where}: align.template must be 5 [x, y] points, got shape {spec.template.shape}")
        if spec.channels not in ("RGB", "BGR"):
            raise ManifestError(f"{where}: input.channels must be RGB or BGR, got {spec.channels}")
        return spec


def l2_normalise(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors / np.maximum(norms, NORM_EPSILON)


class Embedder:
    """``embedder(image, landmarks)`` → (N, dim) unit vectors, one per face."""

    def __init__(self, entry: ModelEntry, *, num_threads: int = 1, device: str = tfl.CPU,
                 compiled: Optional[ModelEntry] = None):
        """``entry``'s embedder; ``compiled``, its EdgeTPU variant, runs in its place on ``device`` when given (the
        spec, and so the gallery's identity, stay the CPU model's: the variant computes the same int8 graph)."""
        self.spec = EmbedderSpec.from_entry(entry)
        if compiled is not None and compiled.edgetpu_of != entry.key:
            raise ManifestError(f"model '{compiled.key}' is not an EdgeTPU variant of '{entry.key}'")
        model = (compiled or entry).read_verified()
        self._interpreter = tfl.make_interpreter(model, num_threads=num_threads,
                                                 device=device if compiled is not None else tfl.CPU)
        self._interpreter.allocate_tensors()
        self._input = tfl.input_specs(self._interpreter)[0]
        self._output = tfl.output_specs(self._interpreter)[0]
        expected = (1, self.spec.size[1], self.spec.size[0], 3)
        if self._input.shape != expected:
            raise ManifestError(f"model '{entry.key}' input is {self._input.shape}, the manifest says {expected}")
        if self._output.shape[-1] != self.spec.dim:
            raise ManifestError(f"model '{entry.key}' outputs {self._output.shape[-1]} values, "
                                f"the manifest says embedding.dim = {self.spec.dim}")
        self._lut = tfl.pixel_lut(self._input, self.spec.mean, self.spec.std)

    @classmethod
    def from_manifest(cls, key: str, manifest: Optional[Manifest] = None, **kwargs) -> Embedder:
        return cls((manifest or Manifest.load()).entry(key), **kwargs)

    @classmethod
    def placed(cls, entry: ModelEntry, placement: Placement, *, num_threads: int = 1) -> Embedder:
        """``entry``'s embedder where ``placement`` puts it: its EdgeTPU variant, else the CPU model."""
        variants = placement.variants_of(entry.key)
        if len(variants) > 1:
            raise ManifestError(f"'{entry.key}' has {len(variants)} EdgeTPU variants "
                                f"({', '.join(v.key for v in variants)}); an embedder takes one (batch 1)")
        return cls(entry, num_threads=num_threads, device=placement.device, compiled=variants[0] if variants else None)

    @property
    def key(self) -> str:
        return self.spec.key

    def align(self, image: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
        """RGB image + one face's (5, 2) landmarks → the model's aligned chip (h, w, 3) uint8, RGB."""
        return align_face(image, landmarks, self.spec.template, self.spec.size)

    def embed_chips(self, chips: np.ndarray) -> np.ndarray:
        """Aligned RGB uint8 chips (N, h, w, 3) → (N, dim) L2-normalised float32."""
        chips = np.asarray(chips)
        out = np.zeros((len(chips), self.spec.dim), dtype=np.float32)
        for i, chip in enumerate(chips):
            pixels = chip[..., ::-1] if self.spec.channels == "BGR" else chip
            self._interpreter.set_tensor(self._input.index, self._lut[pixels][None])
            self._interpreter.invoke()
            out[i] = tfl.get_output(self._interpreter, self._output).reshape(-1)
        return l2_normalise(out)

    def __call__(self, image: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
        landmarks = np.asarray(landmarks, dtype=np.float64).reshape(-1, 5, 2)
        if len(landmarks) == 0:
            return np.zeros((0, self.spec.dim), dtype=np.float32)
        return self.embed_chips(np.stack([self.align(image, marks) for marks in landmarks]))


def distance(a: np.ndarray, b: np.ndarray, metric: str = "cosine") -> np.ndarray:
    """Pairwise distances between unit vectors (N, d) and (M, d): cosine distance 1 - a·b, or euclidean."""
    a, b = np.atleast_2d(a), np.atleast_2d(b)
    if metric == "cosine":
        return 1.0 - a @ b.T
    if metric == "euclidean":
        sq = np.sum(a**2, axis=1)[:, None] + np.sum(b**2, axis=1)[None] - 2.0 * a @ b.T
        return np.sqrt(np.clip(sq, 0.0, None))
    raise ValueError(f"unknown metric {metric!r}: use 'cosine' or 'euclidean'")
