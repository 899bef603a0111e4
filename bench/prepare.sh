# shellcheck shell=bash
# prepare.sh - sourced by the smarthost benchmark scripts (after lib.sh): install the
# benchmark's tools (bench/setup.sh), choose the smarthost binary to measure, wait for
# the sink.

# wait_sink PORT TARGET: until the sink on PORT has counted TARGET messages (bounded by
# RUN_TIMEOUT; needs lib.sh).
wait_sink() {
  local port=$1 target=$2 deadline=$(($(now_ns) + RUN_TIMEOUT * 1000000000))
  while (($(sink_count "$port") < target)); do
    (($(now_ns) > deadline)) && die "the sink has $(sink_count "$port") of $target messages after ${RUN_TIMEOUT}s"
    sleep 0.02
  done
}

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
