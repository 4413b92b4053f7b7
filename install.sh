#!/usr/bin/env bash
# Install doorface into ./.venv. Idempotent and non-interactive; safe to run again.
#
# Usage: ./install.sh [--dev] [--help]
#   --dev   also install the converters (TensorFlow), test tools and mosquitto (MQTT broker for tests)
set -euo pipefail

export DEBIAN_FRONTEND=noninteractive

usage() {
    sed -n '2,5p' "$0" | sed 's/^# \{0,1\}//'
}

DEV=0
for arg in "$@"; do
    case "$arg" in
        --dev) DEV=1 ;;
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

# Python 3 and its venv module.
if ! command -v python3 >/dev/null 2>&1; then
    apt_install python3
fi
if ! python3 -m venv --help >/dev/null 2>&1; then
    apt_install python3-venv
fi

VENV_ARGS=()
if is_raspberry_pi_os; then
    log "Raspberry Pi OS detected: using apt's picamera2 through --system-site-packages"
    apt_install python3-picamera2 python3-venv
    VENV_ARGS+=(--system-site-packages)
fi

if [ ! -x .venv/bin/python ]; then
    log "creating .venv"
    python3 -m venv "${VENV_ARGS[@]+"${VENV_ARGS[@]}"}" .venv
else
    log ".venv exists; reusing it"
fi

PY=.venv/bin/python
"$PY" -m pip install --quiet --upgrade pip

if [ "$DEV" -eq 1 ]; then
    apt_install mosquitto
    log "pip install -e .[dev]"
    "$PY" -m pip install --quiet -e ".[dev]"
else
    log "pip install -e ."
    "$PY" -m pip install --quiet -e .
fi

echo
echo "doorface is installed in .venv. Next:"
echo "  .venv/bin/doorface --help"
if [ "$DEV" -eq 1 ]; then
    echo "  .venv/bin/python -m pytest          # fast tests"
    echo "  .venv/bin/python -m pytest -m slow  # slow tests on the real models and data"
fi
