"""Shared fixtures. Real data comes from ../shared (override with DOORFACE_SHARED)."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


# What the converters' extra brings that a runtime-only install (a Pi) lacks: the tests that need it carry the
# `convert` marker and skip there, saying so, instead of failing.
CONVERT_EXTRA_MODULES = ("tensorflow", "matplotlib")


def missing_convert_extra() -> list[str]:
    return [name for name in CONVERT_EXTRA_MODULES if importlib.util.find_spec(name) is None]


def pytest_collection_modifyitems(config, items) -> None:
    missing = missing_convert_extra()
    if not missing:
        return
    skip = pytest.mark.skip(reason=f"needs the convert extra (pip install '.[convert]'): no {', '.join(missing)}")
    for item in items:
        if item.get_closest_marker("convert"):
            item.add_marker(skip)


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
