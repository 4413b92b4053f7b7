"""Where the bundled folders are: the shipped models, the device configs and the demo.

A wheel carries them inside the package, as ``edge/_bundled/<name>/`` (setup.py copies them in at build time); a
source checkout or an editable install finds them at the repository root, beside ``edge/``. Both are looked up at
call time, so importing ``edge`` never touches the disk.
"""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
BUNDLED_DIR_NAME = "_bundled"
BUNDLED = ("quantized_models", "device_configs", "demo")


class ResourceError(FileNotFoundError):
    """A bundled folder is in neither the installed package nor a source checkout."""


def bundled_dir(name: str) -> Path:
    """The folder ``name`` (one of :data:`BUNDLED`) of this installation."""
    if name not in BUNDLED:
        raise ValueError(f"no bundled folder {name!r} (bundled: {', '.join(BUNDLED)})")
    places = (PACKAGE_DIR / BUNDLED_DIR_NAME / name, PACKAGE_DIR.parent / name)
    for place in places:
        if place.is_dir():
            return place
    raise ResourceError(f"doorface's bundled {name}/ folder is missing (looked in {places[0]} and {places[1]}): "
                        "reinstall doorface (pip install --force-reinstall doorface), or run from a full source "
                        "checkout")
