"""Packaging checks: the on-device runtime (edge/) never pulls in TensorFlow, Keras, the converters or the research
code, and the converters never import the research code (the product rebuilds its models without it)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
EDGE = REPO / "edge"
# package → the top-level modules none of its files may import
FORBIDDEN_IMPORTS = {
    "edge": {"converters", "research", "bench", "tensorflow", "keras"},
    "converters": {"research", "bench"},
}
RUNTIME_DEPS = {"numpy", "opencv-python-headless", "pyyaml", "paho-mqtt", "ai-edge-litert"}


def edge_modules() -> list[str]:
    names = []
    for path in sorted(EDGE.rglob("*.py")):
        parts = list(path.relative_to(REPO).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names.append(".".join(parts))
    return names


def test_edge_imports_without_tensorflow() -> None:
    modules = edge_modules()
    assert "edge" in modules
    code = (
        "import importlib, json, sys\n"
        f"mods = {modules!r}\n"
        "for m in mods:\n"
        "    importlib.import_module(m)\n"
        "assert 'tensorflow' not in sys.modules, 'tensorflow was imported'\n"
        "assert 'keras' not in sys.modules, 'keras was imported'\n"
        "print(json.dumps(mods))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300, check=False
    )
    assert proc.returncode == 0, proc.stderr
    imported = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(imported) > 0
    assert imported == modules


def _imported_top_levels(tree: ast.AST) -> set[str]:
    tops = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            tops.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            tops.add(node.module.split(".")[0])
    return tops


@pytest.mark.parametrize("package", sorted(FORBIDDEN_IMPORTS))
def test_packages_import_only_downstream(package) -> None:
    offenders = []
    files = sorted((REPO / package).rglob("*.py"))
    assert files, package
    for path in files:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        bad = _imported_top_levels(tree) & FORBIDDEN_IMPORTS[package]
        if bad:
            offenders.append(f"{path.relative_to(REPO)}: {sorted(bad)}")
    assert not offenders, f"{package}/ must not import {sorted(FORBIDDEN_IMPORTS[package])}:\n" + "\n".join(offenders)


def _setup_keyword(name: str) -> ast.expr:
    tree = ast.parse((REPO / "setup.py").read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "setup":
            for kw in node.keywords:
                if kw.arg == name:
                    return kw.value
    raise AssertionError(f"setup() has no {name}= keyword")


def _requirement_name(req: str) -> str:
    name = req.split(";")[0]
    for sep in "<>=!~[ ":
        name = name.split(sep)[0]
    return name.strip().lower()


def test_install_requires_are_runtime_only() -> None:
    requires = ast.literal_eval(_setup_keyword("install_requires"))
    assert all(isinstance(r, str) for r in requires)
    assert not [r for r in requires if "tensorflow" in r.lower() or "keras" in r.lower()], requires
    missing = RUNTIME_DEPS - {_requirement_name(r) for r in requires}
    assert not missing, f"missing runtime deps {sorted(missing)} in {requires}"
    litert = next(r for r in requires if _requirement_name(r) == "ai-edge-litert")
    assert 'platform_machine != "armv7l"' in litert


def test_shell_scripts_parse() -> None:
    for script in ("install.sh", ".ci/run"):
        path = REPO / script
        assert path.is_file(), script
        proc = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True, check=False)
        assert proc.returncode == 0, f"{script}: {proc.stderr}"
