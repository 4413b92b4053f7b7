#!/usr/bin/env bash
# Install doorface into ./.venv. Idempotent and non-interactive; safe to run again.
#
# Usage: ./install.sh [--dev] [--pi-os] [--coral] [--help]
#   --dev     also install the converters (TensorFlow), test tools, mosquitto (MQTT broker for tests),
#             chromium + chromium-driver (the review page's browser test) and debootstrap +
#             qemu-user-static (the emulated aarch64 tests, .ci/aarch64.sh)
#   --pi-os   take the Raspberry Pi OS path (apt's numpy, OpenCV and picamera2) on another Debian, e.g. to test it
#   --coral   also install the Coral EdgeTPU runtime (libedgetpu1-std from Coral's apt repository); when its
#             package is not in the apt sources, print the commands that add them
set -euo pipefail

export DEBIAN_FRONTEND=noninteractive

usage() {
    sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'
}

DEV=0
FORCE_PI_OS=0
CORAL=0
for arg in "$@"; do
    case "$arg" in
        --dev) DEV=1 ;;
        --pi-os) FORCE_PI_OS=1 ;;
        --coral) CORAL=1 ;;
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
    apt_install mosquitto debootstrap qemu-user-static
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
    # The interpreter whose wheel exists for this Python and apt's numpy: ai-edge-litert (Bookworm's 3.11,
    # Trixie's 3.13), else tflite-runtime (numpy < 2). tests/test_aarch64.py runs this choice on emulated aarch64.
    if ! CHOSEN=$(deploy/install-interpreter.sh "${PIP_PI[@]}"); then
        echo "install.sh: no TFLite interpreter wheel works with Python $("$PY" -c 'import platform; print(platform.python_version())') and numpy $NUMPY_VERSION here; see above" >&2
        exit 1
    fi
    log "${CHOSEN##*$'\n'} (numpy $NUMPY_VERSION)"
else
    log "pip install -e .$EXTRA"
    "$PY" -m pip install --quiet -e ".$EXTRA"
fi

# Coral's EdgeTPU runtime, from Coral's apt repository (https://coral.ai/docs/accelerator/get-started/).
CORAL_REPO="deb [signed-by=/usr/share/keyrings/coral-edgetpu.gpg] https://packages.cloud.google.com/apt coral-edgetpu-stable main"
coral_commands() {
    cat <<COMMANDS
  curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg | sudo gpg --dearmor -o /usr/share/keyrings/coral-edgetpu.gpg
  echo "$CORAL_REPO" | sudo tee /etc/apt/sources.list.d/coral-edgetpu.list
  sudo apt-get update && sudo apt-get install -y libedgetpu1-std
COMMANDS
}
CORAL_MISSING=0
if [ "$CORAL" -eq 1 ]; then
    if dpkg -s libedgetpu1-std 2>/dev/null | grep -q '^Status: install ok installed' \
        || dpkg -s libedgetpu1-max 2>/dev/null | grep -q '^Status: install ok installed'; then
        log "Coral runtime: already installed"
    elif apt-cache show libedgetpu1-std >/dev/null 2>&1; then
        apt_install libedgetpu1-std
    else
        CORAL_MISSING=1
    fi
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

if [ "$CORAL" -eq 1 ]; then
    CORAL_CHECK=$(.venv/bin/doorface doctor --device-config pi4-coral --no-camera 2>/dev/null | grep -A1 -E '^\[(ok|FAIL)\] accelerator' || true)
    printf '%s\n' "${CORAL_CHECK:-[FAIL] accelerator: doorface doctor did not report it}"
fi

echo
echo "doorface is installed in .venv. Next:"
echo "  .venv/bin/doorface --help"
if [ "$DEV" -eq 1 ]; then
    echo "  .venv/bin/python -m pytest          # fast tests"
    echo "  .venv/bin/python -m pytest -m slow  # slow tests on the real models and data"
fi
if [ "$CORAL_MISSING" -eq 1 ]; then
    echo
    echo "install.sh: --coral: libedgetpu1-std is not in this system's apt sources, so the Coral runtime is NOT"
    echo "installed (doorface runs on the CPU meanwhile). Add Coral's apt repository and install it:"
    coral_commands
    echo "then plug the accelerator in and check: .venv/bin/doorface doctor --device-config pi4-coral --no-camera"
fi
