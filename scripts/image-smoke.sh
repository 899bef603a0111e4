#!/usr/bin/env bash
# Build the container image without Docker or a registry, and prove it relays a message
# with environment-only configuration.
#
#   sudo ./scripts/image-smoke.sh
#
# For machines with buildah but no Docker engine and no access to an image registry
# (the Debian mirror this machine's apt uses, or $MIRROR, must be reachable). Steps:
#   1. apt-get installs buildah, podman and debootstrap if missing.
#   2. Builds a Debian bookworm base with `debootstrap --variant=minbase` (cached in
#      $CACHE, default /var/tmp/smarthost-image-cache, so reruns are fast), imports it
#      as localhost/bookworm-base and tags it docker.io/library/debian:bookworm-slim, the
#      runtime base named in the Dockerfile.
#   3. Builds the release binary on the host (`cargo build --release --locked`).
#      The Dockerfile's build stage (FROM rust:1-bookworm) is NOT used: there is no rust
#      image here. Instead the script derives a Dockerfile from the project's Dockerfile:
#      the build stage is replaced by one that copies the prebuilt binary to /out/smarthost,
#      and the runtime stage (from "# ---- runtime ----" on) is used verbatim. The host
#      must therefore be bookworm or have a glibc no newer than bookworm's.
#   4. `buildah bud --isolation chroot --format docker` builds localhost/smarthost:smoke
#      (docker format: the OCI format would drop HEALTHCHECK).
#   5. `buildah from` + `buildah run` (podman run fails on rlimits on some machines) run
#      `smarthost serve` as the image's user with SMARTHOST__* variables only, submit one
#      message with `smarthost send`, and check it arrived in the Maildir outbox.
#      A second run binds port 25 as the non-root user and runs the image's HEALTHCHECK.
#   6. Prints the image size. (The debootstrap base is somewhat larger than the real
#      debian:bookworm-slim, so the size is an upper bound for a registry build.)
# Set REBUILD_BASE=1 to import the base image again.
# Any failure stops the script with a non-zero exit.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
CACHE=${CACHE:-/var/tmp/smarthost-image-cache}
IMAGE=${IMAGE:-localhost/smarthost:smoke}

# The Debian mirror for debootstrap: $MIRROR, else the one this machine's apt already
# uses for its main archive (deb822 .sources files or sources.list), so the script names
# no package host of its own.
apt_mirror() {
    local f
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -r "$f" ] || continue
        # The first URIs of a stanza whose Suites are not -security ones.
        awk 'BEGIN { RS = ""; FS = "\n" }
             {
                 uris = ""; suites = ""
                 for (i = 1; i <= NF; i++) {
                     if ($i ~ /^URIs:/)   { uris = $i;   sub(/^URIs:[ \t]*/, "", uris) }
                     if ($i ~ /^Suites:/) { suites = $i; sub(/^Suites:[ \t]*/, "", suites) }
                 }
                 if (uris != "" && suites !~ /security/) { split(uris, u, " "); print u[1]; exit }
             }' "$f"
    done | head -n 1
    if [ -r /etc/apt/sources.list ]; then
        awk '$1 == "deb" && $0 !~ /security/ { for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) { print $i; exit } }' /etc/apt/sources.list
    fi
}
MIRROR=${MIRROR:-$(apt_mirror | head -n 1)}
[ -n "$MIRROR" ] || die_early=1

say() { printf '\n== %s\n' "$*"; }
die() { echo "scripts/image-smoke.sh: error: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (buildah --isolation chroot and debootstrap need it)"
[ -z "${die_early:-}" ] || die "no Debian mirror found in /etc/apt (sources.list or sources.list.d/*.sources); set MIRROR to the URL of a Debian archive"

say "1. tools"
missing=()
for t in buildah podman debootstrap; do command -v "$t" >/dev/null || missing+=("$t"); done
if [ ${#missing[@]} -gt 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi
buildah --version

say "2. base image (debootstrap minbase bookworm)"
mkdir -p "$CACHE"
if [ ! -d "$CACHE/rootfs" ]; then
    rm -rf "$CACHE/rootfs.tmp"
    debootstrap --variant=minbase bookworm "$CACHE/rootfs.tmp" "$MIRROR"
    mv "$CACHE/rootfs.tmp" "$CACHE/rootfs"
fi
if [ "${REBUILD_BASE:-}" = 1 ] || ! buildah inspect --type image localhost/bookworm-base >/dev/null 2>&1; then
    # Leave out what debian:bookworm-slim leaves out too: package caches, docs, man pages.
    tar -C "$CACHE/rootfs" -c \
        --exclude='./var/cache/apt/archives/*.deb' --exclude='./var/lib/apt/lists/*' \
        --exclude='./usr/share/doc/*' --exclude='./usr/share/man/*' --exclude='./usr/share/info/*' . \
        | podman import - localhost/bookworm-base
fi
buildah tag localhost/bookworm-base docker.io/library/debian:bookworm-slim

say "3. release binary (host)"
cargo build --release --locked --bin smarthost
CTX=$(mktemp -d)
cleanup() {
    rm -rf "$CTX"
    for c in "${CONTAINERS[@]}"; do buildah rm "$c" >/dev/null 2>&1 || true; done
}
CONTAINERS=()
trap cleanup EXIT
install -m 0755 "${CARGO_TARGET_DIR:-target}/release/smarthost" "$CTX/smarthost"
strip "$CTX/smarthost" 2>/dev/null || true
grep -q '^# ---- runtime ----' Dockerfile || die "Dockerfile has no '# ---- runtime ----' marker"
{
    echo "# Generated by scripts/image-smoke.sh from Dockerfile: prebuilt binary, same runtime stage."
    echo "FROM docker.io/library/debian:bookworm-slim AS build"
    echo "COPY smarthost /out/smarthost"
    echo
    sed -n '/^# ---- runtime ----/,$p' Dockerfile
} >"$CTX/Dockerfile"

say "4. buildah bud --isolation chroot"
buildah bud --isolation chroot --format docker --layers=false -f "$CTX/Dockerfile" -t "$IMAGE" "$CTX"

say "5a. relay one message (environment-only configuration)"
ctr=$(buildah from "$IMAGE")
CONTAINERS+=("$ctr")
# shellcheck disable=SC2016
buildah run --isolation chroot \
    --env SMARTHOST__SERVER__LISTEN=127.0.0.1:2525 \
    --env SMARTHOST__SERVER__TRUSTED_NETWORKS=127.0.0.0/8 \
    --env SMARTHOST__SERVER__HOSTNAME=smoke.example.com \
    --env SMARTHOST__UPSTREAM__0__URL=maildir:/var/lib/smarthost/outbox \
    --env SMARTHOST__DKIM__0__DOMAIN=example.com \
    --env SMARTHOST__DKIM__0__KEY_FILE=data/dkim/example.com.smarthost.pem \
    --env SMARTHOST__DKIM__0__GENERATE=true \
    "$ctr" -- sh -c '
        set -e
        echo "running as: $(id)"; echo "cwd: $(pwd)"
        env | grep "^SMARTHOST" | sort
        smarthost serve > /tmp/serve.log 2>&1 &
        pid=$!
        i=0
        until bash -c "exec 3<>/dev/tcp/127.0.0.1/2525" 2>/dev/null; do
            i=$((i+1)); [ $i -lt 100 ] || { cat /tmp/serve.log; exit 1; }
            kill -0 $pid || { cat /tmp/serve.log; exit 1; }
            sleep 0.1
        done
        smarthost send --server 127.0.0.1:2525 --from app@example.com \
            --to someone@example.org --subject "image smoke test"
        i=0
        until ls /var/lib/smarthost/outbox/new/* >/dev/null 2>&1; do
            i=$((i+1)); [ $i -lt 100 ] || { echo "no message in the outbox"; cat /tmp/serve.log; exit 1; }
            sleep 0.1
        done
        kill -TERM $pid; wait $pid || true
        echo "--- serve log"; cat /tmp/serve.log
        f=$(ls /var/lib/smarthost/outbox/new/* | head -n1)
        echo "--- delivered: $f"; cat "$f"
        grep -q "^Subject: image smoke test" "$f"
        grep -qi "^DKIM-Signature:" "$f"
        echo "RELAY OK"
    '

say "5b. bind port 25 as non-root, run the image HEALTHCHECK"
hc=$(buildah inspect --type image --format '{{.Docker.Config.Healthcheck.Test}}' "$IMAGE")
echo "HEALTHCHECK: $hc"
ctr2=$(buildah from "$IMAGE")
CONTAINERS+=("$ctr2")
buildah run --isolation chroot \
    --env SMARTHOST__SERVER__LISTEN=127.0.0.1:25 \
    --env SMARTHOST__UPSTREAM__0__URL=maildir:/var/lib/smarthost/outbox \
    "$ctr2" -- sh -c '
        set -e
        echo "running as: $(id)"
        smarthost serve > /tmp/serve.log 2>&1 &
        pid=$!
        sleep 1.5
        kill -0 $pid || { cat /tmp/serve.log; exit 1; }
        bash -c "exec 3<>/dev/tcp/127.0.0.1/25 && head -c3 <&3 | grep -qx -e 220 -e 554" \
            || { cat /tmp/serve.log; exit 1; }
        kill -TERM $pid; wait $pid || true
        echo "PORT 25 + HEALTHCHECK OK"
    '

say "6. image"
buildah images "$IMAGE"
echo "OK: $IMAGE builds and relays a message with environment-only configuration"
