"""What a benchmark ran on, recorded beside its figures: CPU, interpreter and library versions."""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

import cv2
import numpy as np

from edge import interpreter as tfl


def machine_info() -> dict:
    model_name = ""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("model name"):
                model_name = line.split(":", 1)[1].strip()
                break
    be = tfl.backend()
    backend_module = sys.modules.get(be.name)
    return {
        "processor": platform.processor(),
        "cpu_model": model_name,
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "opencv": cv2.__version__,
        "backend": be.name,
        "backend_version": getattr(backend_module, "__version__", None),
    }
