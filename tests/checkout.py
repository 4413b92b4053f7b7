"""A copy of the checkout as a clean clone would have it, and an environment that does not lean on this one."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from conftest import REPO_ROOT


def checkout_copy(target: Path) -> Path:
    """The files a clean clone of this tree would have (tracked, plus new files git does not ignore)."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO_ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = REPO_ROOT / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    return target


def clean_env(home: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "DOORFACE_MODELS", "VIRTUAL_ENV")}
    return {**env, "DOORFACE_HOME": str(home), "PYTHONNOUSERSITE": "1"}
