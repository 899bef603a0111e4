#!/usr/bin/env bash
# bench/smarthost.sh - the load benchmark: smarthost vs Postfix (+ OpenDKIM) side by side.
#
# One command, from the repository root:
#   bench/smarthost.sh                 # every row, 20000 messages x 3 runs each
#   bench/smarthost.sh -n 5000 -r 1    # a quick pass
#   bench/smarthost.sh -R full         # one row (see ROWS below)
#   bench/smarthost.sh -b PATH         # this smarthost binary instead of a fresh release build
#
# It installs what it needs (bench/setup.sh: postfix, opendkim, stunnel4, ...), builds
# smarthost in release mode, and for each row runs bench/relay-vs-postfix.sh, which
# drives both relays with Postfix's smtp-source (32 parallel senders, one connection
# per message, 4 KiB messages) into smtp-sink upstreams, alternating runs, and reports
# messages/s end to end, submission rate, peak memory and the ratio.
#
# Rows (-R NAME; default: all):
#   plain        queue mode, plaintext upstream, no DKIM, no rewrite
#   dkim-rsa     queue mode, DKIM rsa-sha256 (Postfix: OpenDKIM milter)
#   dkim-ed25519 queue mode, DKIM ed25519-sha256 (Postfix reference still signs rsa-sha256)
#   tls          queue mode, implicit-TLS upstream (stunnel in front of smtp-sink)
#   full         queue mode, From rewrite (sender) + DKIM rsa-sha256 + implicit TLS: smarthost's whole job
#   full-ed25519 the whole job signing ed25519-sha256 (Postfix reference still signs rsa-sha256, so
#                its content check fails by design)
#   passthrough  the full job in passthrough mode
#
# Everything listens on 127.0.0.1 only; every run is bounded by its message count and
# by RUN_TIMEOUT (600 s). Results are appended to bench/results/smarthost-vs-postfix.tsv.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export BENCH_RUN="${BENCH_RUN:-$HERE/run}"

N=20000 RUNS=3 WARMUP=1000 ONLY="" BIN=""
while getopts 'n:r:w:R:b:h' opt; do
  case $opt in
    n) N=$OPTARG ;; r) RUNS=$OPTARG ;; w) WARMUP=$OPTARG ;; R) ONLY=$OPTARG ;; b) BIN=$OPTARG ;;
    h) sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 0 ;;
    *) exit 2 ;;
  esac
done

# shellcheck source=prepare.sh
source "$HERE/prepare.sh"
prepare_smarthost "$BIN"

# The relay under test, configured by environment variables only (as in Docker).
# The DKIM key is copied with mode 0600: smarthost refuses keys others can read.
relay_cmd() {
  local mode=$1 algorithm=$2 sender=$3 dkim=$4
  local cmd='cd {RELAY_WORKDIR} && export SMARTHOST_LOG=warn'
  cmd+=' SMARTHOST__SERVER__LISTEN={RELAY_LISTEN} SMARTHOST__SERVER__TRUSTED_NETWORKS={TRUSTED_NETWORKS}'
  cmd+=' SMARTHOST__SERVER__MAX_CONNECTIONS_PER_CLIENT=4096 SMARTHOST__SPOOL__DIR={RELAY_WORKDIR}/spool'
  cmd+=" SMARTHOST__DELIVERY__MODE=$mode"
  cmd+=' SMARTHOST__UPSTREAM__0__URL="smtp://{UPSTREAM_HOST}:{UPSTREAM_PORT}?tls={UPSTREAM_TLS}"'
  cmd+=' SMARTHOST__UPSTREAM__0__CA_FILE={UPSTREAM_CA_FILE}'
  if [[ $sender == 1 ]]; then cmd+=' SMARTHOST__UPSTREAM__0__SENDER={REWRITE_FROM}'; fi
  if [[ $dkim == 1 ]]; then
    if [[ $algorithm == rsa-sha256 ]]; then
      cmd+=' && install -m 600 {DKIM_KEY_FILE} {RELAY_WORKDIR}/dkim.pem'
    else
      cmd+=" && rm -f {RELAY_WORKDIR}/dkim.pem && $BIN dkim keygen --domain {DKIM_DOMAIN} --selector {DKIM_SELECTOR} --algorithm ed25519-sha256 --out {RELAY_WORKDIR}/ed >/dev/null && mv {RELAY_WORKDIR}/ed/{DKIM_DOMAIN}.{DKIM_SELECTOR}.pem {RELAY_WORKDIR}/dkim.pem"
    fi
    cmd+=" && export SMARTHOST__DKIM__0__DOMAIN={DKIM_DOMAIN} SMARTHOST__DKIM__0__SELECTOR={DKIM_SELECTOR} SMARTHOST__DKIM__0__KEY_FILE={RELAY_WORKDIR}/dkim.pem SMARTHOST__DKIM__0__ALGORITHM=$algorithm"
  fi
  cmd+=" && exec $BIN serve"
  printf '%s' "$cmd"
}

# name | relay-vs-postfix options | delivery mode | dkim algorithm | sender rewrite | dkim
ROWS=(
  "plain|-u plain|queue|rsa-sha256|0|0"
  "dkim-rsa|-u plain -k|queue|rsa-sha256|0|1"
  "dkim-ed25519|-u plain -k|queue|ed25519-sha256|0|1"
  "tls|-u tls|queue|rsa-sha256|0|0"
  "full|-u tls -k -f|queue|rsa-sha256|1|1"
  "full-ed25519|-u tls -k -f|queue|ed25519-sha256|1|1"
  "passthrough|-u tls -k -f|passthrough|rsa-sha256|1|1"
)

mkdir -p "$HERE/results"
for row in "${ROWS[@]}"; do
  IFS='|' read -r name opts mode algorithm sender dkim <<<"$row"
  [[ -z $ONLY || $ONLY == "$name" ]] || continue
  echo "=== $name"
  # shellcheck disable=SC2086
  RELAY_CMD="$(relay_cmd "$mode" "$algorithm" "$sender" "$dkim")" \
    "$HERE/relay-vs-postfix.sh" $opts -n "$N" -r "$RUNS" -w "$WARMUP" -l "smarthost-$name" \
    -o "$HERE/results/smarthost-vs-postfix.tsv"
done
