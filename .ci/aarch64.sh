#!/usr/bin/env bash
# A Raspberry Pi OS-like aarch64 system on an x86 machine: a Debian Bookworm arm64 root (Python 3.11, as on
# Raspberry Pi OS Bookworm) run by qemu-user as a Pi 4's CPU, cached between runs.
#
# Usage: .ci/aarch64.sh COMMAND ...
#   root                         build the root (or reuse the cached one); print its path
#   env NAME REQUIREMENT...      a venv /opt/envs/NAME-<key> in the root holding the aarch64 wheels of the
#                                requirements (downloaded here, installed by the root's own pip); print its path
#                                in the root. <key> is the wheel set: a new release of any wheel gives a new venv.
#   install ENV WHEEL...         install local wheels (e.g. doorface's own) into the venv ENV, without their
#                                dependencies (the venv has them), replacing an earlier install
#   run [--bind SRC:DST[:ro]]... [--env K=V]... -- CMD...
#                                run the aarch64 command CMD in the root (DST: a path in the root)
#
# Needs root (debootstrap, chroot, mounts), debootstrap and qemu-user-static (install.sh --dev installs them) and
# the network for the first build. The cache is $DOORFACE_AARCH64_CACHE, else ~/.cache/doorface/aarch64.
#
# Why it is done this way:
# - qemu runs as `-cpu cortex-a72` (a Pi 4's core), also exported as QEMU_CPU: the default `max` model has
#   instructions a Pi 4 lacks (dot product, SVE) and int8 kernels chosen for them give other results.
# - ai-edge-litert reads /proc/cpuinfo to choose its kernels and crashes on the x86 one qemu passes through: a
#   Pi 4's (.ci/pi4-cpuinfo) is bound over it, and /sys/devices/system/cpu/{possible,present} say 0-3.
# - No binfmt_misc registration is needed (CI containers often cannot make one): every aarch64 program is
#   started by qemu explicitly, so debootstrap's second stage (which execs aarch64 tools) is replaced by
#   unpacking the downloaded packages, and a program that execs another aarch64 program cannot run here.
# - Mounts live in a private mount namespace (unshare): they vanish with the command, even when it is killed.
set -euo pipefail

SUITE=bookworm
MIRROR=${DOORFACE_DEBIAN_MIRROR:-http://deb.debian.org/debian}
# python3-venv: venv and Debian's pip wheel; python3-numpy: apt's numpy, which install.sh keeps on Raspberry Pi OS.
PACKAGES=python3,python3-venv,python3-numpy,ca-certificates
PYTHON_VERSION=3.11
GLIBC_MINOR=36  # Bookworm's glibc 2.36: the newest manylinux_2_NN wheel tag the root can load
CACHE=${DOORFACE_AARCH64_CACHE:-$HOME/.cache/doorface/aarch64}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CPUINFO=$HERE/pi4-cpuinfo
QEMU_CPU_MODEL=cortex-a72
QEMU=/usr/bin/qemu-aarch64-static
# The host's Python downloads the wheels (pip download --platform): the checkout's venv, else python3.
HOST_PYTHON=${DOORFACE_HOST_PYTHON:-$HERE/../.venv/bin/python}
[ -x "$HOST_PYTHON" ] || HOST_PYTHON=python3
GUEST_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'aarch64.sh: %s\n' "$*" >&2; exit 1; }

usage() { sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; }

require_tools() {
    [ "$(id -u)" -eq 0 ] || die "needs root (debootstrap, chroot and mounts); run it with sudo"
    local tool
    for tool in debootstrap dpkg-deb unshare chroot flock "$QEMU"; do
        command -v "$tool" >/dev/null 2>&1 || die "$tool not found: apt-get install debootstrap qemu-user-static"
    done
}

sha() { sha256sum | cut -c1-16; }

# Builds (of the root, of a venv) take the cache's lock: two CI jobs sharing a cache build once, not over each other.
lock_cache() {
    mkdir -p "$CACHE"
    exec 9>"$CACHE/.lock"
    flock 9
}

# The root's key: what goes into it. A change of suite, packages or recipe (build_root) builds a new one.
ROOT_RECIPE=3
root_key() {
    echo "$SUITE $PACKAGES $MIRROR $ROOT_RECIPE" | sha
}

root_dir() { echo "$CACHE/$SUITE-arm64-$(root_key)"; }

build_root() {
    local root partial deb
    root=$(root_dir)
    if [ -f "$root/.doorface-complete" ]; then
        echo "$root"
        return 0
    fi
    lock_cache
    if [ -f "$root/.doorface-complete" ]; then  # built by another run while this one waited
        flock -u 9
        echo "$root"
        return 0
    fi
    partial="$root.partial"
    rm -rf "$partial"
    log "debootstrap $SUITE arm64 ($PACKAGES) into $partial"
    debootstrap --foreign --variant=minbase --arch=arm64 --include="$PACKAGES" "$SUITE" "$partial" "$MIRROR" \
        >"$partial.log" 2>&1 || { tail -20 "$partial.log" >&2; die "debootstrap failed (log: $partial.log)"; }
    # The second stage would run dpkg inside the root (aarch64 programs execing each other): unpack instead.
    log "unpacking $(find "$partial/var/cache/apt/archives" -name '*.deb' | wc -l) packages"
    for deb in "$partial"/var/cache/apt/archives/*.deb; do
        dpkg-deb -x "$deb" "$partial"
    done
    # What maintainer scripts would have done and the runtime needs: BLAS/LAPACK alternatives for apt's numpy.
    local lib=$partial/usr/lib/aarch64-linux-gnu
    ln -sf blas/libblas.so.3 "$lib/libblas.so.3"
    ln -sf lapack/liblapack.so.3 "$lib/liblapack.so.3"
    # A Pi 4's CPU list where the CPU detection library of the interpreters reads it (no sysfs is mounted).
    mkdir -p "$partial/sys/devices/system/cpu"
    echo 0-3 >"$partial/sys/devices/system/cpu/possible"
    echo 0-3 >"$partial/sys/devices/system/cpu/present"
    rm -rf "$partial"/var/cache/apt/archives/*.deb "$partial/debootstrap"
    cp "$QEMU" "$partial/usr/bin/"
    # ca-certificates' maintainer script would have made the bundle pip and Python's ssl use: the host's is the same.
    mkdir -p "$partial/etc/ssl/certs"
    cp /etc/ssl/certs/ca-certificates.crt "$partial/etc/ssl/certs/ca-certificates.crt"
    touch "$partial/etc/resolv.conf"  # the host's is bound over it at each run
    mkdir -p "$partial/opt/envs" "$partial/opt/wheels"
    touch "$partial/.doorface-complete"
    rm -rf "$root" "$partial.log"
    mv "$partial" "$root"
    # Roots of older keys are dead weight (a few hundred MB each).
    find "$CACHE" -maxdepth 1 -name "$SUITE-arm64-*" ! -path "$root" -exec rm -rf {} +
    flock -u 9
    echo "$root"
}

# run_in ROOT [--bind SRC:DST[:ro]]... [--env K=V]... -- CMD...
run_in() {
    local root=$1
    shift
    local binds=() envs=()
    while [ $# -gt 0 ]; do
        case "$1" in
            --bind) binds+=("$2"); shift 2 ;;
            --env) envs+=("$2"); shift 2 ;;
            --) shift; break ;;
            *) die "run: unknown option $1 (put the command after --)" ;;
        esac
    done
    [ $# -gt 0 ] || die "run: no command given"
    local script='
        set -e
        root=$1; cpuinfo=$2; nbinds=$3; shift 3
        mount -t proc proc "$root/proc"
        mount --bind "$cpuinfo" "$root/proc/cpuinfo"
        mount --bind /dev "$root/dev"
        mount --bind /etc/resolv.conf "$root/etc/resolv.conf"
        i=0
        while [ "$i" -lt "$nbinds" ]; do
            spec=$1; shift; i=$((i + 1))
            src=${spec%%:*}; rest=${spec#*:}; dst=${rest%%:*}; mode=${rest#"$dst"}
            if [ -d "$src" ]; then mkdir -p "$root$dst"; else mkdir -p "$(dirname "$root$dst")"; touch "$root$dst"; fi
            mount --bind "$src" "$root$dst"
            if [ "$mode" = ":ro" ]; then mount -o remount,bind,ro "$root$dst"; fi
        done
        exec "$@"'
    local env_args=(env -i "HOME=/root" "PATH=$GUEST_PATH" "LANG=C.UTF-8" "QEMU_CPU=$QEMU_CPU_MODEL"
                    "${envs[@]+"${envs[@]}"}")
    unshare --mount --propagation private sh -c "$script" aarch64-run "$root" "$CPUINFO" "${#binds[@]}" \
        "${binds[@]+"${binds[@]}"}" "${env_args[@]}" chroot "$root" "$QEMU" -cpu "$QEMU_CPU_MODEL" "$@"
}

# The platform tags pip on the root would accept, for `pip download --platform`.
platform_args() {
    local minor
    for minor in $(seq "$GLIBC_MINOR" -1 17); do
        printf -- '--platform\nmanylinux_2_%s_aarch64\n' "$minor"
    done
    printf -- '--platform\nmanylinux2014_aarch64\n'
}

make_env() {
    local root=$1 name=$2
    shift 2
    [ $# -gt 0 ] || die "env: name the requirements"
    local download
    download=$(mktemp -d)
    trap 'rm -rf "$download"' RETURN
    log "downloading the aarch64 wheels of: $*"
    mapfile -t platforms < <(platform_args)
    "$HOST_PYTHON" -m pip download --quiet --disable-pip-version-check --only-binary=:all: --implementation cp \
        --python-version "$PYTHON_VERSION" "${platforms[@]}" -d "$download" "$@" >&2 \
        || die "pip download failed: is there an aarch64 wheel of every requirement for Python $PYTHON_VERSION?"
    local key env_dir
    key=$(find "$download" -name '*.whl' -printf '%f\n' | sort | sha)
    env_dir=/opt/envs/$name-$key
    if [ -f "$root$env_dir/.doorface-complete" ]; then
        echo "$env_dir"
        return 0
    fi
    lock_cache
    if [ -f "$root$env_dir/.doorface-complete" ]; then  # made by another run while this one waited
        flock -u 9
        echo "$env_dir"
        return 0
    fi
    log "installing $(find "$download" -name '*.whl' | wc -l) wheels into $env_dir with the root's pip (emulated)"
    rm -rf "$root$env_dir" "$root/opt/wheels/$key"
    mkdir -p "$root/opt/wheels/$key"
    cp "$download"/*.whl "$root/opt/wheels/$key/"
    local wheels=()
    for w in "$root/opt/wheels/$key"/*.whl; do wheels+=("/opt/wheels/$key/$(basename "$w")"); done
    # --without-pip: ensurepip would exec another aarch64 python (no binfmt here); pip runs from Debian's wheel.
    run_in "$root" -- /usr/bin/python3 -m venv --without-pip "$env_dir"
    pip_install "$root" "$env_dir" -- --no-index --no-deps "${wheels[@]}" >&2
    rm -rf "$root/opt/wheels/$key"
    touch "$root$env_dir/.doorface-complete"
    # Venvs of the same name and another wheel set are stale.
    find "$root/opt/envs" -maxdepth 1 -name "$name-*" ! -path "$root$env_dir" -exec rm -rf {} +
    flock -u 9
    echo "$env_dir"
}

# pip_install ROOT ENV [run options] -- ARGS...: `pip install ARGS` by the root's pip (Debian's wheel) into ENV.
pip_install() {
    local root=$1 env_dir=$2 pip_wheel
    shift 2
    pip_wheel=$(cd "$root" && ls usr/share/python-wheels/pip-*.whl)
    local opts=()
    while [ $# -gt 0 ] && [ "$1" != "--" ]; do opts+=("$1"); shift; done
    shift
    run_in "$root" "${opts[@]+"${opts[@]}"}" -- "$env_dir/bin/python" "/$pip_wheel/pip" install \
        --disable-pip-version-check --quiet --no-compile "$@"
}

install_wheels() {
    local root=$1 env_dir=$2
    shift 2
    [ -f "$root$env_dir/.doorface-complete" ] || die "install: no venv $env_dir in $root (make it with: env NAME ...)"
    [ $# -gt 0 ] || die "install: name the wheels"
    local binds=() guest=() i=0 wheel
    for wheel in "$@"; do
        [ -f "$wheel" ] || die "install: $wheel is not a file"
        binds+=(--bind "$(cd "$(dirname "$wheel")" && pwd)/$(basename "$wheel"):/mnt/install/$i/$(basename "$wheel"):ro")
        guest+=("/mnt/install/$i/$(basename "$wheel")")
        i=$((i + 1))
    done
    pip_install "$root" "$env_dir" "${binds[@]}" -- --no-index --no-deps --force-reinstall "${guest[@]}"
}

[ $# -gt 0 ] || { usage >&2; exit 2; }
command=$1
shift
case "$command" in
    root) require_tools; build_root ;;
    env)
        require_tools
        [ $# -gt 0 ] || die "env: give a name"
        make_env "$(build_root)" "$@" ;;
    install)
        require_tools
        [ $# -gt 0 ] || die "install: give the venv (the path env printed)"
        install_wheels "$(build_root)" "$@" ;;
    run) require_tools; run_in "$(build_root)" "$@" ;;
    -h|--help) usage ;;
    *) usage >&2; exit 2 ;;
esac
