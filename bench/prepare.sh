# shellcheck shell=bash
# prepare.sh - sourced by the smarthost benchmark scripts: install the benchmark's tools
# (bench/setup.sh) and choose the smarthost binary to measure.

# prepare_smarthost [PATH]: run bench/setup.sh; set BIN to PATH, or to a fresh release
# build of this checkout when PATH is empty. BIN is made absolute.
prepare_smarthost() {
  local here root
  here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
  root="$(cd "$here/.." && pwd)"
  "$here/setup.sh"
  BIN=${1:-}
  if [[ -z $BIN ]]; then
    (cd "$root" && cargo build --release --locked)
    BIN="$root/target/release/smarthost"
  fi
  BIN="$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")"
}
