"""Packaging for doorface.

The runtime (``edge``) never depends on TensorFlow: it runs on a Raspberry Pi / Coral with the LiteRT interpreter.
The model converters (``converters``) need TensorFlow and are an optional extra: ``pip install -e ".[convert]"``.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent


def read_version() -> str:
    text = (HERE / "edge" / "__init__.py").read_text(encoding="utf-8")
    match = re.search(r"""^__version__\s*=\s*["']([^"']+)["']""", text, re.MULTILINE)
    if not match:
        raise RuntimeError("__version__ not found in edge/__init__.py")
    return match.group(1)


def read_long_description() -> str:
    try:
        return (HERE / "README.md").read_text(encoding="utf-8")
    except OSError:
        return ""


# The folders a runtime-only install needs beside the code; edge/resources.py finds them here or in a checkout.
BUNDLED = ("quantized_models", "device_configs", "demo")
BUNDLED_DIR_NAME = "_bundled"


class BuildPyWithBundled(build_py):
    """Copies the models, device configs and demo into the built package (``edge/_bundled/``), so that a wheel works
    outside the repository. An editable install reads them from the checkout instead (nothing is copied)."""

    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return
        target = Path(self.build_lib) / "edge" / BUNDLED_DIR_NAME
        for name in BUNDLED:
            source = HERE / name
            if not source.is_dir():
                raise RuntimeError(f"cannot build doorface: {source} is missing (build from a full checkout)")
            shutil.rmtree(target / name, ignore_errors=True)
            shutil.copytree(source, target / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


CONVERT_EXTRAS = ["tensorflow-cpu==2.21.*", "joblib>=1.3", "lz4>=4.0", "tqdm>=4.60", "matplotlib>=3.7"]
# selenium drives the system's chromium (apt: chromium, chromium-driver) in the review page's test; never at run time.
TEST_EXTRAS = ["pytest>=7.4", "ruff>=0.5", "selenium>=4.10"]

setup(
    name="doorface",
    version=read_version(),
    description="Edge face recognition for Raspberry Pi / Coral door cameras",
    long_description=read_long_description(),
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    packages=find_packages(include=["edge", "edge.*", "converters", "converters.*"]),
    # The review page (doorface serve) is served from the package: no CDN, nothing fetched at run time.
    package_data={"edge.review": ["static/*"]},
    # Runtime dependencies only: never TensorFlow here (it lives in the "convert" extra).
    # ai-edge-litert has no armv7l wheel, so it is skipped there. tflite-runtime (which needs numpy<2) is also
    # supported at run time as the interpreter when a user installs it themselves.
    install_requires=[
        "numpy>=1.23",
        "opencv-python-headless>=4.8",
        "pyyaml>=6.0",
        "paho-mqtt>=2.0",
        'ai-edge-litert>=1.2; platform_machine != "armv7l"',
    ],
    extras_require={
        "convert": CONVERT_EXTRAS,
        "test": TEST_EXTRAS,
        "dev": CONVERT_EXTRAS + TEST_EXTRAS,
    },
    cmdclass={"build_py": BuildPyWithBundled},
    entry_points={
        "console_scripts": [
            "doorface=edge.cli:main",
            "doorface-convert=converters.cli:main",
        ],
    },
)
