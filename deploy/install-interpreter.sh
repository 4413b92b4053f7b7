#!/usr/bin/env bash
# Install the TFLite interpreter whose wheel exists for this Python, CPU and numpy: ai-edge-litert, else
# tflite-runtime (whose last wheels, for Python <= 3.11, need numpy < 2).
#
# Usage: deploy/install-interpreter.sh PIP_INSTALL...
#   PIP_INSTALL is the whole pip install command, with its options, e.g. `.venv/bin/python -m pip install -c
#   constraints.txt` (install.sh holds every install to apt's numpy that way on Raspberry Pi OS).
# The last line on stdout is "interpreter: NAME". Exits 1, saying what to try, when neither installs.
#
# install.sh runs it on Raspberry Pi OS; tests/test_aarch64.py runs it with the pip of an emulated aarch64 Raspberry
# Pi OS-like root, and with `pip install --dry-run --platform ... --python-version ...` for other Pythons.
set -euo pipefail

if [ $# -eq 0 ]; then
    sed -n '5,8p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
fi

if "$@" "ai-edge-litert>=1.2"; then
    echo "interpreter: ai-edge-litert"
    exit 0
fi
echo "install-interpreter: ai-edge-litert has no wheel that installs here; trying tflite-runtime (numpy < 2)" >&2
if "$@" tflite-runtime "numpy<2"; then
    echo "interpreter: tflite-runtime"
    exit 0
fi
echo "install-interpreter: neither ai-edge-litert nor tflite-runtime has a wheel that installs here" >&2
echo "  (ai-edge-litert: Python 3.10-3.14 on aarch64/x86-64; tflite-runtime: Python <= 3.11 with numpy < 2)." >&2
echo "  Try: pip install ai-edge-litert   or, on Python <= 3.11: pip install tflite-runtime 'numpy<2'" >&2
exit 1
