"""Shared fixtures. Real data comes from ../shared (override with DOORFACE_SHARED)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


def shared_root() -> Path:
    return Path(os.environ.get("DOORFACE_SHARED", REPO_ROOT.parent / "shared")).resolve()


@pytest.fixture(scope="session")
def shared() -> Path:
    root = shared_root()
    if not (root / "data").is_dir():
        pytest.skip(f"shared data not found at {root} (set DOORFACE_SHARED)")
    return root


@pytest.fixture(scope="session")
def shared_data(shared: Path) -> Path:
    return shared / "data"
