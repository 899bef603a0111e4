#!/usr/bin/env bash
# bench/backlog.sh - a deep backlog stays cheap: queue N messages with the upstream down,
# then measure memory, restart, `queue list`, and the drain when the upstream returns.
#
#   bench/backlog.sh                  # 200,000 messages
#   bench/backlog.sh -n 20000         # a quick pass
#   bench/backlog.sh -b PATH          # use this smarthost binary (default: release build)
#
# Steps (everything on 127.0.0.1, every wait bounded by RUN_TIMEOUT):
#   1. steady state: S messages (-s, default 20,000) through the relay into smtp-sink,
#      the end-to-end rate (the reference for the drain);
#   2. outage: the sink stops; N messages (-n) are submitted with smtp-source; reported:
#      submission rate, relay RSS with the backlog queued;
#   3. `smarthost queue list`: wall time, lines printed;
#   4. restart: SIGTERM, start again, time until the listener accepts, RSS after;
#   5. the upstream returns: the sink starts; reported: seconds until the first message
#      arrives, the drain rate (N / time until the sink has them all) and its ratio to
#      step 1; meanwhile a probe message is submitted every second, and each probe's time
#      from its `250` to the relay's `delivered` log line is reported: for probes sent
#      while the upstream was still down (they wait in the backlog, oldest first) and
#      for probes sent once it drains (new mail gets through meanwhile).
# The relay runs with its defaults (queue mode, plaintext upstream, no DKIM) and
# SMARTHOST_LOG=info (the probes are found by queue id in its log).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export BENCH_RUN="${BENCH_RUN:-$HERE/run}"
# shellcheck source=lib.sh
source "$HERE/lib.sh"

N=200000 STEADY=20000 BIN="" CONC=32 SIZE=4096
while getopts 'n:s:b:h' opt; do
  case $opt in
    n) N=$OPTARG ;; s) STEADY=$OPTARG ;; b) BIN=$OPTARG ;;
    h) sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 0 ;;
    *) exit 2 ;;
  esac
done

# shellcheck source=prepare.sh
source "$HERE/prepare.sh"
prepare_smarthost "$BIN"
install_cleanup_trap

RELAY_PORT=2528 SINK_PORT=2638
WORK="$BENCH_RUN/backlog"
rm -rf "$WORK"; mkdir -p "$WORK"
export SMARTHOST_LOG=info
export SMARTHOST__SERVER__LISTEN="$LOOPBACK:$RELAY_PORT" SMARTHOST__SERVER__TRUSTED_NETWORKS=127.0.0.0/8
export SMARTHOST__SERVER__MAX_CONNECTIONS_PER_CLIENT=4096 SMARTHOST__SPOOL__DIR="$WORK/spool"
export SMARTHOST__UPSTREAM__0__URL="smtp://$LOOPBACK:$SINK_PORT?tls=none"

RELAY_PID=""
relay_start() {
  require_free_port "$RELAY_PORT"
  setsid "$BIN" serve >>"$WORK/relay.log" 2>&1 </dev/null &
  RELAY_PID=$!
  push_stop "pgrp:$RELAY_PID"
  wait_listen "$RELAY_PORT" 120 "$RELAY_PID"
}
rss_mib() { awk '/^VmRSS:/ { printf "%.0f", $2 / 1024 }' "/proc/$1/status"; }
hwm_mib() { awk '/^VmHWM:/ { printf "%.0f", $2 / 1024 }' "/proc/$1/status"; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", (b - a) / 1e9 }'; }

submit() {
  timeout "$RUN_TIMEOUT" smtp-source -s "$CONC" -m "$1" -l "$SIZE" -f "$BENCH_FROM" -t "$BENCH_TO" \
    -M client.bench.example.test "$LOOPBACK:$RELAY_PORT" >"$WORK/smtp-source.log" 2>&1
}

log "relay: $BIN (log $WORK/relay.log)"
sink_start "$SINK_PORT"
relay_start

# 1. steady state
t0=$(now_ns); submit "$STEADY"; wait_sink "$SINK_PORT" "$STEADY"; t1=$(now_ns)
steady_rate=$(awk -v n="$STEADY" -v s="$(secs "$t0" "$t1")" 'BEGIN { printf "%.0f", n / s }')
log "steady state: $STEADY messages end to end in $(secs "$t0" "$t1")s = $steady_rate msg/s"

# 2. outage
stop_pid "$SINK_PID"
rm -f "$BENCH_RUN/sink-$SINK_PORT.out"
rss0=$(rss_mib "$RELAY_PID")
t0=$(now_ns); submit "$N"; t1=$(now_ns)
sleep 5
log "outage: $N messages submitted in $(secs "$t0" "$t1")s ($(awk -v n="$N" -v s="$(secs "$t0" "$t1")" 'BEGIN { printf "%.0f", n / s }') msg/s); relay RSS $rss0 MiB before, $(rss_mib "$RELAY_PID") MiB with the backlog (peak $(hwm_mib "$RELAY_PID") MiB)"

# 3. queue list
t0=$(now_ns)
lines=$(timeout 120 "$BIN" queue list | wc -l)
t1=$(now_ns)
log "queue list: $lines lines in $(secs "$t0" "$t1")s"

# 4. restart
stop_pgroup "$RELAY_PID"
t0=$(now_ns); relay_start; t1=$(now_ns)
sleep 2
log "restart: accepting mail $(secs "$t0" "$t1")s after start; RSS $(rss_mib "$RELAY_PID") MiB (peak $(hwm_mib "$RELAY_PID") MiB)"

# 5. the upstream returns; probes go in every second while the backlog drains
probes="$WORK/probes.tsv"
: >"$probes"
python3 - "$RELAY_PORT" "$probes" "$WORK/probes.stop" <<'EOF' &
import os, smtplib, sys, time
port, out, stop = int(sys.argv[1]), sys.argv[2], sys.argv[3]
deadline = time.time() + 600
while not os.path.exists(stop) and time.time() < deadline:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as s:
        s.ehlo("probe.bench.example.test")
        s.mail("probe@example.com")
        s.rcpt("probe@example.net")
        code, reply = s.data(b"Subject: probe\r\nFrom: <probe@example.com>\r\n\r\nprobe\r\n")
    with open(out, "a") as f:
        f.write(f"{reply.decode().split()[-1]}\t{time.time():.6f}\n")
    time.sleep(1)
EOF
PROBER=$!
push_stop "pid:$PROBER"
t0=$(now_ns)
sink_start "$SINK_PORT"
while (($(sink_count "$SINK_PORT") < 1)); do
  (($(now_ns) - t0 > RUN_TIMEOUT * 1000000000)) && die "nothing delivered ${RUN_TIMEOUT}s after the upstream returned"
  sleep 0.05
done
t_first=$(now_ns)
wait_sink "$SINK_PORT" "$N"
t1=$(now_ns)
touch "$WORK/probes.stop"
wait "$PROBER" || true
drain_s=$(secs "$t0" "$t1")
drain_rate=$(awk -v n="$N" -v s="$drain_s" 'BEGIN { printf "%.0f", n / s }')
log "drain: first delivery $(secs "$t0" "$t_first")s after the upstream returned; $N messages in ${drain_s}s = $drain_rate msg/s ($(awk -v d="$drain_rate" -v s="$steady_rate" 'BEGIN { printf "%.0f", 100 * d / s }') % of the steady state)"

# probe latency: from the 250 to the `delivered` log line
sleep 2
python3 - "$probes" "$WORK/relay.log" "$t_first" <<'EOF'
import datetime, re, sys
probes = [line.split("\t") for line in open(sys.argv[1]) if line.strip()]
first = int(sys.argv[3]) / 1e9  # the first delivery after the upstream returned
delivered = {}
for line in open(sys.argv[2], errors="replace"):
    if "delivered" in line:
        m = re.search(r"queue_id=([0-9A-Fa-f]{16})", line)
        if m and m.group(1) not in delivered:
            ts = line.split()[0]
            delivered[m.group(1)] = datetime.datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()
missing = sum(1 for q, _ in probes if q not in delivered)
# Probes sent while the upstream was still down wait in the backlog like the rest;
# the ones sent once it drains show whether new mail gets through.
for label, group in (("while the upstream was down", [p for p in probes if float(p[1]) < first]),
                     ("during the drain", [p for p in probes if float(p[1]) >= first])):
    lat = sorted(delivered[q] - float(t) for q, t in group if q in delivered)
    if lat:
        print(f"probes sent {label}: {len(group)}, delivered {len(lat)}, latency median {lat[len(lat) // 2]:.2f}s, max {lat[-1]:.2f}s")
    else:
        print(f"probes sent {label}: {len(group)}, none delivered")
if missing:
    print(f"probes not delivered: {missing}")
EOF
