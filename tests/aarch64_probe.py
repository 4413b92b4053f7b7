"""Run every shipped int8 model on given inputs and keep the raw int8 outputs: the same code on x86 and, inside the
emulated aarch64 root, as a script (``python aarch64_probe.py INPUTS.npz OUTPUTS.npz``).

Inputs are uint8 RGB pixels keyed by manifest key (``pnet``: one image, any size; the others: a batch of the
model's input size). Outputs are keyed ``<key>/<output index>``, one row per input, still quantized, so that a
difference is counted in the tensor's own steps (LSB) and not hidden by a dequantization; ``backend`` names the
interpreter package that ran them.

Only numpy, the interpreter and ``edge``'s manifest and interpreter modules are imported: it runs in a venv that
has nothing else (the x86 tflite-runtime reference).
"""

from __future__ import annotations

import sys

import numpy as np

from edge import interpreter as tfl
from edge.manifest import Manifest


def int8_keys(manifest: Manifest) -> list[str]:
    """Every shipped model the device runs: the int8 ones (the float ones are the converters' references)."""
    return sorted(key for key, entry in manifest.models.items() if entry.input.dtype == "int8")


def run_model(manifest: Manifest, key: str, pixels: np.ndarray) -> dict[str, np.ndarray]:
    """Raw outputs of model ``key`` for each input of the batch ``pixels`` (N, h, w, 3) uint8."""
    entry = manifest.entry(key)
    interp = tfl.make_interpreter(entry.read_verified(), num_threads=1)
    spec = tfl.input_specs(interp)[0]
    shape = (1, *pixels.shape[1:])
    if spec.shape != shape:
        interp.resize_tensor_input(spec.index, list(shape), strict=False)
    interp.allocate_tensors()
    spec = tfl.input_specs(interp)[0]
    lut = tfl.pixel_lut(spec, entry.input.mean, entry.input.std)
    pixels = pixels[..., ::-1] if entry.input.channels.upper() == "BGR" else pixels
    outputs = tfl.output_specs(interp)
    rows: dict[str, list[np.ndarray]] = {f"{key}/{i}": [] for i in range(len(outputs))}
    for one in pixels:
        interp.set_tensor(spec.index, lut[one][None])
        interp.invoke()
        for i, out in enumerate(outputs):
            rows[f"{key}/{i}"].append(interp.get_tensor(out.index)[0].copy())
    return {name: np.stack(values) for name, values in rows.items()}


def run_all(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    manifest = Manifest.load()
    results: dict[str, np.ndarray] = {"backend": np.array(tfl.backend().name)}
    for key in int8_keys(manifest):
        results.update(run_model(manifest, key, inputs[key]))
    return results


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: aarch64_probe.py INPUTS.npz OUTPUTS.npz", file=sys.stderr)
        return 2
    with np.load(argv[0]) as data:
        inputs = {key: data[key] for key in data.files}
    np.savez(argv[1], **run_all(inputs))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
