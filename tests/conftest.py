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


@pytest.fixture(scope="session")
def door_video(tmp_path_factory, shared_data) -> Path:
    """A 640×480 door-camera clip composed from real LFW photos: person A, person B, then a stranger."""
    from door_scene import door_video

    return door_video(tmp_path_factory.mktemp("scene"), shared_data)


@pytest.fixture()
def cli_env(tmp_path) -> dict:
    """Environment for `doorface` subprocesses: a private DOORFACE_HOME (gallery, queue) per test."""
    return {**os.environ, "DOORFACE_HOME": str(tmp_path / "home"), "TF_CPP_MIN_LOG_LEVEL": "2"}
