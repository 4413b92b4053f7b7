"""Where each model runs: its EdgeTPU variants (``*_edgetpu.tflite``) when the configured EdgeTPU's delegate
loads, else the CPU int8 model.

The decision is made once, before any interpreter is built, and said in one log line: a stage whose variants exist
runs on the EdgeTPU, any other on the CPU. When the delegate does not load (no Coral runtime, no accelerator
plugged in) or the manifest has no compiled model at all, everything runs on the CPU, and the line says why and what
to do. A compiled model never runs without its delegate (its EdgeTPU op has no CPU kernel), so it is never picked
then. ``doorface doctor`` reports the same :class:`Placement`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Sequence

from edge import interpreter as tfl
from edge.manifest import Manifest, ModelEntry

log = logging.getLogger(__name__)

COMPILE_HINT = "compile them with `doorface-convert edgetpu --device-config <your config>` (needs edgetpu_compiler)"
RUNTIME_HINT = "install the Coral runtime (`./install.sh --coral`) and plug the accelerator in"


@dataclass(frozen=True)
class Placement:
    """Which models run on the EdgeTPU and why (from :func:`place_models`)."""

    requested: str
    """The configured device (``detector.device``)."""
    device: str
    """The device the EdgeTPU variants run on, or ``cpu`` when none does."""
    reason: str
    """One sentence: which path was taken and why."""
    variants: dict[str, tuple[ModelEntry, ...]] = field(default_factory=dict)
    """CPU model key → the EdgeTPU variants used in its place; keys not here run their CPU model."""
    fix: str = ""
    """What to do when the configured EdgeTPU is not (fully) used; empty otherwise."""

    @property
    def on_edgetpu(self) -> bool:
        return bool(self.variants)

    @property
    def fell_back(self) -> bool:
        """An EdgeTPU was configured, yet every model runs on the CPU."""
        return self.requested != tfl.CPU and self.device == tfl.CPU

    def variants_of(self, key: str) -> tuple[ModelEntry, ...]:
        return self.variants.get(key, ())


def _describe(key: str, variants: Sequence[ModelEntry]) -> str:
    return f"{key} ({len(variants)} input shapes)" if len(variants) > 1 else key


def place_models(manifest: Manifest, device: str, keys: Sequence[str]) -> Placement:
    """Where the CPU models ``keys`` (e.g. pnet, rnet, onet and the embedder) run with ``device`` configured.

    Logs the decision once: INFO when every model runs where configured, WARNING on a fallback to the CPU.
    Raises ValueError for a device string that is neither ``cpu`` nor an EdgeTPU's.
    """
    if tfl.parse_device(device) is None:
        return Placement(tfl.CPU, tfl.CPU, "the CPU int8 models (no accelerator configured)")
    try:
        tfl.load_delegate(device)
    except tfl.DelegateUnavailable as exc:
        placement = Placement(device, tfl.CPU, f"{device} configured, but its delegate did not load ({exc}): the CPU "
                                               "int8 models run instead", fix=RUNTIME_HINT)
        log.warning("EdgeTPU: %s. To use it: %s.", placement.reason, placement.fix)
        return placement
    variants = {key: found for key in keys if (found := manifest.edgetpu_variants(key))}
    missing = [key for key in keys if key not in variants]
    if not variants:
        placement = Placement(device, tfl.CPU, f"{device} delegate loaded, but {manifest.path} lists no "
                                               f"*_edgetpu.tflite model for {', '.join(keys)}: the CPU int8 models "
                                               "run instead", fix=COMPILE_HINT)
        log.warning("EdgeTPU: %s. To use it: %s.", placement.reason, placement.fix)
        return placement
    used = ", ".join(_describe(key, found) for key, found in variants.items())
    reason = f"{device} delegate loaded: {used} on the EdgeTPU (*_edgetpu.tflite)"
    if missing:
        reason += f"; {', '.join(missing)} on the CPU (no compiled model in the manifest)"
    placement = Placement(device, device, reason, variants, fix=COMPILE_HINT if missing else "")
    (log.warning if missing else log.info)("EdgeTPU: %s.", placement.reason)
    return placement
