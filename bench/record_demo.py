"""Run `doorface demo` and write what it printed to bench/results/demo.md, for the README.

    python -m bench.record_demo
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    result = subprocess.run([sys.executable, "-m", "edge.cli", "demo"], capture_output=True, text=True, cwd=ROOT,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}, timeout=600, check=True)
    events = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    notes = [line for line in result.stderr.splitlines() if not line.startswith("INFO:")]
    body = ["```console", "$ .venv/bin/doorface demo", *notes[:-1], *(json.dumps(e) for e in events), notes[-1],
            "```"]
    out = ROOT / "bench" / "results" / "demo.md"
    out.write_text("\n".join(body) + "\n", encoding="utf-8")
    print(out.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
