#!/usr/bin/env bash
# Install doorface into ./.venv. Idempotent and non-interactive; safe to run again.
#
# Usage: ./install.sh [--dev] [--pi-os] [--help]
#   --dev     also install the converters (TensorFlow), test tools, mosquitto (MQTT broker for tests) and
#             chromium + chromium-driver (the review page's browser test)
#   --pi-os   take the Raspberry Pi OS path (apt's numpy, OpenCV and picamera2) on another Debian, e.g. to test it
set -euo pipefail

export DEBIAN_FRONTEND=noninteractive

usage() {
    sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//'
}

DEV=0
FORCE_PI_OS=0
for arg in "$@"; do
    case "$arg" in
        --dev) DEV=1 ;;
        --pi-os) FORCE_PI_OS=1 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "install.sh: unknown option: $arg" >&2; usage >&2; exit 2 ;;
    esac
done

cd "$(dirname "${BASH_SOURCE[0]}")"

log() { printf '==> %s\n' "$*"; }

is_raspberry_pi_os() {
    if [ -r /etc/os-release ] && grep -qE '^ID="?raspbian"?$' /etc/os-release; then
        return 0
    fi
    if [ -r /proc/device-tree/model ] && tr -d '\0' </proc/device-tree/model | grep -q "Raspberry Pi"; then
        return 0
    fi
    return 1
}

APT_UPDATED=0

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        echo "install.sh: need root or sudo to run: $*" >&2
        exit 1
    fi
}

# apt_install pkg...: install only the packages that are not installed yet; apt-get update at most once.
apt_install() {
    local missing=() pkg
    for pkg in "$@"; do
        if ! dpkg -s "$pkg" 2>/dev/null | grep -q '^Status: install ok installed'; then
            missing+=("$pkg")
        fi
    done
    if [ "${#missing[@]}" -eq 0 ]; then
        return 0
    fi
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "install.sh: apt-get not found; please install: ${missing[*]}" >&2
        exit 1
    fi
    if [ "$APT_UPDATED" -eq 0 ]; then
        log "apt-get update"
        as_root apt-get update -qq
        APT_UPDATED=1
    fi
    log "apt-get install ${missing[*]}"
    as_root apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

PI_OS=0
if [ "$FORCE_PI_OS" -eq 1 ] || is_raspberry_pi_os; then
    PI_OS=1
fi

# Python 3 and its venv module. On Raspberry Pi OS it must be the system's: apt's packages are built for it.
PYTHON=python3
if [ "$PI_OS" -eq 1 ]; then
    PYTHON=/usr/bin/python3
fi
if ! command -v "$PYTHON" >/dev/null 2>&1; then
    apt_install python3
fi
if ! "$PYTHON" -m venv --help >/dev/null 2>&1; then
    apt_install python3-venv
fi

VENV_ARGS=()
if [ "$PI_OS" -eq 1 ]; then
    # picamera2 comes from apt and is built against apt's numpy; OpenCV from apt too, so that pip never pulls a
    # numpy >= 2 wheel over it ("numpy.dtype size changed" at the first frame).
    log "Raspberry Pi OS: using apt's numpy, OpenCV and picamera2 through --system-site-packages"
    apt_install python3-numpy python3-opencv python3-venv
    if apt-cache show python3-picamera2 >/dev/null 2>&1; then
        apt_install python3-picamera2
    else
        log "python3-picamera2 is not in this system's apt sources (not Raspberry Pi OS?): no Pi camera source"
    fi
    VENV_ARGS+=(--system-site-packages)
fi

if [ -x .venv/bin/python ] && [ "$PI_OS" -eq 1 ] && ! grep -qiE '^include-system-site-packages *= *true' .venv/pyvenv.cfg; then
    log ".venv was made without --system-site-packages (apt's picamera2 would not be found): recreating it"
    rm -rf .venv
fi
if [ ! -x .venv/bin/python ]; then
    log "creating .venv"
    "$PYTHON" -m venv "${VENV_ARGS[@]+"${VENV_ARGS[@]}"}" .venv
else
    log ".venv exists; reusing it"
fi

PY=.venv/bin/python
"$PY" -m pip install --quiet --upgrade pip

EXTRA=""
if [ "$DEV" -eq 1 ]; then
    apt_install mosquitto
    # The review page's test drives Debian's headless Chromium through its driver (Selenium, from the dev extra).
    apt_install chromium chromium-driver
    EXTRA="[dev]"
fi

if [ "$PI_OS" -eq 1 ]; then
    # Keep apt's numpy: every pip install below is constrained to it, and OpenCV is apt's (no wheel on top).
    NUMPY_VERSION=$("$PY" -c 'import numpy; print(numpy.__version__)')
    CONSTRAINTS=.venv/doorface-constraints.txt
    printf 'numpy==%s\n' "$NUMPY_VERSION" > "$CONSTRAINTS"
    log "pip install -e .$EXTRA with apt's numpy $NUMPY_VERSION and OpenCV"
    # pip cannot see that apt's python3-opencv is the opencv-python-headless doorface asks for: no conflict warnings.
    PIP_PI=("$PY" -m pip install --quiet --no-warn-conflicts -c "$CONSTRAINTS")
    "${PIP_PI[@]}" --no-deps -e ".$EXTRA"
    "${PIP_PI[@]}" "pyyaml>=6.0" "paho-mqtt>=2.0"
    if [ "$DEV" -eq 1 ]; then
        "${PIP_PI[@]}" "pytest>=7.4" "ruff>=0.5" "selenium>=4.10"
    fi
    # The interpreter that works with this numpy: ai-edge-litert where its wheel accepts it, else tflite-runtime
    # (which needs numpy < 2, as Bookworm's is).
    if "${PIP_PI[@]}" "ai-edge-litert>=1.2"; then
        log "interpreter: ai-edge-litert"
    elif "${PIP_PI[@]}" tflite-runtime; then
        log "interpreter: tflite-runtime (ai-edge-litert has no wheel for numpy $NUMPY_VERSION here)"
    else
        echo "install.sh: no TFLite interpreter wheel works with numpy $NUMPY_VERSION on this system;" >&2
        echo "  try: $PY -m pip install ai-edge-litert   (or tflite-runtime with numpy<2)" >&2
        exit 1
    fi
else
    log "pip install -e .$EXTRA"
    "$PY" -m pip install --quiet -e ".$EXTRA"
fi

# One real inference per model: an interpreter built for another numpy fails here, not at the first visitor.
log "checking that every model runs (doorface doctor)"
CHECKS=$(.venv/bin/doorface doctor --no-camera 2>&1 || true)  # no gallery or broker yet is fine here
if ! printf '%s\n' "$CHECKS" | grep -E '^\[(ok|FAIL)\] (interpreter|model|inference)'; then
    printf '%s\n' "$CHECKS" >&2
    echo "install.sh: doorface doctor could not run; see the lines above" >&2
    exit 1
fi
if printf '%s\n' "$CHECKS" | grep -qE '^\[FAIL\] (interpreter|model|inference)'; then
    printf '%s\n' "$CHECKS" | grep -A1 -E '^\[FAIL\]' >&2
    echo "install.sh: the models do not run on this install; the [FAIL] lines above say what to fix" >&2
    exit 1
fi

echo
echo "doorface is installed in .venv. Next:"
echo "  .venv/bin/doorface --help"
if [ "$DEV" -eq 1 ]; then
    echo "  .venv/bin/python -m pytest          # fast tests"
    echo "  .venv/bin/python -m pytest -m slow  # slow tests on the real models and data"
fi
