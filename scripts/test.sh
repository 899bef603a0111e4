#!/usr/bin/env bash
# Run the whole test suite: install the few extras the interop tests need, then `cargo test`.
#
#   ./scripts/test.sh                 # everything
#   ./scripts/test.sh --test cli      # arguments go to `cargo test`
#
# Extras are Python modules used by interop tests (e.g. an independent DKIM verifier, the
# Kubernetes schema validator for deploy/kubernetes/),
# and programs some tests drive (headless Chromium for the status page, redis-server for
# the replicas' shared store).
# A module python3 can already import is used as it is; a missing one is installed with
# pip into $CARGO_TARGET_DIR/test-python (default target/test-python), which is put on
# PYTHONPATH for the tests. Nothing is installed system-wide, so this also works where
# pip refuses to touch the system Python (Debian's "externally-managed-environment").
# Any failure stops the script with a non-zero exit.
set -euo pipefail

cd "$(dirname "$0")/.."

# python module to import -> pip requirement that provides it
EXTRAS=(
    "dkim dkimpy"
    "nacl pynacl"
    "kubernetes_validate kubernetes-validate"
)

die() {
    echo "scripts/test.sh: error: $*" >&2
    exit 1
}

command -v cargo >/dev/null || die "cargo not found; install Rust (https://rustup.rs)"
command -v python3 >/dev/null || die "python3 not found; install it (Debian: apt-get install python3 python3-pip)"

target_dir="${CARGO_TARGET_DIR:-target}"
mkdir -p "$target_dir"
pydeps="$(cd "$target_dir" && pwd)/test-python"
export PYTHONPATH="$pydeps${PYTHONPATH:+:$PYTHONPATH}"

for extra in "${EXTRAS[@]}"; do
    read -r module requirement <<<"$extra"
    if python3 -c "import $module" 2>/dev/null; then
        echo "scripts/test.sh: python module '$module' is available"
        continue
    fi
    echo "scripts/test.sh: python module '$module' is missing; installing $requirement into $pydeps"
    python3 -m pip --version >/dev/null 2>&1 ||
        die "python3 has no pip; install it (Debian: apt-get install python3-pip) and rerun"
    python3 -m pip install --no-input --disable-pip-version-check --upgrade \
        --target "$pydeps" "$requirement" ||
        die "pip install $requirement failed (see above)"
    python3 -c "import $module" ||
        die "installed $requirement but python3 still cannot import '$module'"
done

# Programs some tests drive (command -> Debian package): headless Chromium renders the
# status page; redis-server is the store several replicas share (each test starts its
# own on 127.0.0.1 and a free port). A missing one is installed with apt-get (as root,
# or with sudo -n).
SYSTEM_EXTRAS=(
    "chromium chromium"
    "redis-server redis-server"
)

apt_get() {
    if [ "$(id -u)" -eq 0 ]; then
        DEBIAN_FRONTEND=noninteractive timeout 900 apt-get "$@"
    elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
        sudo -n env DEBIAN_FRONTEND=noninteractive timeout 900 apt-get "$@"
    else
        return 1
    fi
}

for extra in "${SYSTEM_EXTRAS[@]}"; do
    read -r command package <<<"$extra"
    if command -v "$command" >/dev/null; then
        echo "scripts/test.sh: '$command' is available"
        continue
    fi
    echo "scripts/test.sh: '$command' is missing; installing the Debian package $package"
    apt_get install -y --no-install-recommends "$package" ||
        { apt_get update && apt_get install -y --no-install-recommends "$package"; } ||
        die "cannot install $package (needs root or passwordless sudo, and apt); install it and rerun"
    command -v "$command" >/dev/null || die "installed $package but '$command' is still not on PATH"
done

echo "scripts/test.sh: cargo test $*"
exec cargo test "$@"
