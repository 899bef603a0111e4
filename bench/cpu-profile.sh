#!/usr/bin/env bash
# bench/cpu-profile.sh - where the relay's CPU per message goes, without Postfix beside it.
#
#   bench/cpu-profile.sh                         # the full job (rsa-2048), 6,000 messages
#   bench/cpu-profile.sh -a ed25519 -n 10000     # the full job signing ed25519
#   bench/cpu-profile.sh -p                      # and a perf profile (bench/run/profile/perf.data)
#   bench/cpu-profile.sh -b PATH                 # this smarthost binary (default: release build)
#
# The same job as the `full` row of bench/smarthost.sh (smtp-source, 32 parallel senders,
# one connection per 4 KiB message -> smarthost with From rewrite and DKIM -> stunnel
# (implicit TLS) -> smtp-sink), the relay with its defaults, configured by environment
# variables only. After a warm-up of 500 messages it reports for N messages: submission and
# end-to-end rate, the relay's CPU per message (user and system), minor page faults and
# context switches per message for each of its threads (tokio workers, spool committer).
# With -p, `perf record` samples the relay meanwhile (call graphs by DWARF unwinding);
# read it with `perf report -i bench/run/profile/perf.data --no-children`.
#
# Compare two builds by running this alternately a few times each: CPU per message on a
# shared virtual machine varies by +-15 % from run to run.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export BENCH_RUN="${BENCH_RUN:-$HERE/run}"
# shellcheck source=lib.sh
source "$HERE/lib.sh"

N=6000 ALGORITHM=rsa-sha256 BIN="" PERF=0 WARMUP=500
while getopts 'n:a:b:ph' opt; do
  case $opt in
    n) N=$OPTARG ;; b) BIN=$OPTARG ;; p) PERF=1 ;;
    a) case $OPTARG in rsa | rsa-sha256) ALGORITHM=rsa-sha256 ;; ed25519 | ed25519-sha256) ALGORITHM=ed25519-sha256 ;;
         *) die "-a takes rsa or ed25519" ;; esac ;;
    h) sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 0 ;;
    *) exit 2 ;;
  esac
done

# shellcheck source=prepare.sh
source "$HERE/prepare.sh"
prepare_smarthost "$BIN"
if ((PERF)) && ! command -v perf >/dev/null; then
  die "perf is not installed (apt-get install linux-perf)"
fi
install_cleanup_trap

RELAY_PORT=2529 TLS_PORT=2469 SINK_PORT=2639
WORK="$BENCH_RUN/profile"
rm -rf "$WORK"; mkdir -p "$WORK/spool"

sink_start "$SINK_PORT"
stunnel_start "$TLS_PORT" "$SINK_PORT"

if [[ $ALGORITHM == rsa-sha256 ]]; then
  install -m 600 "$KEYS/dkim-bench.private" "$WORK/dkim.pem"
else
  "$BIN" dkim keygen --domain example.com --selector bench --algorithm ed25519-sha256 --out "$WORK/ed" >/dev/null
  mv "$WORK/ed/example.com.bench.pem" "$WORK/dkim.pem"
fi
export SMARTHOST_LOG=warn
export SMARTHOST__SERVER__LISTEN="$LOOPBACK:$RELAY_PORT" SMARTHOST__SERVER__TRUSTED_NETWORKS=127.0.0.0/8
export SMARTHOST__SERVER__MAX_CONNECTIONS_PER_CLIENT=4096 SMARTHOST__SPOOL__DIR="$WORK/spool"
export SMARTHOST__UPSTREAM__0__URL="smtp://$LOOPBACK:$TLS_PORT?tls=implicit"
export SMARTHOST__UPSTREAM__0__CA_FILE="$KEYS/upstream.crt" SMARTHOST__UPSTREAM__0__SENDER=noreply@example.com
export SMARTHOST__DKIM__0__DOMAIN=example.com SMARTHOST__DKIM__0__SELECTOR=bench
export SMARTHOST__DKIM__0__KEY_FILE="$WORK/dkim.pem" SMARTHOST__DKIM__0__ALGORITHM=$ALGORITHM
require_free_port "$RELAY_PORT"
setsid "$BIN" serve >>"$WORK/relay.log" 2>&1 </dev/null &
RELAY=$!
push_stop "pgrp:$RELAY"
wait_listen "$RELAY_PORT" 60 "$RELAY"

send() {
  timeout "$RUN_TIMEOUT" smtp-source -s 32 -m "$1" -l 4096 -f "$BENCH_FROM" -t "$BENCH_TO" \
    -M client.bench.example.test "$LOOPBACK:$RELAY_PORT" >"$WORK/smtp-source.log" 2>&1
}
# utime stime minflt of the relay (clock ticks, faults)
usage() { awk '{ print $14, $15, $10 }' "/proc/$RELAY/stat"; }
# "thread-name switches" summed per thread name
switches() {
  local t
  for t in /proc/"$RELAY"/task/*; do
    printf '%s %s\n' "$(tr ' ' _ <"$t/comm")" "$(awk '/ctxt_switches/ { s += $2 } END { print s }' "$t/status")"
  done | awk '{ s[$1] += $2 } END { for (k in s) print k, s[k] }' | sort
}

log "warm-up: $WARMUP messages"
send "$WARMUP"
wait_sink "$SINK_PORT" "$WARMUP"
switches >"$WORK/switches.0"
read -r u0 s0 f0 < <(usage)
if ((PERF)); then
  perf record -F 499 --call-graph dwarf,16384 -p "$RELAY" -o "$WORK/perf.data" 2>"$WORK/perf.log" &
  PERF_PID=$!
  push_stop "pid:$PERF_PID"
fi
log "measuring: $N messages ($ALGORITHM)"
t0=$(now_ns)
send "$N"
t1=$(now_ns)
wait_sink "$SINK_PORT" $((WARMUP + N))
t2=$(now_ns)
read -r u1 s1 f1 < <(usage)
switches >"$WORK/switches.1"
if ((PERF)); then
  kill -INT "$PERF_PID"
  wait "$PERF_PID" || true
fi

awk -v n="$N" -v t0="$t0" -v t1="$t1" -v t2="$t2" -v tck="$(getconf CLK_TCK)" \
  -v u="$((u1 - u0))" -v s="$((s1 - s0))" -v f="$((f1 - f0))" -v alg="$ALGORITHM" 'BEGIN {
  printf "full job (%s), %d messages\n", alg, n
  printf "  submit %.0f msg/s, end to end %.0f msg/s\n", n / ((t1 - t0) / 1e9), n / ((t2 - t0) / 1e9)
  printf "  relay CPU per message: %.0f us (user %.0f, system %.0f), minor faults %.2f\n",
    (u + s) / tck * 1e6 / n, u / tck * 1e6 / n, s / tck * 1e6 / n, f / n
}'
join -a1 -a2 -e0 -o 0,1.2,2.2 "$WORK/switches.0" "$WORK/switches.1" |
  awk -v n="$N" '$3 > $2 { printf "  context switches per message, %s: %.2f\n", $1, ($3 - $2) / n }'
((PERF)) && log "profile: perf report -i $WORK/perf.data --no-children"
exit 0
