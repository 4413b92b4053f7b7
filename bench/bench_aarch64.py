"""How long the emulated aarch64 tier (tests/test_aarch64.py, .ci/aarch64.sh) takes in CI: cold (empty cache: the
Debian root, the aarch64 wheels and their venvs built first) and cached (the same cache again).

    python -m bench.bench_aarch64 [--out bench/results/aarch64.json]

Runs the test file twice through pytest, as `.ci/run` does, in a fresh cache folder (pip's own HTTP cache is
off on the cold run, as on a fresh CI machine). Needs what the test needs: root, debootstrap, qemu-user-static,
the network and ../shared. The figures depend on the machine and its load, which are recorded beside them.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.machine import machine_info

ROOT = Path(__file__).resolve().parent.parent
TEST = "tests/test_aarch64.py"
OUT = ROOT / "bench" / "results" / "aarch64.json"
SUMMARY = re.compile(r"(\d+) passed")


def run_tier(cache: Path, *, cold: bool) -> dict:
    env = {**os.environ, "DOORFACE_AARCH64_CACHE": str(cache / "aarch64")}
    if cold:
        env["PIP_NO_CACHE_DIR"] = "1"
    start = time.perf_counter()
    # A base temp of its own: other pytest sessions of this user prune the shared one's old runs.
    result = subprocess.run([sys.executable, "-m", "pytest", "-m", "slow", "-q", "-p", "no:cacheprovider",
                             f"--basetemp={cache / 'pytest'}", TEST],
                            cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"{TEST} failed ({'cold' if cold else 'cached'} run):\n{result.stdout[-4000:]}")
    found = SUMMARY.findall(result.stdout)
    return {"seconds": round(seconds, 1), "passed": int(found[-1]) if found else 0,
            "load_average_1min_after": round(os.getloadavg()[0], 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT, help=f"result file (default: {OUT.relative_to(ROOT)})")
    args = parser.parse_args(argv)
    runs = {}
    with tempfile.TemporaryDirectory(prefix="doorface-aarch64-") as cache:
        for step, (name, cold) in enumerate((("cold", True), ("cached", False)), 1):
            print(f"[{step}/2] {TEST}, {'an empty' if cold else 'the same'} cache …", file=sys.stderr, flush=True)
            runs[name] = run_tier(Path(cache), cold=cold)
            print(f"[{step}/2] {name}: {runs[name]['seconds']:.0f} s, {runs[name]['passed']} passed", file=sys.stderr)
    result = {
        "test": TEST,
        "emulated": "Debian Bookworm arm64 root, Python 3.11, qemu-user -cpu cortex-a72 (a Pi 4's core)",
        "runs": runs,
        "machine": machine_info(),
        "command": "python -m bench.bench_aarch64",
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
